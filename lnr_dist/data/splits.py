"""Split files in the field's format: one `<relative path> <label>` per line (ImageNet-LT, Places-LT, iNat).

A sample's dataset index is its 0-based position among the split's samples (non-blank lines), and every
per-sample result (predictions, flips) is addressed by it.

Files are read as people's tools write them: UTF-8 with or without a byte-order mark (Windows editors write
one), UTF-16 with its mark, LF or CRLF line ends. Paths are relative to `data.root`, always: a leading `/` (the
official Places365 lists write `/a/airfield/00000001.jpg 0`) is stripped, with one notice per file; a full path
inside `data.root` (a list written with absolute paths) is read as the path below the root.
"""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..lnr.validate import class_list, empty_classes
from . import label_noise
from .config import DataConfig, LabelNoiseConfig

log = logging.getLogger(__name__)
_NOTED_SLASHES: set[str] = set()  # split files whose leading-slash notice was logged in this process
# the last instance-noise result of this process: (split file identity, config) -> noisy labels, as that pattern
# decodes every training image and a process loads its training split several times (preflight, recipe, ...)
_INSTANCE_MEMO: dict[tuple, np.ndarray] = {}


@dataclass(frozen=True)
class SplitProblem:
    """One defect, reported as `file:line: reason`."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        """`file:line: reason`, or `file: reason` for a problem of the whole file (line 0)."""
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class Split:
    """A parsed split: `paths[i]` (relative to `root`) has label `labels[i]`; `lines[i]` is its line number.

    A training split with data.label_noise on (`load_train_split`) has the noisy labels in `labels` (what every
    loader, LNR and every method read), the file's labels in `clean_labels` (for the many/medium/few groups and
    the noise summary, never for training) and the noise config in `noise`; both None for clean labels.
    """

    name: str
    file: str
    root: str
    paths: tuple[str, ...]
    labels: np.ndarray
    lines: np.ndarray
    clean_labels: np.ndarray | None = None
    noise: LabelNoiseConfig | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def full_path(self, index: int) -> str:
        return str(Path(self.root) / self.paths[index])

    def where(self, index: int) -> str:
        """`file:line` of a sample, for error messages."""
        return f"{self.file}:{int(self.lines[index])}"


def split_key(name: str) -> str | None:
    """The config key of a split: data.train_split, data.val_split, data.test_split, data.unlabeled_split for the
    pool; None for another name."""
    if name == "pool":
        return "data.unlabeled_split"
    return f"data.{name}_split" if name in ("train", "val", "test") else None


def _key_of(name: str) -> str:
    """' (data.train_split)' for the split a config key names, for messages."""
    key = split_key(name)
    return f" ({key})" if key else ""


def _text_lines(file: Path) -> list[str | None]:
    """The file's lines as text (None for a line that is not valid UTF-8), after its byte-order mark."""
    data = file.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"{file}: starts like UTF-16 text but is not ({exc}); save it as UTF-8") from exc
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines: list[str | None] = []
    for raw in data.splitlines():  # LF, CRLF or CR
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(None)
    return lines


def parse_split(
    file: str | Path, root: str | Path, num_classes: int | None, name: str = ""
) -> tuple[Split, list[SplitProblem]]:
    """Parse a split file, collecting every format problem instead of stopping at the first.

    Checks: valid UTF-8, two fields per line, integer label, label in [0, num_classes), no duplicate path.
    Lines with a problem are left out of the returned Split. A leading `/` is stripped from paths, and a full
    path inside `root` becomes the path below it (see the module docstring).
    """
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: split file not found{_key_of(name)}")
    problems: list[SplitProblem] = []
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    first_line_of: dict[str, int] = {}
    first_slash = 0
    root_prefix = str(Path(root).expanduser().absolute()).rstrip("/") + "/"
    for number, raw in enumerate(_text_lines(file), start=1):
        if raw is None:
            problems.append(SplitProblem(str(file), number, "not UTF-8 text; save the split file as UTF-8"))
            continue
        text = raw.strip()
        if not text:
            continue
        fields = text.rsplit(maxsplit=1)
        if len(fields) != 2:
            problems.append(SplitProblem(str(file), number, f"expected '<path> <label>', got {text!r}"))
            continue
        path, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            problems.append(SplitProblem(str(file), number, f"label {label_text!r} is not an integer"))
            continue
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes}) (data.num_classes)" if num_classes is not None else ">= 0"
            problems.append(SplitProblem(str(file), number, f"label {label} out of range {bound}"))
            continue
        if path.startswith("/"):
            first_slash = first_slash or number
            # an absolute path inside data.root (lists written with full paths) is the path below the root
            path = path[len(root_prefix) :] if path.startswith(root_prefix) else path.lstrip("/")
        if path in first_line_of:
            problems.append(
                SplitProblem(
                    str(file), number, f"duplicate path {path!r} (first on line {first_line_of[path]})"
                )
            )
            continue
        first_line_of[path] = number
        paths.append(path)
        labels.append(label)
        lines.append(number)
    if first_slash and str(file) not in _NOTED_SLASHES:
        _NOTED_SLASHES.add(str(file))
        log.warning(
            "%s: paths start with '/' (first on line %d); split paths are relative to data.root, always, "
            "so they are read as %s/<path without the leading '/'> (a full path inside data.root: as the path "
            "below it)",
            file, first_slash, root,
        )  # fmt: skip
    split = Split(
        name or file.stem,
        str(file),
        str(root),
        tuple(paths),
        np.asarray(labels, dtype=np.int64),
        np.asarray(lines, dtype=np.int64),
    )
    return split, problems


