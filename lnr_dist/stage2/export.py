"""`lnr-dist export`: the flipped training split as a file every long-tailed codebase reads.

It writes `<path> <label>` lines (data/splits.py's format) with the input split's root-relative paths in the input
order, so a line's position is its dataset index as before, and beside it a CSV (the same name with `.csv`) of
index, path, original label, new label. The labels come from a run folder's inference job (RunLayout: infer/,
tune/chosen_threshold.json): LNR at a given threshold, the flips a registered method trains on, or by default LNR
at the sweep's chosen threshold when the run has one, else the inference job's own flips at infer.threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core import storage
from ..core.errors import UserError
from ..core.layout import RunLayout
from ..data.splits import load_train_split
from ..experiment import ExperimentConfig
from ..lnr import FlipTable
from .flip_sources import FlipSource, tuned_threshold
from .registry import get_method, method_of, stage2_flips

CSV_FIELDS = ("index", "path", "original_label", "new_label")


@dataclass(frozen=True)
class Exported:
    """What `export_flipped_split` wrote: the split file, its CSV, the number of flipped lines, the threshold
    the flips were made at (None for a method without one) and what chose the labels (for the screen)."""

    split: Path
    csv: Path
    num_flips: int
    threshold: float | None
    source: str


def _run_layout(cfg: ExperimentConfig, seed: int | None) -> RunLayout:
    """The run folder whose inference job is exported: run_dir, or a `reproduce` root's seed<k>/ with `seed`.
    Raises UserError naming what to pass when run_dir has no inference output."""
    layout = cfg.layout if seed is None else cfg.layout.seed(seed)
    if layout.infer_file("summary.json").is_file():
        return layout
    seeds = sorted(
        p.name for p in cfg.layout.root.glob("seed*") if RunLayout(p).infer_file("summary.json").is_file()
    )
    if seed is None and seeds:
        raise UserError(
            f"run_dir {cfg.layout.root} is a `reproduce` folder: choose a seed with --seed "
            f"({', '.join(s.removeprefix('seed') for s in seeds)})"
        )
    raise UserError(
        f"{layout.infer_file('summary.json')} not found: run `lnr-dist infer` (or reproduce) first"
    )


def _choose(
    cfg: ExperimentConfig, labels: np.ndarray, threshold: float | None, method: str | None
) -> tuple[FlipTable | None, float | None, str]:
    """(flip table, threshold, what chose it)."""
    if method is not None:
        method_of(cfg)  # imports stage2.plugins first, so a plugin's method can be named
        chosen = get_method(method, "--method")
        table, used = stage2_flips(chosen.run_config(cfg), labels)
        return table, used, f"method {method}"
    source = FlipSource(cfg.layout)
    if threshold is not None:
        table, used = source.at(threshold)
        return table, used, f"LNR at threshold {threshold:g} (--threshold)"
    if cfg.layout.chosen_threshold.is_file():
        table, used = source.at(tuned_threshold(cfg.layout))
        return table, used, f"LNR at the sweep's chosen threshold {used:g} ({cfg.layout.chosen_threshold})"
    table, used = source.at(None)
    return table, used, f"LNR at infer.threshold {used:g} (the run has no sweep)"


def export_flipped_split(
    cfg: ExperimentConfig,
    out: str | Path,
    threshold: float | None = None,
    method: str | None = None,
    seed: int | None = None,
    force: bool = False,
) -> Exported:
    """Write the training split (cfg.data.train_split, read like every job reads it) with flipped labels to
    `out` and the per-line CSV to `out` with suffix `.csv`, atomically.

    Args:
        cfg: the run's config; its run_dir holds infer/ (or, with `seed`, its seed<seed>/ does).
        out: the split file to write; its parent folders are made.
        threshold: LNR's flips at this z threshold (from the inference job's candidates or predictions).
        method: instead, the labels this registered stage-2 method trains on (e.g. `random`; at the sweep's
            threshold when its policy is tuned; `mislas` gives the original labels).
        seed: a `reproduce` root's seed folder to read.
        force: overwrite existing files.

    Raises:
        UserError: both threshold and method; `out` ending in .csv; an existing file without `force`; no
            inference output; a threshold the saved outputs cannot serve; an unknown method.
    """
    if threshold is not None and method is not None:
        raise UserError("give --threshold or --method, not both")
    split_path = Path(out)
    csv_path = split_path.with_suffix(".csv")
    if split_path == csv_path:
        raise UserError(
            f"--out {split_path}: the split file cannot end in .csv (its CSV is written beside it)"
        )
    existing = [str(p) for p in (split_path, csv_path) if p.exists()]
    if existing and not force:
        raise UserError(f"{' and '.join(existing)} exist(s): pass --force to overwrite")
    cfg = cfg.with_absolute_paths()
    cfg = replace(cfg, run_dir=str(_run_layout(cfg, seed).root))
    split = load_train_split(cfg.data)  # the labels LNR flipped: with data.label_noise on, the noisy ones
    table, used, source = _choose(cfg, split.labels, threshold, method)
    index = np.arange(len(split), dtype=np.int64)
    new = split.labels if table is None else table.apply(index, split.labels)
    storage.write_text(split_path, "".join(f"{p} {int(y)}\n" for p, y in zip(split.paths, new, strict=True)))
    rows = (
        {"index": i, "path": p, "original_label": int(a), "new_label": int(b)}
        for i, p, a, b in zip(index, split.paths, split.labels, new, strict=True)
    )
    storage.write_csv(csv_path, rows, CSV_FIELDS)
    return Exported(split_path, csv_path, int(np.count_nonzero(new != split.labels)), used, source)
