"""Checks on the engine's inputs, with messages that name the problem (no I/O)."""

from __future__ import annotations

import math

import numpy as np

ROW_SUM_TOLERANCE = 1e-2  # float16 softmax rows sum to 1 within ~C * 2**-11; 1e-2 catches logits and garbage


class InputError(ValueError):
    """A problem of one input array; `name` is "probs", "labels" or "indices", so callers can name its file."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def empty_classes(counts: np.ndarray) -> np.ndarray:
    """(C,) per-class counts -> sorted int64 indices of the classes with count 0."""
    return np.flatnonzero(np.asarray(counts) == 0).astype(np.int64)


def class_list(classes: np.ndarray) -> str:
    """Class indices as text, consecutive runs as ranges: [3, 5, 6, 7, 9] -> '3, 5-7, 9'."""
    values = sorted(int(c) for c in classes)
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_threshold(threshold: object) -> float:
    """A finite real number, or ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return float(threshold)


def check_inputs(probs: np.ndarray, labels: np.ndarray, indices: np.ndarray | None, chunk_rows: int) -> None:
    """Validate (N, C) probabilities, (N,) labels and optional (N,) indices; raises InputError naming the input.

    Scans `probs` in blocks, so memory-mapped inputs stay on disk.
    """
    if probs.ndim != 2:
        raise InputError("probs", f"probs must be 2-D (N, C), got shape {probs.shape}")
    if probs.dtype not in (np.float16, np.float32, np.float64):
        raise InputError("probs", f"probs must be float16/float32/float64, got {probs.dtype}")
    num_samples, num_classes = probs.shape
    if num_classes < 2:
        raise InputError("probs", f"probs must have at least 2 classes, got {num_classes}")
    for name, array in (("labels", labels), ("indices", indices)):
        if array is None:
            continue
        if array.shape != (num_samples,):
            hint = f" (flatten it: {name}.reshape(-1))" if array.size == num_samples else ""
            raise InputError(
                name, f"{name} must have shape ({num_samples},) to match probs, got {array.shape}{hint}"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise InputError(
                name, f"{name} must be integers, got {array.dtype} (save them with {name}.astype(np.int64))"
            )
    if num_samples and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise InputError(
            "labels",
            f"labels out of range [0, {num_classes}) (probs has {num_classes} columns): row {bad} has label "
            f"{int(labels[bad])}",
        )
    if indices is not None and num_samples:
        if indices.min() < 0:
            raise InputError("indices", "indices must be non-negative")
        if np.unique(indices).shape[0] != num_samples:
            raise InputError("indices", "indices must be unique")
    for start in range(0, num_samples, chunk_rows):
        block = np.asarray(probs[start : start + chunk_rows], dtype=np.float64)
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite.all(1))[0])
            raise InputError("probs", f"probs has NaN or inf values (first at row {row})")
        if block.min() < 0.0 or block.max() > 1.0 + ROW_SUM_TOLERANCE:
            raise InputError("probs", "probs must lie in [0, 1]: pass softmax probabilities, not logits")
        off = np.abs(block.sum(1) - 1.0) > ROW_SUM_TOLERANCE
        if off.any():
            row = start + int(np.flatnonzero(off)[0])
            raise InputError(
                "probs", f"probs rows must sum to 1 (row {row} sums to {block[row - start].sum():.4f})"
            )
