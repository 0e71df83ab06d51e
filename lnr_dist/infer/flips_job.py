"""The `flips` job: probabilities + labels on disk -> flips.npz + summary.json (one process).

The sharded inference job reaches the same engine through the same summary; this job serves offline use (saved
predictions, sweeps by hand, the demo).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import config as config_lib
from ..core import storage
from ..core.errors import UserError
from ..lnr import (
    ClassMoments,
    FlipTable,
    InputError,
    binary_flips,
    check_inputs,
    check_threshold,
    class_list,
    compute_flips,
    default_chunk_rows,
    empty_classes,
)
from ..lnr.stats import ClassStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlipsConfig:
    """Inputs of `lnr-dist flips`. probs: (N, C) .npy, or (N,) minority probabilities with binary=true.

    `allow_empty_classes`: by default labels in which a class of probs' C columns has no sample are refused,
    since the paper's prior 1 - (n_c - n_min) / (n_max - n_min) makes an empty class the rarest and moves
    samples into it. With it set, the rule runs as written, empty classes included.
    """

    probs: str
    labels: str
    out: str
    threshold: float
    seed: int = 0
    indices: str | None = None
    binary: bool = False
    chunk_rows: int | None = None
    allow_empty_classes: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")


def _load_array(path: str, what: str) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read {what} as a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives too
        array.close()
        raise UserError(f"{path}: a .npz archive, not a .npy array: save the {what} with np.save")
    return array


def build_summary(
    moments: ClassMoments, table: FlipTable, threshold: float, seed: int, input_sha256: str, **extra: Any
) -> dict[str, Any]:
    """The summary.json content shared by the flips and inference jobs."""
    num_classes = moments.num_classes
    return {
        "num_classes": num_classes,
        "num_samples": int(moments.counts.sum()),
        "threshold": threshold,
        "seed": seed,
        "num_flips": len(table),
        "counts": moments.counts.tolist(),
        "counts_after": table.counts_after(moments.counts).tolist(),
        "prior": moments.prior.tolist(),
        "mean": moments.mean.tolist(),
        "std": moments.std.tolist(),
        "valid": moments.valid.tolist(),
        "flip_pairs": table.flip_pairs().tolist(),  # [from, to, count], most first
        "inputs_sha256": input_sha256,
        "flips_sha256": storage.flip_table_sha256(table),
        **extra,
    }


def write_flip_outputs(out: Path, table: FlipTable, summary: dict[str, Any]) -> None:
    """flips.npz first, then summary.json: a summary on disk always describes a complete flip table."""
    storage.save_flip_table(out / "flips.npz", table)
    storage.write_json(out / "summary.json", summary)


def run_flips(cfg: FlipsConfig) -> dict[str, Any]:
    """Validate everything, compute, then write flips.npz, summary.json and config.yaml under cfg.out.

    Raises UserError naming the file (probs, labels or indices) or the key of any bad input.
    """
    try:
        threshold = check_threshold(cfg.threshold)
    except ValueError as exc:
        raise UserError(f"key 'threshold': {exc}") from exc
    probs = _load_array(cfg.probs, "probabilities")
    labels = _load_array(cfg.labels, "labels")
    indices = _load_array(cfg.indices, "indices") if cfg.indices else None
    files = {"probs": cfg.probs, "labels": cfg.labels, "indices": cfg.indices}
    if cfg.binary:
        if probs.ndim == 2 and probs.shape[1] == 2:
            probs = probs[:, 1]
        if probs.ndim != 1:
            raise UserError(
                f"{cfg.probs}: binary mode needs (N,) minority probabilities, got shape {probs.shape}"
            )
        matrix = np.stack([1.0 - np.asarray(probs, np.float64), np.asarray(probs, np.float64)], axis=1)
    else:
        matrix = probs
    chunk_rows = cfg.chunk_rows or default_chunk_rows(matrix.shape[1] if matrix.ndim == 2 else 1)
    try:
        check_inputs(matrix, labels, indices, chunk_rows)
        if cfg.binary and labels.size and labels.max() > 1:
            raise InputError("labels", "binary mode needs 0/1 labels")
    except InputError as exc:
        raise UserError(f"{files[exc.name]}: {exc}") from exc
    # The labels hold every sample (no shards here): these are the global class counts.
    empty = empty_classes(np.bincount(np.asarray(labels, np.int64), minlength=matrix.shape[1]))
    if empty.size and not cfg.allow_empty_classes:
        raise UserError(
            f"{cfg.labels}: class(es) {class_list(empty)} of the {matrix.shape[1]} in {cfg.probs} have no "
            "sample: LNR's prior would make an empty class the rarest and move samples into it. Fix the "
            "labels (or drop those probs columns), or pass --allow-empty-classes (allow_empty_classes: true)"
        )
    try:
        if cfg.binary:
            stats = ClassStats.from_chunk(matrix, labels)
            moments = stats.moments()
            table = binary_flips(probs, labels, indices, threshold, cfg.seed)
        else:
            result = compute_flips(probs, labels, indices, threshold, cfg.seed, chunk_rows)
            moments, table = result.moments, result.table
    except ValueError as exc:  # binary_flips: label 0 must be the majority
        raise UserError(f"{cfg.labels}: {exc}") from exc
    arrays = (probs, labels) if indices is None else (probs, labels, indices)
    summary = build_summary(
        moments, table, threshold, cfg.seed, storage.sha256_arrays(*arrays), binary=cfg.binary
    )
    out = Path(cfg.out)
    write_flip_outputs(out, table, summary)
    config_lib.save_resolved(cfg, out)
    log.info("%d flips written to %s", len(table), out / "flips.npz")
    return summary


def format_summary(summary: dict[str, Any], top: int = 10) -> str:
    """Readable text: the most frequent class pairs and counts before/after per class."""
    pairs = summary["flip_pairs"]
    lines = [
        f"{summary['num_flips']} flips over {summary['num_samples']} samples, {summary['num_classes']} classes "
        f"(threshold {summary['threshold']}, seed {summary['seed']})",
        "",
        "top class pairs      flips",
    ]
    lines += [f"  {int(a):>5} -> {int(b):<5}  {int(n):>7}" for a, b, n in pairs[:top]]
    if not pairs:
        lines.append("  (none)")
    lines += ["", "class   before    after   change"]
    before, after = summary["counts"], summary["counts_after"]
    shown = (
        range(len(before))
        if len(before) <= 2 * top
        else [*range(top), *range(len(before) - top, len(before))]
    )
    for k in shown:
        if len(before) > 2 * top and k == len(before) - top:
            lines.append("  ...")
        lines.append(f"{k:>5} {before[k]:>8} {after[k]:>8} {after[k] - before[k]:>+8}")
    return "\n".join(lines)
