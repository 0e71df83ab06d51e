"""Synthetic long-tailed softmax outputs for the flip demo and the engine benchmark (not a dataset)."""

from __future__ import annotations

import numpy as np


def exponential_counts(num_classes: int, n_max: int, n_min: int) -> np.ndarray:
    """Class counts falling exponentially from n_max (class 0) to n_min (last class)."""
    ratio = n_min / n_max
    exponents = np.arange(num_classes) / max(num_classes - 1, 1)
    return np.maximum(np.floor(n_max * ratio**exponents + 1e-9).astype(np.int64), 1)


def long_tailed_predictions(
    counts: np.ndarray, seed: int, chunk_rows: int = 4096, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of an imperfect classifier on a long-tailed training set.

    Logits are Gaussian noise, a margin on the true class and a bias toward frequent classes (what a classifier
    trained on long-tailed data learns), so rare classes get occasional high probabilities on head samples.

    Returns:
        probs: (N, C) `dtype` rows summing to 1; labels: (N,) int64, sorted by class.
    """
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    num_classes = counts.shape[0]
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
    bias = 0.5 * np.log(counts / counts.max())
    probs = np.empty((labels.shape[0], num_classes), dtype=dtype)
    for start in range(0, labels.shape[0], chunk_rows):
        block = labels[start : start + chunk_rows]
        logits = rng.normal(0.0, 1.5, size=(block.shape[0], num_classes)).astype(np.float32) + bias
        logits[np.arange(block.shape[0]), block] += rng.normal(3.0, 1.5, size=block.shape[0])
        logits -= logits.max(1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(1, keepdims=True)
        probs[start : start + block.shape[0]] = logits
    return probs, labels
