"""The one place that configures logging and what the driver's screen shows. Library modules only call
logging.getLogger(__name__).

Every process calls `setup_logging`: rank 0 logs at the run's level, other ranks only warnings, so a W-worker job
is not W times louder. The level and the progress mode are a `Display`, set once on the driver (the CLI) and
handed to every Ray Train worker by runtime/raycluster.py's run_workers and to every Tune trial by the sweep.

On the driver the CLI installs a `Screen` over sys.stdout and sys.stderr. Ray forwards every worker's and actor's
output to the driver line by line, prefixed `(ActorName pid=N)` in colour, and Ray Train and Tune print some
internal messages of their own; the Screen reads those lines one by one:
- Ray's internal noise (NoiseFilter: the PlacementGroupCleaner actor's warnings and tracebacks, the
  "constructor arguments in the object store" core_worker line, the controller's "Failed to send resource request"
  traceback on a busy host, Tune's experiment table, its results-folder and TensorBoard hints) is kept off the
  screen unless `verbose`;
- every line, noise included, goes to the run folder's log (RunLayout.log) once the command knows its run folder;
- rank 0's progress records (PROGRESS_MARK, see core/progress.py) become one live status line when the screen
  is a terminal;
- ANSI colour codes are removed from lines written to a file or a pipe.
Lines Ray prints from C++ straight to file descriptor 2 of the driver would pass by the Screen; none were seen:
the C++ lines (core_worker.cc) come from actors, forwarded through Python like the rest.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# rank 0's progress records (core/progress.py) start with this, after the worker's log prefix
PROGRESS_MARK = "LNR_PROGRESS "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# the prefix Ray puts before a forwarded line: "(RayTrainWorker pid=4953)", "(pid=12, ip=10.0.0.2)",
# "(PlacementGroupCleaner pid=4921)"
_RAY_SOURCE = re.compile(r"^\((?P<source>[^()]*?)\s*pid=[^()]*\)\s?")
# every line of these Ray actors is Ray-internal: Ray Train's placement-group cleaner, without the dashboard
# that ray[default] would bring (not installed, see README "Quiet by default"), warns "Failed to query Ray Train
# Controller actor state" every few seconds, or prints a traceback when the host runs several Ray clusters
NOISY_SOURCES = ("PlacementGroupCleaner",)
NOISE = (
    # Ray Train's controller on its PreemptionWatcher actor (ray-project/ray#53727): advice to Ray's developers
    re.compile(r"core_worker\.cc:\d+: Actor with class name: '\w+' and ID: '\w+' has constructor arguments"),
    # Ray Train's controller on a busy host, with a traceback: "safe to ignore" if transient (if not, the job
    # fails and says so)
    re.compile(r"^Failed to send resource request for train-"),
    # Tune's start of experiment, printed even at verbose=0: the search table (box drawing) and two hints that
    # point into Ray's own folders; the sweep writes sweep.md / sweep.csv itself
    re.compile(r"^[╭├│╰]"),
    re.compile(r"^View detailed results here: "),
    re.compile(r"^To visualize your results with TensorBoard, run: "),
)
# the traceback a noisy line of one source goes on with: its header and indented lines, then the exception line
_TRACEBACK = re.compile(r"^(Traceback \(most recent call last\):|\s)")
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")


class NoiseFilter:
    """Tells Ray's internal noise from the lines worth a screen, one line at a time (colour codes and Ray's
    `(Source pid=N)` prefix are looked through): every line of a NOISY_SOURCES actor, a line matching NOISE, and
    the traceback that such a line of one source goes on with. Our own lines, forwarded from workers or not,
    never are noise."""

    def __init__(self) -> None:
        self._in_traceback: set[str] = set()  # Ray prefixes (source and pid) inside a noisy line's traceback

    def __call__(self, line: str) -> bool:
        plain = _ANSI.sub("", line)
        match = _RAY_SOURCE.match(plain)
        prefix = match.group(0).strip() if match else ""
        if match and match.group("source").strip() in NOISY_SOURCES:
            return True
        message = plain[match.end() :] if match else plain
        if prefix in self._in_traceback:
            if _TRACEBACK.match(message):
                return True
            self._in_traceback.discard(prefix)
            if _EXCEPTION.match(message):
                return True
        if any(pattern.search(message) for pattern in NOISE):
            if prefix:
                self._in_traceback.add(prefix)
            return True
        return False


def is_noise(line: str) -> bool:
    """Whether one line, on its own, is Ray's internal noise (NoiseFilter also follows tracebacks)."""
    return NoiseFilter()(line)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class Display:
    """How a process shows its work: `level` (--log-level) and `bar`: progress as a live bar on the driver's
    terminal (rank 0 sends progress records) or, when False, a log line every logging.log_every_s."""

    level: str = "INFO"
    bar: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_display = Display()


