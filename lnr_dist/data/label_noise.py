"""Synthetic label noise for a training split: pure functions of (clean labels, dataset indices, seed).

Three patterns, each keyed by dataset index so a sample's noisy label is the same whatever the worker count,
shard or order it is computed in:

- symmetric: with probability `rate` the label moves to one of the other C - 1 classes, uniformly
  (the "symmetric" / "uniform" noise of Patrini et al., "Making deep neural networks robust to label noise: a
  loss correction approach", CVPR 2017, with the true class excluded).
- asymmetric: with probability `rate` a sample of class c moves to targets[c], a fixed map (default
  c -> (c + 1) mod C, the "pair" flipping of Han et al., "Co-teaching", NeurIPS 2018); a class without a
  target (-1) keeps its labels, as in Patrini et al.'s CIFAR-10 map (truck -> automobile, bird -> airplane, ...).
- instance: the instance-dependent noise of Xia et al., "Part-dependent Label Noise: Towards Instance-dependent
  Label Noise", NeurIPS 2020, Appendix, Algorithm 2 ("instance-dependent label noise generation"), which the
  WANN evaluation uses: a per-sample flip rate q_i ~ N(rate, 0.1^2) truncated to [0, 1]; one projection
  w_c ~ N(0, 1)^(S x C) per class; for sample i of class y with features x_i (S,), p = x_i w_y with
  p_y = -inf, then the noisy label is y with probability 1 - q_i and class j != y with probability
  q_i softmax(p)_j. The features are the caller's (data/splits.py: the image's pixels in [0, 1] at
  data.label_noise.instance_side^2 x 3); samples that look alike under w_y are flipped alike.

Every per-sample draw is rng.uniforms(seed, index, slot) at class slots from NOISE_SLOT = 2^62 on, a range no
class index reaches, so for the same seed and index these draws never equal LNR's flip draws (slots 0..C-1).
The instance pattern's projections come from numpy Generators seeded with (INSTANCE_ENTROPY, seed, class):
one per class, so a shard draws only its classes and gets the same matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..lnr.rng import uniforms

PATTERNS = ("none", "symmetric", "asymmetric", "instance")
NOISE_SLOT = 2**62  # first class slot of rng.uniforms used here (LNR's flips use slots 0..C-1)
_FLIP, _TARGET, _NORMAL = 0, 1, 2  # slot offsets: flip or not, which class, normal draws (two per attempt)
INSTANCE_STD = 0.1  # Xia et al.'s std of the per-sample flip rate (norm_std = 0.1 in their experiments)
INSTANCE_ENTROPY = 0x4C4E524E4F495345  # "LNRNOISE": the projections' seed sequence is (this, seed, class)
_MAX_ATTEMPTS = 64  # truncated-normal rejection rounds; each keeps >= 1/2 of the mass (the mean is in [0, 1))


def _draw(seed: int, indices: np.ndarray, offset: int) -> np.ndarray:
    """(M,) float64 uniforms in [0, 1) keyed by (seed, index, NOISE_SLOT + offset)."""
    return uniforms(seed, indices, np.full(indices.shape, NOISE_SLOT + offset, dtype=np.int64))


def _check(labels: np.ndarray, indices: np.ndarray | None, num_classes: int, rate: float) -> tuple:
    labels = np.asarray(labels, dtype=np.int64)
    indices = (
        np.arange(labels.size, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    )
    if labels.ndim != 1 or indices.shape != labels.shape:
        raise ValueError(
            f"labels and indices must be (N,) arrays of one length, got {labels.shape}, {indices.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes})")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    return labels, indices


def symmetric_noise(
    labels: np.ndarray, num_classes: int, rate: float, seed: int, indices: np.ndarray | None = None
) -> np.ndarray:
    """Symmetric noise: each label moves with probability `rate` to a class drawn uniformly from the others.

    Args:
        labels: (N,) int64 clean labels in [0, num_classes). indices: (N,) dataset indices of those rows
            (default 0..N-1). rate: in [0, 1). seed: in [0, 2^63).
    Returns:
        (N,) int64 noisy labels; row m depends only on (seed, indices[m], labels[m]).
    """
    labels, indices = _check(labels, indices, num_classes, rate)
    flip = _draw(seed, indices, _FLIP) < rate
    # one of the other C - 1 classes: draw in [0, C - 1) and step over the true class
    other = np.minimum((_draw(seed, indices, _TARGET) * (num_classes - 1)).astype(np.int64), num_classes - 2)
    other += other >= labels
    return np.where(flip, other, labels)


def asymmetric_targets(num_classes: int, mapping: dict[int, int] | None = None) -> np.ndarray:
    """(C,) int64 target of each class: mapping[c] where given, -1 (keeps its labels) for the classes it leaves
    out; with no mapping, c -> (c + 1) mod C. Raises ValueError for a class outside [0, C) or c -> c."""
    if mapping is None:
        return (np.arange(num_classes, dtype=np.int64) + 1) % num_classes
    targets = np.full(num_classes, -1, dtype=np.int64)
    for source, target in mapping.items():
        for c in (source, target):
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"class {c} of the map {source} -> {target} is outside [0, {num_classes})")
        if int(source) == int(target):
            raise ValueError(f"the map sends class {source} to itself: leave it out to keep its labels")
        targets[int(source)] = int(target)
    return targets


def asymmetric_noise(
    labels: np.ndarray, targets: np.ndarray, rate: float, seed: int, indices: np.ndarray | None = None
) -> np.ndarray:
    """Asymmetric (class-conditional) noise: a label c moves to targets[c] with probability `rate`.

    Args:
        labels: (N,) int64 clean labels. targets: (C,) int64 from `asymmetric_targets` (-1: class kept).
        rate: in [0, 1). seed: in [0, 2^63). indices: (N,) dataset indices (default 0..N-1).
    Returns:
        (N,) int64 noisy labels; row m depends only on (seed, indices[m], labels[m]).
    """
    targets = np.asarray(targets, dtype=np.int64)
    labels, indices = _check(labels, indices, targets.size, rate)
    flip = (_draw(seed, indices, _FLIP) < rate) & (targets[labels] >= 0)
    return np.where(flip, targets[labels], labels)


def instance_flip_rates(rate: float, seed: int, indices: np.ndarray) -> np.ndarray:
    """Xia et al.'s per-sample flip rates: (M,) float64 draws of N(rate, INSTANCE_STD^2) truncated to [0, 1].

    Box-Muller on two keyed uniforms per attempt, rejecting draws outside [0, 1); attempt k of sample i uses
    slots 2 + 2k and 3 + 2k, so each sample's rate depends only on (seed, index). With the mean in [0, 1) an
    attempt is kept with probability >= 1/2; the few left after _MAX_ATTEMPTS (< 2^-64 each) take `rate`.
    """
    indices = np.asarray(indices, dtype=np.int64)
    q = np.full(indices.shape, rate, dtype=np.float64)
    pending = np.arange(indices.size)
    for attempt in range(_MAX_ATTEMPTS):
        if not pending.size:
            break
        u1 = _draw(seed, indices[pending], _NORMAL + 2 * attempt)
        u2 = _draw(seed, indices[pending], _NORMAL + 2 * attempt + 1)
        z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)  # 1 - u1 in (0, 1]: log finite
        draw = rate + INSTANCE_STD * z
        kept = (draw >= 0.0) & (draw <= 1.0)
        q[pending[kept]] = draw[kept]
        pending = pending[~kept]
    return q


def instance_projection(seed: int, cls: int, num_features: int, num_classes: int) -> np.ndarray:
    """Xia et al.'s w_cls: (S, C) float64 standard normal, from the Generator seeded (INSTANCE_ENTROPY, seed, cls)."""
    rng = np.random.default_rng([INSTANCE_ENTROPY, int(seed), int(cls)])
    return rng.standard_normal((num_features, num_classes))


