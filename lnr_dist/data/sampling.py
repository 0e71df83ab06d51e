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


def repeated_permutations(num_samples: int, num_draws: int, seed: int, epoch: int) -> np.ndarray:
    """`num_draws` indices of [0, num_samples): whole permutations one after another, cut at num_draws. The
    first is instance_order's (so num_draws == num_samples is that order), the next ones come from a stream of
    their own. Every index is read once per pass: an unlabelled pool read for as many steps as the labelled
    loader takes (FixMatch's mu x B pool images per step) passes over the pool several times per epoch.
    Returns (num_draws,) int64; raises ValueError when num_draws > 0 and num_samples < 1."""
    if num_draws > 0 and num_samples < 1:
        raise ValueError("repeated_permutations: nothing to draw from (num_samples < 1)")
    first = instance_order(num_samples, True, seed, epoch)
    if num_draws <= num_samples:
        return first[:num_draws]
    rng = _epoch_rng(seed, epoch, 3)
    passes = -(-num_draws // num_samples)
    more = [rng.permutation(num_samples).astype(np.int64) for _ in range(passes - 1)]
    return np.concatenate([first, *more])[:num_draws]


def sampler_order(
    labels: np.ndarray, sampler: str, seed: int, epoch: int, num_draws: int | None = None
) -> np.ndarray:
    """One epoch's global order under `sampler`, `num_draws` indices (None: len(labels)): random is
    instance_order's permutation (every sample once; repeated_permutations when more draws than samples),
    mean and reverse are class_aware_order's draws. labels: (N,) int (ignored by random, so an unlabelled pool's
    -1 labels are fine there); returns (num_draws,) int64. The same on every rank (shard it with shard_of).
    Raises ValueError for an unknown sampler."""
    labels = np.asarray(labels, dtype=np.int64)
    draws = labels.size if num_draws is None else num_draws
    if _power(sampler) == 0.0:
        return repeated_permutations(labels.size, draws, seed, epoch)
    return class_aware_order(labels, sampler, draws, seed, epoch)


def keep_probabilities(counts: np.ndarray, sampler: str) -> np.ndarray:
    """How likely `sampler` draws one given sample of class c, relative to a sample of the most likely class:
    p_c = (w_c / n_c) / max_k (w_k / n_k) with w = class_weights(counts, sampler), i.e. (n_min / n_c)^q.

    FixMatch's gate (stage2.fixmatch.semi_sampler): a confident pseudo-label of class c is kept with probability
    p_c, so the consistency loss sees the pool as that sampler would draw it. random (q = 0) keeps every one
    (plain FixMatch), mean keeps class c with probability n_min / n_c (the Bernoulli mask of ABC, Lee et al.,
    NeurIPS 2021), reverse with (n_min / n_c)^2. counts: (C,) class counts; returns (C,) float64 in [0, 1], 0
    for an empty class. Raises ValueError like class_weights."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = class_weights(counts, sampler)
    per_sample = np.divide(weights, counts, out=np.zeros_like(weights), where=counts > 0)
    return per_sample / per_sample.max()


def shard_of(order: np.ndarray, rank: int, world_size: int, pad: bool) -> np.ndarray:
    """Rank's part of a global order. With `pad`, the order is first extended by wrapping around so that every
    rank gets the same number of samples (what lock-step training needs); without it, shards differ by <= 1."""
    if pad and order.size % world_size:
        extra = world_size - order.size % world_size
        order = np.concatenate([order, np.resize(order, extra)])
    start, stop = shard_bounds(order.size, rank, world_size)
    return order[start:stop]
