"""Shared fixtures; tests mirror the layout of lnr_dist/."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.synthetic import exponential_counts, long_tailed_predictions


@pytest.fixture(scope="session")
def long_tailed_set() -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 softmax and labels for 12 classes, 200 down to 3 samples, shuffled."""
    probs, labels = long_tailed_predictions(exponential_counts(12, 200, 3), seed=1)
    order = np.random.default_rng(7).permutation(labels.shape[0])
    return probs[order], labels[order]
