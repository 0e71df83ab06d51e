"""Minority-class mining on an unlabelled pool (Singh et al., "Mining Minority-class Examples With Uncertainty
Estimates", MMM 2022, arXiv 2112.07835; the source notebook is summarised in shared/seeds/003).

The method, on cached stage-1 features (the backbone frozen):

1. a re-calibration layer (RC layer): a linear layer D -> C on the penultimate features, trained with
   cross-entropy (Adam, mining.lr, mining.recalibration_epochs; the notebook's `rc_epochs`) on the labelled
   training set; its outputs are the calibrated logits z (C,);
2. an autoencoder C -> 10 -> 9 -> 10 -> C (mining.hidden; ReLU between layers, none on the output, as logits
   can be negative; the notebook's AE_INV_TINY) trained with MSE on the labelled set's z for
   mining.autoencoder_epochs. It learns the activation patterns of the head classes, which dominate the
   labelled set. With mining.autoencoder_input `probabilities` it reconstructs softmax(z) instead: the paper's
   text says the calibrated logits, the released notebook code feeds softmax(z);
3. the decision module: the reconstruction error mean_c (z_c - z_hat_c)^2 of each pool image is its score; the
   mining.budget images with the largest scores are mined (ties by dataset index) and given to the annotator.

Baselines scored on the same pool: random picking (seeded), max-softmax uncertainty (lowest maximum probability
of the stage-1 classifier first) and entropy (highest entropy of the stage-1 classifier's softmax first): the
uncertainty scores the paper argues are distorted by the class imbalance.

The registry's `mining` and `mining_random` methods add the images picked by the method or at random, with the
labels the annotator gives them (`Pool.annotate`: the one read of pool labels), to the labelled training set of
a head trained on cached features (Stage2Method.extra_train). The pure parts (scores, ranking, precision@K) are
numpy functions; the two small models are torch on the CPU, seeded by the experiment seed without touching the
global random state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import UserError
from ..data.manifest import GROUPS, Manifest
from ..data.pool import KEY, load_pool
from ..data.splits import load_train_split
from ..experiment import ExperimentConfig, MiningConfig

# The ways to rank a pool, in the order every table lists them: the method, then the three baselines.
RANKERS = ("mining", "random", "max_softmax", "entropy")
# The classes mining should find: the medium- and few-shot groups of the labelled training split (data/manifest.py:
# at most 100 training images), the minority of an ImageNet-LT-style split.
TAIL_GROUPS = ("medium", "few")
# Random streams of their own ([seed, stream]), so that mining draws nothing from any other stream of the run.
_RANDOM_PICK, _RECALIBRATION, _AUTOENCODER = 0x3101, 0x3102, 0x3103


# ---------------------------------------------------------------------------------------------- pure functions
def reconstruction_error(z: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
    """The decision module's score: mean over classes of (z - z_hat)^2. z, z_hat: (N, C) -> (N,) float64."""
    z, z_hat = np.asarray(z, dtype=np.float64), np.asarray(z_hat, dtype=np.float64)
    if z.shape != z_hat.shape or z.ndim != 2:
        raise ValueError(f"z {z.shape} and z_hat {z_hat.shape} must be the same (N, C) shape")
    return ((z - z_hat) ** 2).mean(axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C) float64 probabilities (max-shifted for stability)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def max_softmax_scores(logits: np.ndarray) -> np.ndarray:
    """Max-softmax uncertainty: -max_c p_c, so the least confident image scores highest. logits: (N, C) float
    -> (N,) float64 in [-1, -1/C]."""
    return -_softmax(logits).max(axis=1)


def entropy_scores(logits: np.ndarray) -> np.ndarray:
    """Predictive entropy -sum_c p_c log p_c in nats, highest first. logits: (N, C) float -> (N,) float64 in
    [0, log C]."""
    p = _softmax(logits)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def random_scores(n: int, seed: int) -> np.ndarray:
    """Random picking as a score: (n,) float64 uniform in [0, 1) from the stream [seed, _RANDOM_PICK]; ranking by
    it is a seeded uniformly random order."""
    return np.random.default_rng([seed, _RANDOM_PICK]).random(n)