def instance_noise(
    labels: np.ndarray,
    features: np.ndarray,
    num_classes: int,
    rate: float,
    seed: int,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """Instance-dependent noise (Xia et al., NeurIPS 2020, Algorithm 2; see the module docstring).

    Args:
        labels: (N,) int64 clean labels in [0, num_classes). features: (N, S) per-sample features (row m of the
            sample at indices[m]; data/splits.py gives pixels in [0, 1]). rate: the mean flip rate, in [0, 1).
        seed: in [0, 2^63). indices: (N,) dataset indices (default 0..N-1).
    Returns:
        (N,) int64 noisy labels; row m depends only on (seed, indices[m], labels[m], features[m]). The expected
        noise rate is the mean of N(rate, 0.1^2) truncated to [0, 1]: rate itself to 1e-3 for rate in
        [0.3, 0.7], above it nearer 0 (0.08 at rate 0.0), as in the reference.
    Cost: one (S, C) normal matrix per class present and N x S x C multiply-adds (ImageNet-LT at S = 3072:
        3.1e9 normals and 3.6e11 multiply-adds; lower data.label_noise.instance_side for large C).
    """
    labels, indices = _check(labels, indices, num_classes, rate)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != labels.size:
        raise ValueError(f"features must be (N, S) with N = {labels.size}, got {features.shape}")
    flip = _draw(seed, indices, _FLIP) < instance_flip_rates(rate, seed, indices)
    pick = _draw(seed, indices, _TARGET)
    noisy = labels.copy()
    for c in np.unique(labels[flip]):
        rows = np.flatnonzero(flip & (labels == c))
        logits = features[rows] @ instance_projection(seed, c, features.shape[1], num_classes)
        logits[:, c] = -np.inf  # Algorithm 2: the true class gets no share of the flipped mass
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        cumulative = np.cumsum(weights, axis=1)
        # inverse CDF of softmax(p): the first class whose cumulative share exceeds the uniform
        chosen = (cumulative <= pick[rows, None] * cumulative[:, -1:]).sum(axis=1)
        # a zero-weight class (the true one, or an underflow) is never picked: step to the next positive one
        chosen = np.minimum(chosen, num_classes - 1)
        noisy[rows] = np.where(
            weights[np.arange(rows.size), chosen] > 0, chosen, _first_positive(weights, chosen)
        )
    return noisy


def _first_positive(weights: np.ndarray, start: np.ndarray) -> np.ndarray:
    """(R,) the first column >= start[r] (else the last positive one) with weights[r, col] > 0."""
    cols = np.arange(weights.shape[1])
    later = (weights > 0) & (cols >= start[:, None])
    anywhere = weights > 0
    last = weights.shape[1] - 1 - np.argmax(anywhere[:, ::-1], axis=1)
    return np.where(later.any(axis=1), np.argmax(later, axis=1), last)


def noise_summary(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> dict[str, Any]:
    """What the noise did: num_samples, num_noisy, realised_rate (num_noisy / num_samples), and per class
    noisy_from (clean labels of class c that changed) and noisy_to (changed labels that became c), (C,) lists.

    clean, noisy: (N,) int64."""
    clean, noisy = np.asarray(clean, dtype=np.int64), np.asarray(noisy, dtype=np.int64)
    changed = clean != noisy
    return {
        "num_samples": int(clean.size),
        "num_noisy": int(changed.sum()),
        "realised_rate": float(changed.mean()) if clean.size else 0.0,
        "noisy_from": np.bincount(clean[changed], minlength=num_classes).tolist(),
        "noisy_to": np.bincount(noisy[changed], minlength=num_classes).tolist(),
    }


def noise_transitions(clean: np.ndarray, noisy: np.ndarray) -> list[list[int]]:
    """The non-zero entries of the (C, C) transition counts as [from, to, count] rows, sorted by (from, to);
    the diagonal (unchanged labels) left out. Sparse, as C = 8,142 (iNaturalist) makes a dense matrix 66 M cells."""
    clean, noisy = np.asarray(clean, dtype=np.int64), np.asarray(noisy, dtype=np.int64)
    changed = clean != noisy
    pairs, counts = np.unique(np.stack([clean[changed], noisy[changed]], axis=1), axis=0, return_counts=True)
    return [[int(a), int(b), int(n)] for (a, b), n in zip(pairs, counts, strict=True)]
