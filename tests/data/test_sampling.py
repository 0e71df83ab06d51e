"""Pure sharding and sampling functions: shards, and the class-aware samplers (random, mean, reverse)."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.data.sampling import (
    SAMPLER_POWERS,
    class_aware_order,
    class_weights,
    instance_order,
    sampler_order,
    shard_bounds,
    shard_of,
)

LONG_TAIL = np.repeat(np.arange(5), [500, 100, 20, 5, 1])


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


def former_balanced_order(labels, num_draws, seed, epoch):
    """The balanced sampler as it was before the samplers (commit 7d321d0), verbatim: `mean` must equal it."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 1])
    by_class = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    classes = present[rng.integers(0, present.size, num_draws)]
    offsets = (rng.random(num_draws) * counts[classes]).astype(np.int64)
    return by_class[starts[classes] + offsets]


def test_class_weights_by_hand():
    counts = np.array([8, 2, 0, 1])
    np.testing.assert_allclose(class_weights(counts, "random"), [8 / 11, 2 / 11, 0, 1 / 11])
    np.testing.assert_allclose(class_weights(counts, "mean"), [1 / 3, 1 / 3, 0, 1 / 3])
    # n^-1: 1/8, 1/2, 1 over their sum 13/8
    np.testing.assert_allclose(class_weights(counts, "reverse"), [1 / 13, 4 / 13, 0, 8 / 13])
    assert class_weights(counts, "reverse").dtype == np.float64
    with pytest.raises(ValueError, match="unknown sampler 'sqrt'; valid: random, mean, reverse"):
        class_weights(counts, "sqrt")
    with pytest.raises(ValueError, match="every class is empty"):
        class_weights(np.zeros(3), "mean")


@pytest.mark.parametrize("sampler", sorted(SAMPLER_POWERS))
def test_class_frequencies_follow_the_class_weights(sampler):
    """Over many draws each class turns up at its weight w_c (the class view of drawing a sample of class c with
    probability ∝ n_c^-q), and within a class every sample is drawn (where the class gets enough draws)."""
    draws = np.concatenate([sampler_order(LONG_TAIL, sampler, seed=0, epoch=e) for e in range(40)])
    freq = np.bincount(LONG_TAIL[draws], minlength=5) / draws.size
    weights = class_weights(np.bincount(LONG_TAIL), sampler)
    np.testing.assert_allclose(freq, weights, atol=0.01)
    per_sample = draws.size * weights / np.bincount(LONG_TAIL)  # expected draws of each sample of class c
    drawn = LONG_TAIL[draws]
    for c in np.flatnonzero(per_sample >= 20):
        assert set(draws[drawn == c].tolist()) == set(np.flatnonzero(np.equal(LONG_TAIL, c)).tolist())


def test_reverse_draws_rare_classes_more_than_uniformly():
    draws = sampler_order(LONG_TAIL, "reverse", seed=2, epoch=0)
    freq = np.bincount(LONG_TAIL[draws], minlength=5) / draws.size
    # the one-sample class: w = 1 / (1 + 1/5 + 1/20 + 1/100 + 1/500) = 0.79; the 500-sample one: 0.0016
    assert freq[4] == pytest.approx(0.79, abs=0.05) and freq[0] < 0.01


def test_random_is_a_fresh_permutation_every_epoch():
    orders = [sampler_order(LONG_TAIL, "random", seed=1, epoch=e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(LONG_TAIL.size)) and order.dtype == np.int64
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[2], instance_order(LONG_TAIL.size, True, seed=1, epoch=2))


@pytest.mark.parametrize("labels", [LONG_TAIL, np.array([3, 3, 0, 5, 3, 0, 5, 5, 5])])  # with empty classes
def test_mean_equals_the_former_balanced_sampler_exactly(labels):
    for seed, epoch in [(0, 0), (3, 7), (11, 2)]:
        np.testing.assert_array_equal(
            sampler_order(labels, "mean", seed, epoch),
            former_balanced_order(labels, labels.size, seed, epoch),
        )
        np.testing.assert_array_equal(
            class_aware_order(labels, "mean", 37, seed, epoch), former_balanced_order(labels, 37, seed, epoch)
        )


@pytest.mark.parametrize("sampler", sorted(SAMPLER_POWERS))
def test_orders_are_pure_functions_of_labels_sampler_seed_and_epoch(sampler):
    a = sampler_order(LONG_TAIL, sampler, seed=4, epoch=1)
    np.testing.assert_array_equal(a, sampler_order(LONG_TAIL.tolist(), sampler, seed=4, epoch=1))
    assert not np.array_equal(a, sampler_order(LONG_TAIL, sampler, seed=4, epoch=2))
    assert not np.array_equal(a, sampler_order(LONG_TAIL, sampler, seed=5, epoch=1))


@pytest.mark.parametrize("sampler", sorted(SAMPLER_POWERS))
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("pad", [False, True])
def test_the_shards_of_a_sampler_order_join_into_the_global_order(sampler, world_size, pad):
    order = sampler_order(LONG_TAIL, sampler, seed=0, epoch=3)
    joined = np.concatenate([shard_of(order, r, world_size, pad) for r in range(world_size)])
    np.testing.assert_array_equal(joined[: order.size], order)
    assert joined.size - order.size == (-order.size % world_size if pad else 0)


def test_an_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown sampler 'balanced'"):
        sampler_order(LONG_TAIL, "balanced", 0, 0)