def display() -> Display:
    """This process's Display (the driver's, or the one its driver handed over)."""
    return _display


def set_display(value: Display | dict[str, Any]) -> None:
    """Adopt the driver's Display (or its dict, as it travels in a Ray Train loop config or a Tune param space);
    `setup_logging()` then logs at its level."""
    global _display
    _display = value if isinstance(value, Display) else Display(**value)


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is when a record comes (the Screen replaces it and puts it back)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.name.startswith("lnr_dist") or record.levelno >= logging.WARNING


def setup_logging(level: int | str | None = None, rank: int = 0) -> None:
    """Log to stderr at `level` (default: this process's Display level); ranks other than 0 only log warnings and
    errors. Other libraries' INFO lines (Ray logs one per reported result) are kept out."""
    level = _display.level if level is None else level
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    effective = level if rank == 0 else logging.WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] {_FORMAT}", "%H:%M:%S"))
    handler.addFilter(_ours_or_warning)
    root.addHandler(handler)
    root.setLevel(effective)


def format_progress(desc: str, done: int, total: int, elapsed: float) -> str:
    """`desc: done/total images (p%), r images/s, ETA m:ss` (rate and ETA from the mean rate so far)."""
    from tqdm import tqdm

    rate = done / elapsed if elapsed > 0 else 0.0
    eta = tqdm.format_interval((total - done) / rate) if rate > 0 and total >= done else "?"
    share = f" ({100 * done / total:.0f}%)" if total > 0 else ""
    return f"{desc}: {done:,}/{total:,} images{share}, {rate:,.0f} images/s, ETA {eta}"


class _Lines(io.TextIOBase):
    """sys.stdout or sys.stderr under a Screen: text is cut into lines (per thread: Ray prints forwarded lines from
    a thread of its own) and each complete line handed to the Screen."""

    def __init__(self, screen: Screen, inner: TextIO, err: bool) -> None:
        self._screen, self.inner, self.err = screen, inner, err
        self._pending: dict[int, str] = {}

    def write(self, text: str) -> int:
        self._screen.write(self, text)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return _isatty(self.inner)

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "closed", False))

    def fileno(self) -> int:
        return self.inner.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "errors", None)


