"""`make demo` for now: a long-tailed synthetic prediction set through the flip engine, summarised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import storage
from .flips_job import FlipsConfig, run_flips
from .synthetic import exponential_counts, long_tailed_predictions


def run_flip_demo(out: Path, num_classes: int = 20, threshold: float = 2.0, seed: int = 0) -> dict[str, Any]:
    """Generate predictions (500 down to 5 samples per class), write them, run the flips job on them."""
    probs, labels = long_tailed_predictions(exponential_counts(num_classes, 500, 5), seed=seed)
    inputs = out / "inputs"
    storage.write_npy(inputs / "probs.npy", probs)
    storage.write_npy(inputs / "labels.npy", labels)
    cfg = FlipsConfig(
        probs=str(inputs / "probs.npy"),
        labels=str(inputs / "labels.npy"),
        out=str(out / "flips"),
        threshold=threshold,
        seed=seed,
    )
    return run_flips(cfg)