def rank(scores: np.ndarray) -> np.ndarray:
    """Dataset indices by descending score, ties by ascending index: (N,) float -> (N,) int64, a permutation.
    Raises ValueError for a score that is not finite (a diverged model must not pick arbitrarily)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be a 1-D array of finite numbers")
    return np.lexsort((np.arange(scores.size), -scores)).astype(np.int64)


def precision_at_k(order: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Fraction of the first k of `order` that are positive. order: (N,) int64 dataset indices (rank's output);
    positive: (N,) bool by dataset index (e.g. the image's true class is a tail class). Raises ValueError for k
    outside [1, N]."""
    if not 1 <= k <= len(order):
        raise ValueError(f"k must be in [1, {len(order)}], got {k}")
    return float(np.asarray(positive, dtype=bool)[np.asarray(order[:k])].mean())


def precision_recall(order: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of the positives after picking the first k of `order`, for k = 1..N: two (N,)
    float64 arrays. Recall is NaN everywhere when there is no positive."""
    hits = np.cumsum(np.asarray(positive, dtype=bool)[np.asarray(order)], dtype=np.float64)
    total = hits[-1] if hits.size else 0.0
    precision = hits / np.arange(1, hits.size + 1)
    recall = hits / total if total > 0 else np.full(hits.size, np.nan)
    return precision, recall


def group_members(manifest: Manifest) -> dict[str, np.ndarray]:
    """(C,) bool per group: many, medium, few, and tail (medium or few), from the labelled training counts."""
    members = {name: manifest.group == i for i, name in enumerate(GROUPS)}
    members["tail"] = np.isin(manifest.group, [GROUPS.index(g) for g in TAIL_GROUPS])
    return members


# ----------------------------------------------------------------------------------------- the two small models
def _fit(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn, cfg: MiningConfig, epochs: int,
         seed: int, stream: int) -> nn.Module:  # fmt: skip
    """Adam at cfg.lr over `epochs` shuffled passes of cfg.batch_size rows (order from [seed, stream])."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([seed, stream])
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            loss = loss_fn(model(x[rows]), target[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def _seeded(build, seed: int, stream: int) -> nn.Module:
    """A module built under torch.manual_seed((seed, stream)) without changing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.default_rng([seed, stream]).integers(2**31)))
        return build()


def autoencoder(num_classes: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """C -> hidden[0] -> ... -> C, ReLU after every layer but the last (its outputs reconstruct logits)."""
    widths = [num_classes, *hidden, num_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def fit_recalibration(
    features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: MiningConfig, seed: int
) -> nn.Linear:
    """The RC layer: nn.Linear(D, C) trained with cross-entropy on features (N, D) float32 and labels (N,)
    int64 (the labelled training set), Adam at cfg.lr for cfg.recalibration_epochs."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    layer = _seeded(lambda: nn.Linear(x.shape[1], num_classes), seed, _RECALIBRATION)
    return _fit(layer, x, y, F.cross_entropy, cfg, cfg.recalibration_epochs, seed, _RECALIBRATION)


def fit_autoencoder(z: np.ndarray, cfg: MiningConfig, seed: int) -> nn.Sequential:
    """The autoencoder (`autoencoder`) trained with MSE to reconstruct z (N, C) float32 (the labelled set's
    calibrated logits or probabilities), Adam at cfg.lr for cfg.autoencoder_epochs."""
    x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    model = _seeded(lambda: autoencoder(x.shape[1], cfg.hidden), seed, _AUTOENCODER)
    return _fit(model, x, x, F.mse_loss, cfg, cfg.autoencoder_epochs, seed, _AUTOENCODER)


def mining_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    pool_features: np.ndarray,
    num_classes: int,
    cfg: MiningConfig,
    seed: int,
) -> np.ndarray:
    """The method's score of each pool image: the autoencoder's reconstruction error of its calibrated logits.
    train_features (N, D) float32 and train_labels (N,) int64 train both models; pool_features (M, D) float32
    -> (M,) float64, row i = pool dataset index i. The autoencoder reads the calibrated logits or their softmax
    (cfg.autoencoder_input)."""
    recalibration = fit_recalibration(train_features, train_labels, num_classes, cfg, seed)

    @torch.no_grad()
    def calibrated(features: np.ndarray) -> torch.Tensor:
        z = recalibration(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return z.softmax(dim=1) if cfg.autoencoder_input == "probabilities" else z

    model = fit_autoencoder(calibrated(train_features).numpy(), cfg, seed)
    z_pool = calibrated(pool_features)
    with torch.no_grad():
        return reconstruction_error(z_pool.numpy(), model(z_pool).numpy())


def pool_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    pool_features: np.ndarray,
    classifier: Mapping[str, Any],
    cfg: MiningConfig,
    seed: int,
) -> dict[str, np.ndarray]:
    """Every ranker's score of each pool image, higher = picked first: RANKERS -> (M,) float64. The uncertainty
    baselines read the stage-1 classifier (`classifier["classifier.weight"]` (C, D), `["classifier.bias"]`
    (C,)) on the pool features (M, D)."""
    weight = np.asarray(classifier["classifier.weight"], dtype=np.float64)
    bias = np.asarray(classifier["classifier.bias"], dtype=np.float64)
    logits = np.asarray(pool_features, dtype=np.float64) @ weight.T + bias
    return {
        "mining": mining_scores(train_features, train_labels, pool_features, weight.shape[0], cfg, seed),
        "random": random_scores(len(pool_features), seed),
        "max_softmax": max_softmax_scores(logits),
        "entropy": entropy_scores(logits),
    }


# ------------------------------------------------------------------------------- the registry's hooks
def check_budget(cfg: ExperimentConfig) -> None:
    """Before any work: the pool loads (UserError naming data.unlabeled_split otherwise) and holds at least
    mining.budget images (one-line UserError naming mining.budget and the pool file otherwise)."""
    pool = load_pool(cfg.data)
    if cfg.mining.budget > len(pool):
        raise UserError(
            f"mining.budget ({cfg.mining.budget}) is larger than the pool ({len(pool)} images in "
            f"{cfg.data.unlabeled_split}, {KEY}): set mining.budget (or --budget) to at most {len(pool)}"
        )


def picked_report(picked: np.ndarray, labels: np.ndarray, manifest: Manifest, how: str) -> dict[str, Any]:
    """What results.json records of the annotated picks: picked (K,) int64 pool indices, labels (K,) int64 the
    annotator's; tail/medium/few precision of the picks by the labelled manifest's groups."""
    members = group_members(manifest)
    return {
        "picked_by": how,
        "count": int(picked.size),
        "pool_indices": picked.tolist(),
        "class_counts": np.bincount(labels, minlength=manifest.num_classes).tolist(),
        "precision": {g: float(members[g][labels].mean()) for g in ("tail", *TAIL_GROUPS)},
    }


def _annotated(
    cfg: ExperimentConfig,
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    picked: np.ndarray,
    how: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The picked pool images with the annotator's labels: their features (K, D) float32, labels (K,) int64, and
    the report (picked_report)."""
    pool = load_pool(cfg.data)
    truth = pool.annotate(picked)  # the annotator: the one read of pool labels
    # the groups of the training split's clean counts (labels["train"] may carry data.label_noise)
    manifest = Manifest.of_split(load_train_split(cfg.data), cfg.data.num_classes)
    return features["pool"][picked], truth, picked_report(picked, truth, manifest, how)


def _pool_features(cfg: ExperimentConfig, features: Mapping[str, np.ndarray]) -> np.ndarray:
    check_budget(cfg)
    if "pool" not in features:  # the cache extracts the pool whenever data.unlabeled_split is set
        raise UserError(f"no pool features: set {KEY} and extract the features again (lnr-dist stage2 does)")
    return features["pool"]


def mined_from_pool(
    cfg: ExperimentConfig, features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stage2Method.extra_train of `mining`: the mining.budget pool images the method ranks first, annotated.
    features: split -> (N, D) float32 (train and pool read); labels: split -> (N,) int64 (train read)."""
    pool = _pool_features(cfg, features)
    scores = mining_scores(
        features["train"], labels["train"], pool, cfg.data.num_classes, cfg.mining, cfg.seed
    )
    return _annotated(cfg, features, labels, rank(scores)[: cfg.mining.budget], "mining")


def random_from_pool(
    cfg: ExperimentConfig, features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Stage2Method.extra_train of `mining_random`: mining.budget pool images picked at random (the same seeded
    order as the `random` ranker of `lnr-dist mine`), annotated."""
    pool = _pool_features(cfg, features)
    return _annotated(
        cfg, features, labels, rank(random_scores(len(pool), cfg.seed))[: cfg.mining.budget], "random"
    )