def empty_class_problem(split: Split, num_classes: int) -> str | None:
    """None when every class in [0, num_classes) has a sample in `split`, else what is wrong and what to do.

    An empty training class breaks LNR: its class prior (1 - (n_c - n_min) / (n_max - n_min)) makes it the
    rarest class, and flips would move samples into a class the model never saw.
    """
    empty = empty_classes(np.bincount(split.labels, minlength=num_classes))
    if not empty.size:
        return None
    used = int(split.labels.max()) + 1 if len(split) else 0
    fix = (
        f"set data.num_classes to {used} (the labels use 0..{used - 1})"
        if used and np.array_equal(empty, np.arange(used, num_classes))
        else "add images of those classes to the split, or renumber the labels 0..C-1 without gaps"
    )
    return (
        f"class(es) {class_list(empty)} of data.num_classes = {num_classes} have no images in this split: "
        f"{fix}"
    )


def load_split(file: str | Path, root: str | Path, num_classes: int | None, name: str = "") -> Split:
    """Parse a split file; any problem is a UserError listing `file:line: reason` (first 20)."""
    split, problems = parse_split(file, root, num_classes, name)
    if problems:
        shown = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(
            f"{len(problems)} problem(s) in split file {file}{_key_of(name)} (`lnr-dist data check` lists every "
            f"problem of every split):\n{shown}{more}"
        )
    if not len(split):
        raise UserError(f"{file}: split file has no samples{_key_of(name)}")
    return split


def load_train_split(data: DataConfig) -> Split:
    """The training split of a job: the one place training labels come from. Refused (UserError) when a class
    has no training image (see `empty_class_problem`); with data.label_noise on, its labels carry that noise
    (`noisy_labels`) and a class the noise empties is refused too. Every job loads its training split through
    here before any cluster time."""
    split = load_split(data.train_split, data.root, data.num_classes, "train")
    reason = empty_class_problem(split, data.num_classes)
    if reason is not None:
        raise UserError(f"{data.train_split}: {reason}")
    if not data.label_noise.active:
        return split
    noisy = replace(
        split, labels=noisy_labels(split, data), clean_labels=split.labels, noise=data.label_noise
    )
    emptied = empty_classes(np.bincount(noisy.labels, minlength=data.num_classes))
    if emptied.size:
        raise UserError(
            f"{data.train_split}: data.label_noise ({data.label_noise.pattern}, rate {data.label_noise.rate}) "
            f"leaves class(es) {class_list(emptied)} without a training label: lower data.label_noise.rate"
        )
    return noisy


def noisy_labels(split: Split, data: DataConfig) -> np.ndarray:
    """(N,) int64: the split's labels under data.label_noise (label_noise.py), row i keyed by dataset index i.
    The instance pattern's features are the training images at instance_side^2 x 3 pixels in [0, 1]."""
    noise, clean = data.label_noise, split.labels
    if noise.pattern == "symmetric":
        return label_noise.symmetric_noise(clean, data.num_classes, noise.rate, noise.seed)
    if noise.pattern == "asymmetric":
        targets = label_noise.asymmetric_targets(data.num_classes, noise.mapping())
        return label_noise.asymmetric_noise(clean, targets, noise.rate, noise.seed)
    file = Path(split.file).resolve()
    stat = file.stat()
    key = (str(file), stat.st_mtime_ns, stat.st_size, str(split.root), data.num_classes, repr(noise))
    if key not in _INSTANCE_MEMO:
        from .decode import pixel_features

        features = pixel_features(split, noise.instance_side, data.skip_corrupt)
        _INSTANCE_MEMO.clear()
        _INSTANCE_MEMO[key] = label_noise.instance_noise(
            clean, features, data.num_classes, noise.rate, noise.seed
        )
    return _INSTANCE_MEMO[key].copy()


def noise_record(split: Split, num_classes: int, transitions: bool = False) -> dict[str, Any] | None:
    """What a training split's noise is and did, for results.json and the run folder's label_noise.json: the
    config (pattern, rate, seed, ...) and label_noise.noise_summary (realised_rate, noisy_from, noisy_to per
    class); with `transitions`, the [from, to, count] rows too. None for clean labels."""
    if split.noise is None or split.clean_labels is None:
        return None
    record = {
        **split.noise.describe(),
        **label_noise.noise_summary(split.clean_labels, split.labels, num_classes),
    }
    if transitions:
        record["transitions"] = label_noise.noise_transitions(split.clean_labels, split.labels)
    return record
