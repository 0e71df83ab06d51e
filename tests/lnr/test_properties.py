"""Property tests (hypothesis): invariances hold for any small long-tailed input."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lnr_dist.lnr import ClassStats, FlipTable, accumulate_stats, binary_flips, compute_flips, flips_for_rows


@st.composite
def problems(draw):
    """Random softmax rows (float32) with random labels; every class may be tiny or missing."""
    num_classes = draw(st.integers(2, 6))
    num_samples = draw(st.integers(2, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.0, 0.5, 3.0]))
    logits = rng.normal(0, scale, size=(num_samples, num_classes))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(draw(st.sampled_from([np.float16, np.float32])))
    weights = rng.dirichlet(np.ones(num_classes) * 0.5)
    labels = rng.choice(num_classes, size=num_samples, p=weights)
    threshold = draw(st.floats(-3, 3, allow_nan=False))
    return probs, labels, threshold, draw(st.integers(0, 2**40))


def tables_equal(a: FlipTable, b: FlipTable) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("index", "source", "target"))


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(1, 9), st.integers(1, 4))
def test_invariant_to_chunks_order_and_shards(problem, chunk_rows, parts):
    probs, labels, threshold, seed = problem
    indices = np.arange(labels.shape[0])
    whole = compute_flips(probs, labels, indices, threshold, seed)
    assert np.all(np.isfinite(whole.moments.mean)) and np.all(np.isfinite(whole.moments.std))
    order = np.random.default_rng(chunk_rows).permutation(labels.shape[0])
    shards = np.array_split(order, parts)
    stats = ClassStats.empty(probs.shape[1])
    for shard in shards:
        stats = stats.merge(accumulate_stats(probs[shard], labels[shard], chunk_rows))
    assert np.array_equal(stats.to_array(), whole.stats.to_array())
    moments = stats.moments()
    tables = [
        flips_for_rows(probs[s], labels[s], indices[s], moments, threshold, seed, chunk_rows) for s in shards
    ]
    assert tables_equal(FlipTable.concat(tables), whole.table)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_flips_go_to_valid_rarer_classes_and_decrease_with_threshold(problem):
    probs, labels, threshold, seed = problem
    result = compute_flips(probs, labels, None, threshold, seed)
    prior, valid = result.moments.prior, result.moments.valid
    assert np.all(prior[result.table.target] > prior[result.table.source])
    assert np.all(valid[result.table.target])
    np.testing.assert_array_equal(result.table.source, labels[result.table.index])
    higher = compute_flips(probs, labels, None, threshold + 0.5, seed)
    assert len(higher.table) <= len(result.table)
    assert set(higher.table.index.tolist()) <= set(result.table.index.tolist())


@settings(max_examples=100, deadline=None)
@given(
    st.integers(3, 80), st.floats(0.05, 0.5), st.floats(-2, 3), st.integers(0, 2**31), st.integers(0, 2**31)
)
def test_binary_equals_multiclass(num_samples, minority_share, threshold, seed, data_seed):
    rng = np.random.default_rng(data_seed)
    num_minority = max(1, int(num_samples * minority_share))
    labels = np.r_[np.zeros(num_samples - num_minority, np.int64), np.ones(num_minority, np.int64)]
    q = rng.random(num_samples).astype(np.float32)
    binary = binary_flips(q, labels, None, threshold, seed)
    multi = compute_flips(np.stack([1 - q, q], axis=1), labels, None, threshold, seed).table
    assert tables_equal(binary, multi)
