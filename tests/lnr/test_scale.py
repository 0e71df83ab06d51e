"""The engine's memory does not grow with N x C where a block of rows would do (issue 18, flip engine at scale)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from lnr_dist.lnr import ClassStats, accumulate_stats, class_prior, random_flips


def traced_peak(func, *args) -> tuple[object, int]:
    """func(*args) and the peak bytes NumPy and Python allocated during it (tracemalloc sees NumPy's buffers)."""
    tracemalloc.start()
    try:
        result = func(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_from_chunk_works_in_small_blocks_and_sums_exactly():
    rng = np.random.default_rng(0)
    num_rows, num_classes = 20_000, 500
    probs = rng.dirichlet(np.ones(num_classes), size=num_rows).astype(np.float32)  # 40 MB
    labels = rng.integers(0, num_classes, num_rows)
    stats, peak = traced_peak(ClassStats.from_chunk, probs, labels)
    # One float64 copy of the rows is 80 MB; blocks of ~2 MiB keep every working array small.
    assert peak < 16 * 2**20, (
        f"from_chunk peaked at {peak / 2**20:.0f} MiB for {probs.nbytes / 2**20:.0f} MiB"
    )
    np.testing.assert_array_equal(stats.to_array(), accumulate_stats(probs, labels, chunk_rows=7).to_array())


def test_random_flips_never_compares_every_sample_with_every_class():
    rng = np.random.default_rng(1)
    num_rows, num_classes = 50_000, 2_000
    labels = rng.integers(0, num_classes, num_rows)
    prior = class_prior(np.bincount(labels, minlength=num_classes))
    _, peak = traced_peak(random_flips, labels, np.arange(num_rows), prior, 100, 3)
    assert peak < 8 * 2**20, f"random_flips peaked at {peak / 2**20:.0f} MiB (an (N, C) bool array is 95 MiB)"


def test_random_flips_moves_every_eligible_sample_to_a_rarer_class():
    rng = np.random.default_rng(2)
    counts = np.array([9, 9, 5, 5, 5, 2, 1])  # ties: equal priors are not rarer than each other
    labels = rng.permutation(np.repeat(np.arange(counts.size), counts))
    indices = np.arange(labels.size) * 2 + 5
    prior = class_prior(counts)
    eligible = indices[
        (prior[None, :] > prior[labels][:, None]).any(1)
    ]  # the rule written densely, on 36 rows
    table = random_flips(labels, indices, prior, eligible.size, seed=4)
    np.testing.assert_array_equal(table.index, eligible)
    assert np.all(prior[table.target] > prior[table.source])
    np.testing.assert_array_equal(table.source, labels[(table.index - 5) // 2])
    again = random_flips(labels, indices, prior, eligible.size, seed=4)
    np.testing.assert_array_equal(again.target, table.target)
