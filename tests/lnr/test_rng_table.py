"""Counter-based draws and the flip table."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.lnr import FlipTable, uniforms


def test_uniforms_depend_only_on_their_key():
    index = np.arange(1000)
    cls = index % 7
    u = uniforms(3, index, cls)
    order = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(uniforms(3, index[order], cls[order]), u[order])
    np.testing.assert_array_equal(uniforms(3, index[10:20], cls[10:20]), u[10:20])
    assert not np.array_equal(uniforms(4, index, cls), u)
    assert not np.array_equal(uniforms(3, index, cls + 1), u)


def test_uniforms_look_uniform_and_independent():
    index = np.repeat(np.arange(20_000), 5)
    cls = np.tile(np.arange(5), 20_000)
    u = uniforms(0, index, cls)
    assert u.min() >= 0.0 and u.max() < 1.0
    hist = np.bincount((u * 20).astype(int), minlength=20) / u.size
    np.testing.assert_allclose(hist, 0.05, atol=0.003)
    grid = u.reshape(20_000, 5)
    assert abs(np.corrcoef(grid[:, 0], grid[:, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(grid[:-1, 0], grid[1:, 0])[0, 1]) < 0.03


def test_uniforms_reject_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        uniforms(-1, np.arange(3), np.arange(3))


def test_apply_changes_exactly_the_listed_samples():
    table = FlipTable(np.array([2, 5, 9]), np.array([0, 1, 0]), np.array([3, 2, 4]))
    indices = np.array([9, 1, 5, 2, 7])
    labels = np.array([0, 1, 1, 0, 2])
    np.testing.assert_array_equal(table.apply(indices, labels), [4, 1, 2, 3, 2])
    np.testing.assert_array_equal(FlipTable.concat([]).apply(indices, labels), labels)


def test_apply_refuses_a_table_for_other_data():
    table = FlipTable(np.array([2]), np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="sample 2"):
        table.apply(np.array([2]), np.array([1]))


def test_table_requires_sorted_unique_index():
    with pytest.raises(ValueError, match="sorted"):
        FlipTable(np.array([3, 1]), np.array([0, 0]), np.array([1, 1]))


def test_matrix_and_counts_after():
    table = FlipTable(np.array([0, 1, 2]), np.array([0, 0, 1]), np.array([2, 2, 2]))
    np.testing.assert_array_equal(table.flip_matrix(3), [[0, 0, 2], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(table.counts_after(np.array([5, 3, 1])), [3, 2, 4])


def test_flip_pairs_are_the_matrix_sparse_most_flips_first():
    table = FlipTable(np.arange(6), np.array([3, 0, 1, 0, 3, 1]), np.array([0, 2, 2, 2, 0, 0]))
    np.testing.assert_array_equal(table.flip_pairs(), [[0, 2, 2], [3, 0, 2], [1, 0, 1], [1, 2, 1]])
    assert table.flip_pairs().dtype == np.int64
    assert FlipTable(*(np.zeros(0, np.int64),) * 3).flip_pairs().shape == (0, 3)
