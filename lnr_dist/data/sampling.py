"""Which samples each rank reads, per epoch: contiguous shards of a global order (no overlap), plus the
class-balanced order of stage 2. Pure functions of (N, rank, world size, seed, epoch)."""

from __future__ import annotations

import numpy as np


def shard_bounds(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard; the same split DALI's reader uses."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def instance_order(num_samples: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Every index once; a fresh permutation per epoch when shuffling (the same on every rank)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return _epoch_rng(seed, epoch, 0).permutation(num_samples).astype(np.int64)


def balanced_order(labels: np.ndarray, num_draws: int, seed: int, epoch: int) -> np.ndarray:
    """`num_draws` indices: a class uniformly among the non-empty classes, then a sample of it uniformly."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = _epoch_rng(seed, epoch, 1)
    by_class = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    classes = present[rng.integers(0, present.size, num_draws)]
    offsets = (rng.random(num_draws) * counts[classes]).astype(np.int64)
    return by_class[starts[classes] + offsets]


def shard_of(order: np.ndarray, rank: int, world_size: int, pad: bool) -> np.ndarray:
    """Rank's part of a global order. With `pad`, the order is first extended by wrapping around so that every
    rank gets the same number of samples (what lock-step training needs); without it, shards differ by <= 1."""
    if pad and order.size % world_size:
        extra = world_size - order.size % world_size
        order = np.concatenate([order, np.resize(order, extra)])
    start, stop = shard_bounds(order.size, rank, world_size)
    return order[start:stop]