class Screen:
    """The driver's stdout and stderr, read line by line (see the module docstring).

    Args:
        out, err: the real streams.
        verbose: show Ray's internal noise too.
        terminal: err is a terminal: progress records become a live status line there (the CLI decides).
        clock: seconds (tests).
    """

    _EARLY_LINES = 10_000  # lines kept for the run log before the command knows its run folder

    def __init__(
        self, out: TextIO, err: TextIO, *, verbose: bool = False, terminal: bool = False, clock=time.monotonic
    ) -> None:
        self.out = _Lines(self, out, err=False)
        self.err = _Lines(self, err, err=True)
        self.verbose, self.terminal, self._clock = verbose, terminal, clock
        self._colour = {False: _isatty(out), True: _isatty(err)}
        self._lock = threading.RLock()
        self._log: TextIO | None = None
        self._log_path: Path | None = None  # the run log, until its run folder exists
        self._header = ""
        self._early: list[str] = []
        self._noise = NoiseFilter()
        self._held: list[tuple[_Lines, str]] = []  # blank lines, shown only between two shown lines
        self._after_noise = False
        self._status = ""  # the live progress line on err (terminal only)
        self._bars: dict[str, dict[str, Any]] = {}  # live progress records by id, most recent last
        self._logged: dict[str, float] = {}  # when each record's progress last went to the run log

    # the streams' side
    def write(self, stream: _Lines, text: str) -> None:
        with self._lock:
            key = threading.get_ident()
            pending = stream._pending.pop(key, "") + text
            if not pending.strip("\r") or (
                "\r" in pending and "\n" not in pending and pending.startswith("\r")
            ):
                # a progress bar drawn on the driver in place (tqdm: "\r..."): straight through
                stream.inner.write(pending)
                stream.inner.flush()
                return
            *lines, rest = pending.split("\n")
            if rest:
                stream._pending[key] = rest
            for line in lines:
                self._line(stream, line)

    def _line(self, stream: _Lines, line: str) -> None:
        plain = strip_ansi(line)
        at = plain.find(PROGRESS_MARK)
        if at >= 0 and self._progress(plain[at + len(PROGRESS_MARK) :]):
            return
        self._to_log(plain)
        if not plain.strip():
            if not self._after_noise:
                self._held.append((stream, line))
            return
        if self._noise(line) and not self.verbose:
            self._held.clear()
            self._after_noise = True
            return
        self._after_noise = False
        for held_stream, held in self._held:
            self._show(held_stream, held)
        self._held.clear()
        self._show(stream, line)

    def _show(self, stream: _Lines, line: str) -> None:
        text = line if self._colour[stream.err] else strip_ansi(line)
        if self._status:
            self.err.inner.write("\r\x1b[K")
            self.err.inner.flush()
        stream.inner.write(text + "\n")
        stream.inner.flush()
        if self._status:
            self.err.inner.write(self._status)
            self.err.inner.flush()

    # progress records of rank 0
    def _progress(self, payload: str) -> bool:
        """Apply one record; False when it is not one (the line is then shown as it is)."""
        try:
            # raw_decode: Ray's log deduplication may append " [repeated 3x across cluster]" to the line
            record, _ = json.JSONDecoder().raw_decode(payload)
            key, desc, done, total = record["id"], record["desc"], record["done"], record["total"]
            elapsed, every, closed = float(record["elapsed"]), float(record["every"]), bool(record["closed"])
        except (ValueError, KeyError, TypeError):
            return False
        now = self._clock()
        if closed:
            self._bars.pop(key, None)
            self._logged.pop(key, None)
        else:
            self._bars.pop(key, None)
            self._bars[key] = record
            if now - self._logged.setdefault(key, now) >= every:
                self._logged[key] = now
                self._to_log(format_progress(desc, done, total, elapsed))
        if self.terminal:
            self._draw()
        return True

    def _draw(self) -> None:
        from shutil import get_terminal_size

        from tqdm import tqdm

        status = ""
        if self._bars:
            record = next(reversed(self._bars.values()))
            done, total, elapsed = record["done"], record["total"], float(record["elapsed"])
            status = tqdm.format_meter(
                done, total or None, elapsed, prefix=record["desc"], unit_scale=total >= 10_000,
                ncols=max(40, get_terminal_size().columns - 1), postfix=f"{done / max(elapsed, 1e-9):,.0f} images/s",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} images [{elapsed}<{remaining}{postfix}]",
            )  # fmt: skip
        if status != self._status:
            self.err.inner.write("\r\x1b[K" + status)
            self.err.inner.flush()
            self._status = status

    # the run log
    def attach(self, path: Path, header: str) -> None:
        """Append every line to `path` (those seen so far first, after a header line), from when the folder
        above `path`'s folder (the run folder) exists: a command refused before any work writes nothing."""
        with self._lock:
            if self._log is None:
                self._log_path, self._header = Path(path), header
                self._open_log()

    def _open_log(self) -> None:
        if self._log_path is None or not self._log_path.parent.parent.is_dir():
            return
        self._log_path.parent.mkdir(exist_ok=True)
        self._log = open(self._log_path, "a", encoding="utf-8")  # noqa: SIM115 (open until close())
        self._log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self._header}\n")
        self._log.writelines(line + "\n" for line in self._early)
        self._log.flush()
        self._early.clear()
        self._log_path = None

    def _to_log(self, plain: str) -> None:
        if self._log is None:
            if len(self._early) < self._EARLY_LINES:
                self._early.append(plain)
            self._open_log()
            return
        self._log.write(plain + "\n")
        self._log.flush()

    def close(self) -> None:
        """Show what is held back, end the status line, close the run log."""
        with self._lock:
            for stream in (self.out, self.err):
                for key in list(stream._pending):
                    rest = stream._pending.pop(key)
                    self._to_log(strip_ansi(rest))
                    stream.inner.write(rest)
            for stream, held in self._held:
                stream.inner.write(held + "\n")
            self._held.clear()
            if self._status:
                self.err.inner.write("\r\x1b[K")
                self._status = ""
            for stream in (self.out, self.err):
                stream.inner.flush()
            self._open_log()
            if self._log is not None:
                self._log.close()
                self._log = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_screen: Screen | None = None


def install_screen(
    level: str, *, verbose: bool = False, terminal: bool = False, out: TextIO | None = None,
    err: TextIO | None = None,
) -> Screen:  # fmt: skip
    """The driver's Screen in place of sys.stdout / sys.stderr (over `out` / `err`, default those two), and its
    Display (progress as a live bar when `terminal`). `uninstall_screen` puts the streams back."""
    global _screen
    uninstall_screen()
    _screen = Screen(out or sys.stdout, err or sys.stderr, verbose=verbose, terminal=terminal)
    sys.stdout, sys.stderr = _screen.out, _screen.err
    set_display(Display(level=str(level).upper(), bar=terminal))
    return _screen


def uninstall_screen() -> None:
    global _screen
    if _screen is None:
        return
    screen, _screen = _screen, None
    if sys.stdout is screen.out:
        sys.stdout = screen.out.inner
    if sys.stderr is screen.err:
        sys.stderr = screen.err.inner
    screen.close()
    set_display(Display())


def attach_run_log(path: Path, header: str) -> None:
    """Keep the driver's screen, Ray's noise included, in `path` (a no-op without a Screen: library use)."""
    if _screen is not None:
        _screen.attach(path, header)
