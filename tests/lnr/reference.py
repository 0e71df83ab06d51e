"""The LNR rule written plainly, one sample and one class at a time, from the paper's formulas.

It is deliberately independent of lnr_dist.lnr (float64 means/stds with NumPy, Python loops) except for the
uniform draws, which must be the same to compare decisions.
"""

from __future__ import annotations

import math

import numpy as np

from lnr_dist.lnr.rng import uniforms


def reference_stats(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: mean and population std of p_k over samples not labelled k, and the prior."""
    probs = probs.astype(np.float64)
    num_classes = probs.shape[1]
    mean, std = np.zeros(num_classes), np.zeros(num_classes)
    for k in range(num_classes):
        others = probs[labels != k, k]
        if others.size:
            mean[k], std[k] = others.mean(), others.std()
    counts = np.bincount(labels, minlength=num_classes)
    n_min, n_max = counts.min(), counts.max()
    prior = np.zeros(num_classes) if n_max == n_min else 1 - (counts - n_min) / (n_max - n_min)
    return mean, std, prior


def reference_rates(probs, labels, mean, std, prior, threshold):
    """Dense rates via a double loop; 0 where the class has no z-score."""
    num_samples, num_classes = probs.shape
    counts = np.bincount(labels, minlength=num_classes)
    rates = np.zeros((num_samples, num_classes))
    for i in range(num_samples):
        c = labels[i]
        for k in range(num_classes):
            if num_samples - counts[k] < 2 or std[k] == 0:
                continue
            z = (float(probs[i, k]) - mean[k]) / std[k]
            rates[i, k] = math.tanh(z - threshold) * max(prior[k] - prior[c], 0.0)
    return rates


def reference_flips(probs, labels, indices, threshold, seed, moments=None):
    """{index: (from, to)} from the plain loop; `moments` = (mean, std, prior) or computed here."""
    mean, std, prior = moments if moments is not None else reference_stats(probs, labels)
    rates = reference_rates(probs, labels, mean, std, prior, threshold)
    flips = {}
    for i in range(probs.shape[0]):
        best, best_rate = None, -1.0
        for k in range(probs.shape[1]):
            u = float(uniforms(seed, np.array([indices[i]]), np.array([k]))[0])
            if rates[i, k] > u and rates[i, k] > best_rate:  # strict '>' keeps the lowest k on ties
                best, best_rate = k, rates[i, k]
        if best is not None:
            flips[int(indices[i])] = (int(labels[i]), best)
    return flips
