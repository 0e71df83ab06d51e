"""Split files in the field's format: one `<relative path> <label>` per line (ImageNet-LT, Places-LT, iNat).

A sample's dataset index is its 0-based position among the split's samples (non-blank lines), and every
per-sample result (predictions, flips) is addressed by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class SplitProblem:
    """One defect, reported as `file:line: reason`."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Split:
    """A parsed split: `paths[i]` (relative to `root`) has label `labels[i]`; `lines[i]` is its line number."""

    name: str
    file: str
    root: str
    paths: tuple[str, ...]
    labels: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def full_path(self, index: int) -> str:
        return str(Path(self.root) / self.paths[index])

    def where(self, index: int) -> str:
        """`file:line` of a sample, for error messages."""
        return f"{self.file}:{int(self.lines[index])}"


def parse_split(
    file: str | Path, root: str | Path, num_classes: int | None, name: str = ""
) -> tuple[Split, list[SplitProblem]]:
    """Parse a split file, collecting every format problem instead of stopping at the first.

    Checks: two fields per line, integer label, label in [0, num_classes), no duplicate path. Lines with a
    problem are left out of the returned Split.
    """
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file}: split file not found")
    problems: list[SplitProblem] = []
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    first_line_of: dict[str, int] = {}
    with open(file, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
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
                bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                problems.append(SplitProblem(str(file), number, f"label {label} out of range {bound}"))
                continue
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
    split = Split(
        name or file.stem,
        str(file),
        str(root),
        tuple(paths),
        np.asarray(labels, dtype=np.int64),
        np.asarray(lines, dtype=np.int64),
    )
    return split, problems


def load_split(file: str | Path, root: str | Path, num_classes: int | None, name: str = "") -> Split:
    """Parse a split file; any problem is a UserError listing `file:line: reason` (first 20)."""
    split, problems = parse_split(file, root, num_classes, name)
    if problems:
        shown = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserError(f"{len(problems)} problem(s) in split file {file}:\n{shown}{more}")
    if not len(split):
        raise UserError(f"{file}: split file has no samples")
    return split
