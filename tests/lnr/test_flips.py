"""The engine against the plain per-sample loop, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.lnr import (
    ClassStats,
    FlipTable,
    accumulate_stats,
    binary_flips,
    candidates_for_rows,
    class_list,
    compute_flips,
    empty_classes,
    flip_rates,
    flips_from_candidates,
)

from .reference import reference_flips, reference_rates, reference_stats


def as_dict(table: FlipTable) -> dict[int, tuple[int, int]]:
    return {int(i): (int(a), int(b)) for i, a, b in zip(table.index, table.source, table.target, strict=True)}


def assert_same_table(a: FlipTable, b: FlipTable) -> None:
    for name in ("index", "source", "target"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("threshold", [0.5, 1.5, 3.0])
def test_matches_plain_loop(long_tailed_set, threshold):
    probs, labels = long_tailed_set
    indices = np.arange(labels.shape[0]) * 3 + 11  # dataset positions need not be 0..N-1
    result = compute_flips(probs, labels, indices, threshold, seed=5)
    mean, std, prior = reference_stats(probs, labels)
    np.testing.assert_allclose(result.moments.mean, mean, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(result.moments.std, std, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(result.moments.prior, prior)
    np.testing.assert_allclose(
        flip_rates(probs, labels, result.moments, threshold),
        reference_rates(probs, labels, mean, std, prior, threshold),
        rtol=1e-7,
        atol=1e-12,
    )
    assert len(result.table) > 0
    assert as_dict(result.table) == reference_flips(probs, labels, indices, threshold, seed=5)


def test_same_decisions_as_loop_given_engine_moments(long_tailed_set):
    probs, labels = long_tailed_set
    indices = np.arange(labels.shape[0])
    result = compute_flips(probs, labels, indices, 1.0, seed=0)
    m = result.moments
    assert as_dict(result.table) == reference_flips(probs, labels, indices, 1.0, 0, (m.mean, m.std, m.prior))


def test_chunk_size_does_not_matter(long_tailed_set):
    probs, labels = long_tailed_set
    baseline = compute_flips(probs, labels, None, 1.0, seed=3)
    for chunk_rows in (1, 7, 100, 10_000):
        other = compute_flips(probs, labels, None, 1.0, seed=3, chunk_rows=chunk_rows)
        assert_same_table(baseline.table, other.table)
        np.testing.assert_array_equal(baseline.stats.to_array(), other.stats.to_array())


def test_sample_order_does_not_matter(long_tailed_set):
    probs, labels = long_tailed_set
    indices = np.arange(labels.shape[0])
    baseline = compute_flips(probs, labels, indices, 1.0, seed=3)
    order = np.random.default_rng(0).permutation(labels.shape[0])
    shuffled = compute_flips(probs[order], labels[order], indices[order], 1.0, seed=3)
    assert_same_table(baseline.table, shuffled.table)
    np.testing.assert_array_equal(baseline.moments.std, shuffled.moments.std)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_shards_merge_to_the_same_stats_and_flips(long_tailed_set, parts):
    probs, labels = long_tailed_set
    indices = np.arange(labels.shape[0])
    whole = compute_flips(probs, labels, indices, 1.0, seed=9)
    shards = np.array_split(np.random.default_rng(parts).permutation(labels.shape[0]), parts)
    stats = ClassStats.empty(probs.shape[1])
    for shard in reversed(shards):  # merge order differs from the single pass on purpose
        stats = stats.merge(accumulate_stats(probs[shard], labels[shard], chunk_rows=13))
    np.testing.assert_array_equal(stats.to_array(), whole.stats.to_array())
    moments = stats.moments()
    tables = [
        flips_from_candidates(
            candidates_for_rows(probs[s], labels[s], indices[s], moments, 1.0, chunk_rows=17),
            moments.prior,
            1.0,
            9,
        )
        for s in shards
    ]
    assert_same_table(FlipTable.concat(tables), whole.table)


@pytest.mark.parametrize("threshold", [0.0, 0.7, 2.0, 4.0])
def test_candidates_at_t_min_give_dense_flips_for_higher_thresholds(long_tailed_set, threshold):
    probs, labels = long_tailed_set
    indices = np.arange(labels.shape[0])
    moments = accumulate_stats(probs, labels, 64).moments()
    candidates = candidates_for_rows(probs, labels, indices, moments, t_min=0.0, chunk_rows=64)
    assert len(candidates) < probs.size / 4
    dense = compute_flips(probs, labels, indices, threshold, seed=2)
    assert_same_table(flips_from_candidates(candidates, moments.prior, threshold, seed=2), dense.table)


def test_threshold_below_t_min_is_refused(long_tailed_set):
    probs, labels = long_tailed_set
    moments = accumulate_stats(probs, labels, 64).moments()
    candidates = candidates_for_rows(probs, labels, np.arange(labels.shape[0]), moments, 1.0, 64)
    with pytest.raises(ValueError, match="below the candidates' t_min"):
        flips_from_candidates(candidates, moments.prior, 0.5, seed=0)


def test_flips_only_move_to_rarer_classes_and_keep_the_total(long_tailed_set):
    probs, labels = long_tailed_set
    result = compute_flips(probs, labels, None, 0.5, seed=1)
    prior = result.moments.prior
    assert np.all(prior[result.table.target] > prior[result.table.source])
    after = result.table.counts_after(result.moments.counts)
    assert after.sum() == labels.shape[0]
    assert result.table.flip_matrix(probs.shape[1]).sum() == len(result.table)


def test_seed_changes_flips_and_same_seed_repeats(long_tailed_set):
    probs, labels = long_tailed_set
    a = compute_flips(probs, labels, None, 1.0, seed=1).table
    b = compute_flips(probs, labels, None, 1.0, seed=1).table
    c = compute_flips(probs, labels, None, 1.0, seed=2).table
    assert_same_table(a, b)
    assert as_dict(a) != as_dict(c)


def test_equal_counts_give_zero_prior_and_no_flips():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=40).astype(np.float32)
    labels = np.repeat(np.arange(4), 10)
    result = compute_flips(probs, labels, None, -5.0, seed=0)
    np.testing.assert_array_equal(result.moments.prior, 0.0)
    assert len(result.table) == 0


def test_degenerate_classes_get_no_flips_and_no_nan():
    # Class 2 has constant p over the others (std 0); class 3 labels all but one sample (one 'other').
    probs = np.array([[0.5, 0.2, 0.1, 0.2], [0.2, 0.5, 0.1, 0.2], [0.2, 0.2, 0.1, 0.5], [0.1, 0.1, 0.1, 0.7]])
    labels = np.array([3, 3, 3, 0])
    result = compute_flips(probs.astype(np.float32), labels, None, -10.0, seed=0)
    assert not result.moments.valid[2] and not result.moments.valid[3]
    assert np.all(np.isfinite(result.moments.mean)) and np.all(np.isfinite(result.moments.std))
    rates = flip_rates(probs, labels, result.moments, -10.0)
    assert np.all(np.isfinite(rates))
    assert not np.isin(result.table.target, [2, 3]).any()
    only_one_other = compute_flips(probs[:2].astype(np.float32), np.array([0, 1]), None, -10.0, 0)
    assert not only_one_other.moments.valid.any()
    assert len(only_one_other.table) == 0


def test_float16_input_gives_finite_results(long_tailed_set):
    probs, labels = long_tailed_set
    half = probs.astype(np.float16)
    result = compute_flips(half, labels, None, 1.0, seed=0)
    mean, std, _ = reference_stats(half, labels)
    np.testing.assert_allclose(result.moments.std, std, rtol=1e-9)  # float16 is exact in fixed point
    assert len(result.table) > 0


def test_binary_variant_equals_two_class_engine():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(300, dtype=np.int64), np.ones(30, dtype=np.int64)]
    q = rng.beta(np.where(labels == 1, 5, 1), np.where(labels == 1, 2, 6)).astype(np.float32)
    probs = np.stack([1 - q, q], axis=1)
    indices = rng.permutation(1000)[: labels.shape[0]]
    for threshold in (0.0, 1.0, 2.0):
        binary = binary_flips(q, labels, indices, threshold, seed=8)
        multi = compute_flips(probs, labels, indices, threshold, seed=8).table
        assert len(binary) > 0
        assert_same_table(binary, multi)
        assert np.all(binary.source == 0) and np.all(binary.target == 1)


def test_binary_refuses_minority_zero():
    with pytest.raises(ValueError, match="majority"):
        binary_flips(np.full(3, 0.5), np.array([1, 1, 0]), None, 0.0, 0)


def test_empty_classes_are_listed_with_runs_as_ranges():
    counts = np.array([4, 0, 2, 0, 0, 0, 7, 0])
    assert empty_classes(counts).tolist() == [1, 3, 4, 5, 7]
    assert class_list(empty_classes(counts)) == "1, 3-5, 7"
    assert class_list(np.array([], dtype=np.int64)) == ""
