"""The space neighbours are searched in (neighbours/embed.py): training-split z-scores, PCA / LDA / filtered LDA."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.neighbours import fit_projection, projection_dim, unit_rows, zscore


def test_zscores_use_the_training_rows_statistics_only():
    train = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    other = np.array([[3.0, 7.0]], dtype=np.float32)
    z_train, z_other = zscore(train, other)
    std = np.std([1.0, 3.0, 5.0])  # ddof 0, as the reference
    np.testing.assert_allclose(z_train[:, 0], [-2 / std, 0.0, 2 / std], rtol=1e-6)
    # the constant feature keeps std 1: the other split's offset survives instead of dividing by zero
    assert z_train[:, 1].tolist() == [0.0, 0.0, 0.0] and z_other.tolist() == [[0.0, 2.0]]
    assert z_train.dtype == np.float32


def test_unit_rows_leave_zero_rows_alone():
    rows = unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("kind", "dim", "rows", "features", "classes", "expected"),
    [("pca", None, 1000, 512, 10, 200), ("pca", None, 50, 64, 10, 50), ("lda", None, 1000, 512, 10, 9),
     ("flda", None, 1000, 4, 10, 4), ("pca", 16, 1000, 512, 10, 16)],
)  # fmt: skip
def test_projection_sizes(kind, dim, rows, features, classes, expected):
    assert projection_dim(kind, dim, rows, features, classes) == expected


def test_a_projection_larger_than_the_fit_allows_is_refused():
    with pytest.raises(ValueError, match=r"lda gives at most 9 dims here"):
        projection_dim("lda", 10, 1000, 512, 10)
    with pytest.raises(ValueError, match="at least 2 classes"):
        projection_dim("flda", None, 100, 8, 1)


def test_filtered_lda_is_lda_on_the_kept_rows():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    train = (rng.normal(0.0, 1.0, (120, 6)) + labels[:, None] * np.array([3, 0, 1, 0, 0, 2])).astype(
        np.float32
    )
    keep = rng.random(120) < 0.6
    flda, info = fit_projection("flda", train, labels, keep=keep)
    lda_kept, _ = fit_projection("lda", train[keep], labels[keep])
    lda_all, _ = fit_projection("lda", train, labels)
    assert info == {"projection": "flda", "dim": 2, "fitted_rows": int(keep.sum())}
    np.testing.assert_allclose(flda(train), lda_kept(train), rtol=1e-5, atol=1e-5)
    assert not np.allclose(flda(train), lda_all(train), atol=1e-3)
    pca, info = fit_projection("pca", train, labels, dim=3)
    assert pca(train).shape == (120, 3) and pca(train).dtype == np.float32 and info["dim"] == 3
