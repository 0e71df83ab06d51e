"""Iterated LNR's maths (lnr/rounds.py, the round key of lnr/rng.py): round 1 is today's engine bit for bit, every
(seed, round) draws from its own stream, and round r flips the labels round r-1 left, from their statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lnr_dist.core import storage
from lnr_dist.core.synthetic import exponential_counts, long_tailed_predictions
from lnr_dist.lnr import (
    ClassStats,
    FlipTable,
    accumulate_stats,
    compute_flips,
    cumulative,
    flips_for_rows,
    flips_from_candidates,
    labels_after,
    next_round,
    round_candidates,
    stream_key,
    uniforms,
)
from lnr_dist.lnr.rng import MAX_ROUND, ROUND_SEED_BITS

# Recorded from the engine before rounds existed (main at 3f6eace): round 1 must keep drawing exactly these.
TODAY_UNIFORMS = ["0x1.fe6b583740a62p-1", "0x1.131d35094a1c2p-1", "0x1.bef63ae890cffp-1", "0x1.048dfc047b2ccp-1",
                  "0x1.47184f76f10c2p-2"]  # fmt: skip
TODAY_FLIPS = (127, "2dc44b0ae806eb9be8e53d1e09c101f281e6b3436576a77d3cb987ad4dbca180")


def same(a: FlipTable, b: FlipTable) -> bool:
    return storage.flip_table_sha256(a) == storage.flip_table_sha256(b)


@pytest.fixture(scope="module")
def two_predictions():
    """Round 1's (N, C) predictions, another model's (round 2's) on the same samples, and the labels (N,)."""
    counts = exponential_counts(12, 200, 3)
    first, labels = long_tailed_predictions(counts, seed=1)
    second, same = long_tailed_predictions(counts, seed=2)
    assert np.array_equal(labels, same)
    return first, second, labels


def test_round_one_draws_and_flips_are_todays_bit_for_bit(two_predictions):
    index, cls = np.array([0, 1, 2, 12345, 2**40]), np.array([0, 3, 1, 9, 2])
    for draws in (uniforms(7, index, cls), uniforms(7, index, cls, round=1)):
        assert [float(u).hex() for u in draws] == TODAY_UNIFORMS
    first, _, labels = two_predictions
    for table in (
        compute_flips(first, labels, None, 1.0, 5).table,
        next_round(first, labels, [], 1.0, 5).table,
    ):
        assert (len(table), storage.flip_table_sha256(table)) == TODAY_FLIPS


def test_no_two_seed_round_pairs_share_a_key():
    seeds = [*range(64), 2**31 - 1, 2**ROUND_SEED_BITS - 1]
    rounds = [*range(1, 9), MAX_ROUND]
    keys = {(s, r): int(stream_key(s, r)[0]) for s, r in itertools.product(seeds, rounds)}
    # round 1 takes every seed below 2**63: its far end must not meet a later round's keys either
    keys.update({(s, 1): int(stream_key(s, 1)[0]) for s in (2**48, 2**62, 2**63 - 1)})
    assert len(set(keys.values())) == len(keys)
    # a naive key (seed + round) would make seed 0 in round 2 draw seed 1's round 1
    index, cls = np.arange(500), np.arange(500) % 7
    round_one = {s: uniforms(s, index, cls) for s in range(64)}
    for s, r in itertools.product(range(16), range(2, 6)):
        draws = uniforms(s, index, cls, round=r)
        assert not any(np.array_equal(draws, other) for other in round_one.values())
        assert np.all(draws != round_one[s])  # the round is its own stream, not a shifted copy of round 1's


def test_a_round_out_of_range_or_a_seed_too_large_for_rounds_is_refused():
    index = np.arange(3)
    for bad in (0, -1, MAX_ROUND + 1, True):
        with pytest.raises(ValueError, match="round must be an integer"):
            uniforms(0, index, index, round=bad)
    with pytest.raises(ValueError, match=r"below 2\*\*48 for LNR rounds >= 2"):
        uniforms(2**ROUND_SEED_BITS, index, index, round=2)
    assert uniforms(2**ROUND_SEED_BITS, index, index, round=1).shape == (3,)


def test_tables_compose_into_one_from_the_first_labels():
    first = FlipTable(np.array([1, 3, 5]), np.array([0, 0, 1]), np.array([2, 2, 2]))
    later = FlipTable(np.array([3, 4, 5]), np.array([2, 0, 2]), np.array([3, 1, 1]))
    total = first.then(later)  # 1: 0->2; 3: 0->2->3; 4: 0->1; 5: 1->2->1 is back where it began
    assert total.index.tolist() == [1, 3, 4] and total.source.tolist() == [0, 0, 0]
    assert total.target.tolist() == [2, 3, 1]
    labels = np.array([5, 0, 6, 0, 0, 1])
    np.testing.assert_array_equal(labels_after(labels, [first, later]), total.apply(np.arange(6), labels))
    assert same(cumulative([first, later]), total) and len(cumulative([])) == 0
    with pytest.raises(ValueError, match="sample 3"):
        first.then(FlipTable(np.array([3]), np.array([0]), np.array([1])))


def test_round_two_is_computed_from_round_one_labels(two_predictions):
    first, second, labels = two_predictions
    one = next_round(first, labels, [], 1.0, 5)
    after_one = labels_after(labels, [one.table])
    assert len(one.table) > 50 and not np.array_equal(after_one, labels)
    two = next_round(second, labels, [one.table], 1.0, 5)
    # statistics, counts and prior of round 1's labels, not the dataset's
    np.testing.assert_array_equal(two.stats.to_array(), accumulate_stats(second, after_one, 256).to_array())
    np.testing.assert_array_equal(two.moments.counts, np.bincount(after_one, minlength=12))
    assert not np.array_equal(two.moments.counts, np.bincount(labels, minlength=12))
    # its 'from' are round 1's labels, its draws round 2's
    np.testing.assert_array_equal(two.table.source, after_one[two.table.index])
    expected = compute_flips(second, after_one, None, 1.0, 5, round=2).table
    assert same(two.table, expected)
    assert not same(two.table, compute_flips(second, after_one, None, 1.0, 5).table)  # round 1's draws
    assert not same(two.table, compute_flips(second, labels, None, 1.0, 5, round=2).table)  # dataset's labels


def test_a_round_is_the_same_on_any_sharding(two_predictions):
    first, second, labels = two_predictions
    previous = [next_round(first, labels, [], 1.0, 5).table]
    whole = next_round(second, labels, previous, 1.0, 5).table
    current = labels_after(labels, previous)
    for workers in (2, 3, 7):
        bounds = np.linspace(0, labels.size, workers + 1).astype(int)
        shards = [slice(a, b) for a, b in itertools.pairwise(bounds)]
        stats = ClassStats.empty(12)
        for rows in shards[::-1]:  # merged in another order than the rows
            stats = stats.merge(accumulate_stats(second[rows], current[rows], 64))
        moments = stats.moments()
        parts = [flips_for_rows(second[rows], current[rows], np.arange(labels.size)[rows], moments, 1.0, 5, 32,
                                round=2) for rows in shards]  # fmt: skip
        assert same(FlipTable.concat(parts), whole)


def test_round_candidates_give_the_round_flips_at_any_higher_threshold(two_predictions):
    first, second, labels = two_predictions
    previous = [next_round(first, labels, [], 1.0, 5).table]
    found, moments = round_candidates(second, labels, previous, 0.5)
    for threshold in (0.5, 1.0, 1.7, 3.0):
        dense = next_round(second, labels, previous, threshold, 5).table
        assert same(flips_from_candidates(found, moments.prior, threshold, 5, 2), dense)
