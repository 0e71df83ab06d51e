"""Progress inside a pass over a split (a training epoch, inference's passes, a split's feature extraction):
images done, images/s and ETA, reported by rank 0 alone.

Ranks run in lock step (DDP all-reduces every training step; inference and extraction shards are equal to one
image), so rank 0's images times the world size is the job's count (capped at the pass's total). How it shows is
the driver's decision (core/logs.py Display.bar, handed to every worker):
- the driver's stderr is a terminal: rank 0 logs a progress record (PROGRESS_MARK + JSON) every BAR_EVERY_S
  seconds; Ray forwards it like any worker line and the driver's Screen draws the newest as one live bar in tqdm's
  format (and keeps a plain line in the run log every `every_s`);
- otherwise: rank 0 logs a plain line every `every_s` seconds of the pass (logging.log_every_s; none for a pass
  shorter than that).
Why not tqdm in the worker: a worker's output is a file that Ray forwards line by line, so tqdm's in-place
redraws ("\\r") reach the driver as one line per redraw, or as one long line at the end. Ray's
ray.experimental.tqdm_ray (experimental) draws worker bars on the driver, but leaves one finished bar per pass on
the screen and moves the cursor with raw newlines when several bars are up (concurrent sweep trials).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from .logs import PROGRESS_MARK, display, format_progress
from .meter import METER

if TYPE_CHECKING:
    from .dist import RankContext

log = logging.getLogger(__name__)

BAR_EVERY_S = (
    1.0  # progress records for a live bar: often enough to look alive, few enough for Ray's forwarding
)


class Throttle:
    """`due()` is True at most once every `every_s` seconds: at the first call (or `every_s` after `start`), then
    when every_s has passed since it last was; `due(force=True)` is always True."""

    def __init__(
        self, every_s: float, clock: Callable[[], float] = time.monotonic, start: float | None = None
    ):
        self.every_s, self._clock, self._last = every_s, clock, start

    def due(self, force: bool = False) -> bool:
        now = self._clock()
        if force or self._last is None or now - self._last >= self.every_s:
            self._last = now
            return True
        return False


class Progress:
    """One pass on one rank: call it with each batch's image count on this rank; `close()` at the end.

    Args:
        desc: what the pass is, e.g. "stage1 epoch 3/20".
        total: images of the pass over all ranks.
        rank, world_size: this worker's place (only rank 0 reports).
        every_s: seconds between plain lines (logging.log_every_s).
        bar: send records for the driver's live bar instead (Display.bar).
        clock: seconds (tests).
    """

    def __init__(
        self, desc: str, total: int, rank: int, world_size: int, every_s: float, bar: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.desc, self.total, self.world_size, self.every_s, self.bar = (
            desc,
            int(total),
            world_size,
            every_s,
            bar,
        )
        self.reports = rank == 0 and log.isEnabledFor(logging.INFO)
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._lines = Throttle(every_s, clock, start=self._start)
        self._records = Throttle(BAR_EVERY_S, clock)
        self._id = uuid.uuid4().hex[:12]

    def __call__(self, images: int) -> None:
        METER.batch(images)  # every rank: the first batch ends this worker's start-up (core/meter.py)
        if not self.reports:
            return
        self.done = min(self.total, self.done + int(images) * self.world_size)
        if self.bar:
            if self._records.due():
                self._record(closed=False)
        elif self._lines.due():
            log.info(format_progress(self.desc, self.done, self.total, self._clock() - self._start))

    def close(self) -> None:
        """The pass is over: the driver takes its bar down (plain lines need nothing)."""
        if self.reports and self.bar:
            self._record(closed=True)

    def _record(self, closed: bool) -> None:
        record = {"id": self._id, "desc": self.desc, "done": self.done, "total": self.total,
                  "elapsed": round(self._clock() - self._start, 3), "every": self.every_s, "closed": closed}  # fmt: skip
        log.info("%s%s", PROGRESS_MARK, json.dumps(record))


def progress(desc: str, total: int, ctx: RankContext, every_s: float) -> Progress:
    """A Progress for one pass of this worker, shown as this process's Display says (close it when the pass
    ends; a pass that raises leaves the driver's bar up until the next pass's or the command's end)."""
    return Progress(desc, total, ctx.rank, ctx.world_size, every_s, bar=display().bar)
