"""Verdicts with confidence intervals: each method against each baseline, per metric, from a paired bootstrap.

`delta` is the mean over seeds of (method - baseline) on the whole test split: the difference of the two rows
of the results table when both methods ran on the same seeds (otherwise it uses the seeds both ran). Its 95% interval comes from a paired, stratified bootstrap (Efron & Tibshirani,
An Introduction to the Bootstrap, 1993, ch. 13, percentile interval): each draw resamples the test images with
replacement WITHIN each class (the class sizes, so the many/medium/few groups, stay fixed) and, with several
seeds, the seeds too; both methods are scored on the same resampled images (paired by dataset index) and the
same seeds (paired by seed). A verdict says "better" or "worse" only when the interval excludes 0; otherwise
"not distinguishable from noise". No correction for multiple comparisons is made (the report says how many).
With one seed the interval covers the sampling of test images only, not the seed-to-seed variation of training;
resampling k seeds with replacement understates that variation by about (k - 1) / k.

Metrics follow lnr_dist.train.metrics exactly (hit, confidence and ECE bin of each sample from `sample_terms`): top-1,
many / medium / few (mean per-class accuracy of the group's classes present in test) and ECE (15 bins), all in %.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.manifest import GROUPS, Manifest
from ..train.metrics import ECE_BINS, sample_terms

log = logging.getLogger(__name__)

METRICS = ("top1", "many", "medium", "few", "ece")
LOWER_IS_BETTER = frozenset({"ece"})
FIELDS = ("method", "baseline", "metric", "delta", "ci_low", "ci_high", "seeds", "verdict")
NOISE = "not distinguishable from noise"
CHUNK_CELLS = 4_000_000  # draws x test images held at once (~100 MB of float64 working arrays)


@dataclass(frozen=True)
class SampleScores:
    """One method's per-sample terms on the test split, rows sorted by class then dataset index.

    hit, gap (hit - confidence) (N,) float64; bins (N,) int64 ECE bin; labels, indices (N,) int64."""

    hit: np.ndarray
    gap: np.ndarray
    bins: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> SampleScores:
        """(N, C) float32 logits, (N,) labels, (N,) dataset indices (any row order)."""
        order = np.lexsort((indices, labels))
        logits_t = torch.from_numpy(np.ascontiguousarray(logits[order], dtype=np.float32))
        hit, confidence, bins, _ = sample_terms(logits_t, torch.from_numpy(labels[order].astype(np.int64)))
        hit = hit.numpy()
        return cls(
            hit, hit - confidence.numpy(), bins.numpy(), labels[order].astype(np.int64), indices[order]
        )

    @classmethod
    def load(cls, path: Path) -> SampleScores:
        """From a `test_logits.npz` (logits, labels, indices; see train.write_test_logits)."""
        with np.load(path, allow_pickle=False) as data:
            indices = data["indices"] if "indices" in data else np.arange(data["labels"].size)
            return cls.from_logits(data["logits"], data["labels"], indices)


def _class_blocks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For class-sorted labels: the classes present, their first row and their size."""
    classes, starts, sizes = np.unique(labels, return_index=True, return_counts=True)
    return classes, starts, sizes


def _metrics_under(scores: SampleScores, rows: np.ndarray, manifest: Manifest) -> dict[str, np.ndarray]:
    """Each metric (%) of `scores` on the resampled test sets `rows` (D, N): D values per metric, NaN for a group
    with no class in the test split. rows[d] keeps every class's block (stratified), so per-class sums are sums
    over fixed column ranges."""
    draws, n = rows.shape
    classes, starts, sizes = _class_blocks(scores.labels)
    hit = scores.hit[rows]
    per_class = np.add.reduceat(hit, starts, axis=1) / sizes  # (D, classes present)
    out = {"top1": 100.0 * hit.sum(1) / n}
    for g, name in enumerate(GROUPS):
        members = manifest.group[classes] == g
        out[name] = 100.0 * per_class[:, members].mean(1) if members.any() else np.full(draws, np.nan)
    cell = (np.arange(draws)[:, None] * ECE_BINS + scores.bins[rows]).ravel()
    gap_per_bin = np.bincount(cell, weights=scores.gap[rows].ravel(), minlength=draws * ECE_BINS)
    out["ece"] = 100.0 * np.abs(gap_per_bin.reshape(draws, ECE_BINS)).sum(1) / n
    return out


def _stratified_rows(labels: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, N) row numbers: each class's block of the class-sorted test split resampled with replacement."""
    _, starts, sizes = _class_blocks(labels)
    start_of = np.repeat(starts, sizes)
    size_of = np.repeat(sizes, sizes)
    return start_of + np.floor(rng.random((draws, labels.size)) * size_of).astype(np.int64)


