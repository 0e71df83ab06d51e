"""The space neighbours are searched in: features z-scored with the training split's statistics, optionally
projected (PCA, LDA or the filtered LDA of the WANN paper), optionally scaled to unit length (cosine).

Follows the reference pipeline (github.com/francescodisalvo05/wann-noisy-labels, src/utils/preprocessing.py:
`preprocessing_knn`, `dimensionality_reduction_pipeline`): z-scores from the training rows only (np.mean / np.std,
ddof 0; a constant feature, std 0, is left at 0 where the reference would divide by zero); PCA to 200 components by
default (the reference's fixed 200); LDA with scikit-learn's SVD solver to at most C - 1 components; filtered LDA
("FLDA" in the paper, the reference's `fLDA`): LDA fitted only on the training samples whose reliability k* is
below kmax (the caller passes that mask), then applied to every row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Projection = Literal["none", "pca", "lda", "flda"]
PROJECTIONS: tuple[str, ...] = ("none", "pca", "lda", "flda")
PCA_DIM = 200  # the reference's fixed PCA size


def zscore(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """(train, *others) z-scored with train's per-feature mean and std (float64 statistics, ddof 0); a feature
    with std 0 keeps std 1 (all its z-scores 0). Each (N_i, D) -> (N_i, D) float32."""
    train = np.asarray(train)
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return [((np.asarray(x, np.float64) - mean) / std).astype(np.float32) for x in (train, *others)]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length (a zero row stays zero). (N, D) -> (N, D) float32."""
    norms = np.linalg.norm(np.asarray(x, np.float64), axis=1, keepdims=True)
    return (np.asarray(x, np.float64) / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def projection_dim(kind: Projection, dim: int | None, rows: int, features: int, classes: int) -> int:
    """The output size: `dim`, or by default PCA_DIM for pca and C - 1 for lda / flda, within what the fit
    allows (pca: min(rows, features); lda: min(classes - 1, features), classes = those present in the rows it is
    fitted on). Raises ValueError when an explicit dim exceeds that, or when LDA sees a single class."""
    if kind in ("lda", "flda") and classes < 2:
        raise ValueError(f"{kind} needs training rows of at least 2 classes, got {classes}")
    limit = min(rows, features) if kind == "pca" else min(classes - 1, features)
    if dim is None:
        return min(PCA_DIM, limit) if kind == "pca" else limit
    if not 1 <= dim <= limit:
        raise ValueError(
            f"{kind} gives at most {limit} dims here ({rows} rows, {features} features, {classes} classes), got {dim}"
        )
    return dim


def fit_projection(
    kind: Projection,
    train: np.ndarray,
    labels: np.ndarray,
    dim: int | None = None,
    keep: np.ndarray | None = None,
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Fit `kind` on train (N, D) float32 with labels (N,) int64 (lda, flda; flda on the rows where `keep` (N,)
    bool is set) -> (transform: (M, D) -> (M, D') float32, what was fitted: kind, dim, rows fitted on)."""
    train, labels = np.asarray(train), np.asarray(labels)
    if kind == "none":
        return (lambda x: np.asarray(x, np.float32)), {"projection": "none", "dim": int(train.shape[1])}
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection {kind!r}; valid: {', '.join(PROJECTIONS)}")
    if kind == "flda":
        if keep is None:
            raise ValueError("flda needs the reliable rows (keep: k* < kmax)")
        train, labels = train[keep], labels[keep]
    classes = int(np.unique(labels).size)
    size = projection_dim(kind, dim, train.shape[0], train.shape[1], classes)
    if kind == "pca":
        from sklearn.decomposition import PCA

        # the covariance eigensolver: deterministic, no random state, fast for N >> D
        model = PCA(n_components=size, svd_solver="covariance_eigh").fit(train)
    else:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        model = LinearDiscriminantAnalysis(solver="svd", n_components=size).fit(train, labels)
    info = {"projection": kind, "dim": size, "fitted_rows": int(train.shape[0])}
    return (lambda x: model.transform(np.asarray(x)).astype(np.float32)), info
