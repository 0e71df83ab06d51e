"""Flip engine vs a per-sample loop of the reference's shape, at ImageNet-LT and Places-LT shapes.

Run: .venv/bin/python benchmarks/bench_flips.py [--loop-samples N]
Last line: speedup_vs_loop=<x> peak_extra_mem_ratio=<y> for the ImageNet-LT shape, where peak extra memory is
what the engine allocates on top of the (N, C) float32 probabilities (tracemalloc sees NumPy's buffers).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from lnr_dist.core.synthetic import long_tailed_predictions
from lnr_dist.lnr import compute_flips

SHAPES = {
    # name: (num_samples, num_classes, n_max, n_min)
    "ImageNet-LT": (115_846, 1_000, 1_280, 5),
    "Places-LT": (62_500, 365, 4_980, 5),
}


def long_tail_counts(num_samples: int, num_classes: int, n_max: int, n_min: int) -> np.ndarray:
    """Decreasing counts from n_max to n_min summing exactly to num_samples (power profile, bisection)."""
    x = 1.0 - np.arange(num_classes) / (num_classes - 1)
    lo, hi = 0.01, 1000.0
    for _ in range(200):
        gamma = (lo * hi) ** 0.5
        total = np.floor(n_min + (n_max - n_min) * x**gamma).sum()
        lo, hi = (gamma, hi) if total > num_samples else (lo, gamma)
    counts = np.floor(n_min + (n_max - n_min) * x**hi).astype(np.int64)
    counts[1 : 1 + num_samples - counts.sum()] += 1  # the remainder, to head classes, keeps the order
    assert counts.sum() == num_samples and counts[0] == n_max and counts[-1] == n_min
    return counts


def reference_loop(probs: np.ndarray, labels: np.ndarray, threshold: float, seed: int) -> int:
    """The research code's shape: predictions in a dict keyed by str(index), per-sample loop, global RNG."""
    predictions = {str(i): probs[i] for i in range(labels.shape[0])}
    start = time.perf_counter()
    stacked = np.stack([predictions[str(i)] for i in range(labels.shape[0])]).astype(np.float64)
    num_classes = stacked.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    prior = 1 - (counts - counts.min()) / (counts.max() - counts.min())
    mean = np.array([stacked[labels != k, k].mean() for k in range(num_classes)])
    std = np.array([stacked[labels != k, k].std() for k in range(num_classes)])
    np.random.seed(seed)
    flips = 0
    for i in range(labels.shape[0]):
        p = predictions[str(i)]
        c = labels[i]
        z = (p - mean) / std
        rate = np.tanh(z - threshold) * np.maximum(prior - prior[c], 0)
        candidates = np.flatnonzero(rate > np.random.rand(num_classes))
        if candidates.size:
            flips += 1
    return flips, time.perf_counter() - start


def measure(name: str, threshold: float, loop_samples: int | None) -> tuple[float, float]:
    num_samples, num_classes, n_max, n_min = SHAPES[name]
    counts = long_tail_counts(num_samples, num_classes, n_max, n_min)
    probs, labels = long_tailed_predictions(counts, seed=0)
    engine_s = float("inf")
    for _ in range(3):  # best of 3, without tracemalloc, which slows allocation down
        start = time.perf_counter()
        result = compute_flips(probs, labels, None, threshold, seed=0)
        engine_s = min(engine_s, time.perf_counter() - start)
    tracemalloc.start()
    compute_flips(probs, labels, None, threshold, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = num_samples if loop_samples is None else min(loop_samples, num_samples)
    picked = (
        np.random.default_rng(0).choice(num_samples, rows, replace=False)
        if rows < num_samples
        else slice(None)
    )
    loop_flips, loop_s = reference_loop(probs[picked], labels[picked], threshold, 0)
    loop_s *= num_samples / rows
    ratio = peak / probs.nbytes
    print(
        f"{name}: N={num_samples} C={num_classes} probs={probs.nbytes / 2**20:.0f} MiB | engine {engine_s:.2f} s "
        f"({len(result.table)} flips) | loop {loop_s:.2f} s{' (extrapolated from ' + str(rows) + ' rows)' if rows < num_samples else ''} "
        f"({loop_flips} flips) | speedup {loop_s / engine_s:.1f}x | peak extra {peak / 2**20:.0f} MiB = {ratio:.3f}x probs"
    )
    return loop_s / engine_s, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--loop-samples", type=int, default=None, help="time the loop on a subset, scaled up")
    args = parser.parse_args()
    measure("Places-LT", args.threshold, args.loop_samples)
    speedup, ratio = measure("ImageNet-LT", args.threshold, args.loop_samples)
    print(f"speedup_vs_loop={speedup:.1f} peak_extra_mem_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
