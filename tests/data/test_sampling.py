"""Pure sharding and sampling functions."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.data.sampling import balanced_order, instance_order, shard_bounds, shard_of


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_exact_shards_cover_once(world_size):
    order = instance_order(100, shuffle=True, seed=3, epoch=2)
    parts = [shard_of(order, r, world_size, pad=False) for r in range(world_size)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [
        shard_bounds(100, r, world_size)[1] - shard_bounds(100, r, world_size)[0] for r in range(world_size)
    ] == [len(p) for p in parts]


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_padded_shards_are_equal_and_cover(world_size):
    order = instance_order(100, shuffle=True, seed=0, epoch=0)
    parts = [shard_of(order, r, world_size, pad=True) for r in range(world_size)]
    assert len({len(p) for p in parts}) == 1
    joined = np.concatenate(parts)
    assert set(joined.tolist()) == set(range(100))
    assert len(joined) - 100 < world_size


def test_orders_depend_on_epoch_and_seed_only():
    a = instance_order(50, True, seed=1, epoch=0)
    np.testing.assert_array_equal(a, instance_order(50, True, seed=1, epoch=0))
    assert not np.array_equal(a, instance_order(50, True, seed=1, epoch=1))
    np.testing.assert_array_equal(instance_order(5, False, 1, 4), np.arange(5))


def test_balanced_order_draws_classes_uniformly():
    labels = np.repeat(np.arange(5), [500, 100, 20, 5, 1])
    draws = np.concatenate([balanced_order(labels, labels.size, seed=0, epoch=e) for e in range(5)])
    freq = np.bincount(labels[draws], minlength=5) / draws.size
    np.testing.assert_allclose(freq, 0.2, atol=0.02)
    # within a class every sample is drawn
    assert set(draws[labels[draws] == 3].tolist()) == set(np.flatnonzero(labels == 3).tolist())
