"""Oversampling of cached features to balanced classes with imbalanced-learn (the `resample` step of the smote
and adasyn methods, and of the binary task's comparison)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class NotApplicable(RuntimeError):
    """The method cannot run on this data (reported as n/a in the tables, not as a failure)."""


def oversample(
    features: np.ndarray, labels: np.ndarray, kind: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced (features (M, D) float32, labels (M,) int64) from (N, D) features and (N,) labels with `kind`
    (smote or adasyn, see those functions)."""
    return SAMPLERS[kind](features, labels, seed)


def _balance(
    features: np.ndarray, labels: np.ndarray, kind: str, make_sampler: Callable[[int], Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Oversample with `make_sampler(k)` (an imbalanced-learn sampler with k neighbours), k = min(5, smallest
    class - 1). A class with a single sample has no neighbour to interpolate with: that sample is duplicated
    first (so it is repeated). Raises NotApplicable when the sampler finds nothing to synthesise from."""
    counts = np.bincount(labels)
    single = np.flatnonzero(counts == 1)
    if single.size:
        rows = np.flatnonzero(np.isin(labels, single))
        features, labels = np.concatenate([features, features[rows]]), np.concatenate([labels, labels[rows]])
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    try:
        x, y = make_sampler(min(5, smallest - 1)).fit_resample(features.astype(np.float64), labels)
    except RuntimeError as exc:  # ADASYN: no minority sample has a neighbour of another class
        raise NotApplicable(f"{kind} is not applicable to these features ({str(exc).split('.')[0]})") from exc
    return x.astype(np.float32), y.astype(np.int64)


def smote(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE (Chawla et al., JAIR 2002): synthetic samples on segments to same-class neighbours."""
    from imblearn.over_sampling import SMOTE

    return _balance(features, labels, "smote", lambda k: SMOTE(k_neighbors=k, random_state=seed))


def adasyn(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ADASYN (He et al., IJCNN 2008): like SMOTE, more samples where a class's neighbours are of other classes."""
    from imblearn.over_sampling import ADASYN

    return _balance(features, labels, "adasyn", lambda k: ADASYN(n_neighbors=k, random_state=seed))


SAMPLERS = {"smote": smote, "adasyn": adasyn}