def paired_bootstrap(
    method: list[SampleScores],
    baseline: list[SampleScores],
    manifest: Manifest,
    draws: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per metric: delta (mean over seeds of method - baseline, whole test split), ci_low, ci_high (95%
    percentile interval over `draws` paired stratified resamples), seeds.

    Args:
        method, baseline: one SampleScores per seed, in the same seed order; every one on the same test images.
        manifest: the training split's manifest (many/medium/few groups).
        draws: bootstrap resamples (0: delta only, no interval).
        seed: the resampling stream's seed (the same seed gives the same interval).
    Raises:
        ValueError: different seed counts, or scores on different test images.
    """
    if len(method) != len(baseline) or not method:
        raise ValueError(f"need the same seeds for both methods, got {len(method)} and {len(baseline)}")
    first = method[0]
    for scores in (*method, *baseline):
        if not np.array_equal(scores.indices, first.indices) or not np.array_equal(
            scores.labels, first.labels
        ):
            raise ValueError("the methods' test logits cover different test images (dataset indices differ)")
    k, n = len(method), first.labels.size
    identity = np.arange(n)[None, :]
    point = [
        {m: a[m][0] - b[m][0] for m in METRICS}
        for a, b in ((_metrics_under(x, identity, manifest), _metrics_under(y, identity, manifest))
                     for x, y in zip(method, baseline, strict=True))
    ]  # fmt: skip
    rng = np.random.default_rng([seed, 0x5EED])
    samples = {m: [] for m in METRICS}
    chunk = max(1, CHUNK_CELLS // max(n, 1))
    for begin in range(0, draws, chunk):
        size = min(chunk, draws - begin)
        rows = _stratified_rows(first.labels, size, rng)
        picks = rng.integers(0, k, (size, k)) if k > 1 else np.zeros((size, 1), dtype=np.int64)
        per_seed = [
            (_metrics_under(x, rows, manifest), _metrics_under(y, rows, manifest))
            for x, y in zip(method, baseline, strict=True)
        ]
        for m in METRICS:
            deltas = np.stack([a[m] - b[m] for a, b in per_seed], axis=1)  # (size, seeds)
            samples[m].append(np.take_along_axis(deltas, picks, axis=1).mean(1))
    out = {}
    for m in METRICS:
        delta = float(np.mean([p[m] for p in point]))
        low = high = None
        if draws and np.isfinite(delta):
            low, high = (float(v) for v in np.quantile(np.concatenate(samples[m]), [0.025, 0.975]))
        out[m] = {"delta": delta if np.isfinite(delta) else None, "ci_low": low, "ci_high": high, "seeds": k}
    return out


def verdict(metric: str, ci_low: float | None, ci_high: float | None) -> str:
    """better / worse when the 95% interval excludes 0 (for ECE lower is better), else noise; '' if undefined."""
    if ci_low is None or ci_high is None:
        return ""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    low, high = sorted((sign * ci_low, sign * ci_high))
    return "better" if low > 0 else "worse" if high < 0 else NOISE


def pairs(methods: tuple[str, ...], baselines: tuple[str, ...]) -> list[tuple[str, str]]:
    """(method, baseline) for every method that is not a baseline against every baseline that ran."""
    present = [b for b in baselines if b in methods]
    return [(m, b) for m in methods if m not in present for b in present]


def compare(
    scores: dict[str, list[SampleScores | None]],
    manifest: Manifest,
    methods: tuple[str, ...],
    baselines: tuple[str, ...],
    seeds: list[int],
    draws: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The rows of comparisons.csv (FIELDS). scores[method][k] is seed k's SampleScores, None where the method did
    not apply; a pair is compared on the seeds where both applied (none: no rows)."""
    rows = []
    for method, baseline in pairs(methods, baselines):
        both = [
            k for k in range(len(seeds)) if scores[method][k] is not None and scores[baseline][k] is not None
        ]
        if not both:
            continue
        try:
            result = paired_bootstrap(
                [scores[method][k] for k in both], [scores[baseline][k] for k in both], manifest, draws, seed
            )
        except ValueError as exc:  # e.g. one method's test logits lack images another has (data.skip_corrupt)
            log.warning("comparison %s vs %s left out: %s", method, baseline, exc)
            continue
        for metric, r in result.items():
            rows.append({"method": method, "baseline": baseline, "metric": metric, **r,
                         "verdict": verdict(metric, r["ci_low"], r["ci_high"])})  # fmt: skip
    return rows
