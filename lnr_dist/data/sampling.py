"""Which samples each rank reads, per epoch: contiguous shards of a global order (no overlap), and the
class-aware samplers of stage 2. Pure functions of (labels or N, sampler, rank, world size, seed, epoch).

A class-aware sampler draws a sample of class c with probability proportional to n_c^-q, where n_c is the
class's count: `random` (q = 0: instance sampling, every sample equally likely), `mean` (q = 1: every class
equally likely, class-balanced sampling) and `reverse` (q = 2: rarer classes more than uniformly). The names
are the source recipe's `--sampler random | mean | reverse` (shared/seeds/002); the family is Kang et al.'s
class-aware sampling ("Decoupling Representation and Classifier", ICLR 2020, eq. 1: class j picked with
probability ∝ n_j^p, here p = 1 - q). The same in the class view: class c is picked with probability
w_c = n_c^(1-q) / sum_k n_k^(1-q) (`class_weights`), then one of its samples uniformly.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Sampler = Literal["random", "mean", "reverse"]
SAMPLER_POWERS: dict[str, float] = {"random": 0.0, "mean": 1.0, "reverse": 2.0}  # q of each sampler
# The samplers whose order is drawn from the labels (a new one every epoch); random is a permutation.
CLASS_AWARE_SAMPLERS: tuple[str, ...] = ("mean", "reverse")


def shard_bounds(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard; the same split DALI's reader uses."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def _power(sampler: str) -> float:
    if sampler not in SAMPLER_POWERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLER_POWERS)}")
    return SAMPLER_POWERS[sampler]


def instance_order(num_samples: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Every index once; a fresh permutation per epoch when shuffling (the same on every rank)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return _epoch_rng(seed, epoch, 0).permutation(num_samples).astype(np.int64)


def class_weights(counts: np.ndarray, sampler: str) -> np.ndarray:
    """How often `sampler` picks each class: w_c = n_c^(1-q) / sum_k n_k^(1-q), q = SAMPLER_POWERS[sampler].

    counts: (C,) non-negative class counts n_c. Returns (C,) float64 summing to 1; an empty class gets 0 (it
    has nothing to draw). Raises ValueError for an unknown sampler or when every class is empty."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights: every class is empty")
    weights = np.zeros_like(counts)
    weights[present] = counts[present] ** (1.0 - _power(sampler))
    return weights / weights.sum()


def class_aware_order(labels: np.ndarray, sampler: str, num_draws: int, seed: int, epoch: int) -> np.ndarray:
    """`num_draws` indices drawn with replacement: a class with probability class_weights(counts, sampler)
    (counts of `labels`), then one of its samples uniformly.

    labels: (N,) int (>= 0). Returns (num_draws,) int64 indices into labels. `mean` picks the class uniformly
    among the non-empty ones with `integers`, the stream of the former balanced sampler, so its orders (and
    the runs made with them) are unchanged. Raises ValueError for an unknown sampler or empty labels."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = class_weights(counts, sampler)
    rng = _epoch_rng(seed, epoch, 1)
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    if sampler == "mean":
        classes = present[rng.integers(0, present.size, num_draws)]
    else:
        cumulative = np.cumsum(weights[present])
        picks = np.searchsorted(cumulative, rng.random(num_draws) * cumulative[-1], side="right")
        classes = present[np.minimum(picks, present.size - 1)]  # guards a draw at the float top of the sum
    offsets = (rng.random(num_draws) * counts[classes]).astype(np.int64)
    return by_class[starts[classes] + offsets]


def sampler_order(labels: np.ndarray, sampler: str, seed: int, epoch: int) -> np.ndarray:
    """One epoch's global order under `sampler`, len(labels) indices: random is instance_order's permutation
    (every sample once), mean and reverse are class_aware_order's draws. labels: (N,) int; returns (N,) int64.
    The same on every rank (shard it with shard_of). Raises ValueError for an unknown sampler."""
    labels = np.asarray(labels, dtype=np.int64)
    if _power(sampler) == 0.0:
        return instance_order(labels.size, True, seed, epoch)
    return class_aware_order(labels, sampler, labels.size, seed, epoch)


def shard_of(order: np.ndarray, rank: int, world_size: int, pad: bool) -> np.ndarray:
    """Rank's part of a global order. With `pad`, the order is first extended by wrapping around so that every
    rank gets the same number of samples (what lock-step training needs); without it, shards differ by <= 1."""
    if pad and order.size % world_size:
        extra = world_size - order.size % world_size
        order = np.concatenate([order, np.resize(order, extra)])
    start, stop = shard_bounds(order.size, rank, world_size)
    return order[start:stop]
