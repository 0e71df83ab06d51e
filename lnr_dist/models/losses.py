"""Losses and mixup: small modules with a few-line forward.

A loss takes (logits (B, C), targets (B,) int64) and returns a scalar. Two optional capabilities, which the
trainer (train/engine.py, train/trainer.py) and the cached-features heads (features/heads.py) look for:
`EpochScheduled` losses change with training progress and are told the epoch before each one
(`set_loss_epoch`); a `FeatureLoss` also reads the penultimate features (forward(logits, targets, features)),
which the trainer asks the model for (Network.forward(images, return_features=True)) through the DDP wrapper.
FixMatch's consistency loss on unlabelled images (FixMatchConsistency) has its own signature: it reads the
logits of two views and the pool's dataset indices.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..lnr.rng import uniforms

SmoothingProfile = Literal["concave", "linear", "convex"]


def mixup(
    images: torch.Tensor, labels: torch.Tensor, alpha: float, generator: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): lam ~ Beta(alpha, alpha), images mixed with a permutation of the batch.

    Returns (mixed images, labels, permuted labels, lam); the loss is lam * L(y) + (1 - lam) * L(y_perm).
    """
    lam = float(generator.beta(alpha, alpha))
    perm = torch.from_numpy(generator.permutation(images.shape[0])).to(images.device)
    return lam * images + (1.0 - lam) * images[perm], labels, labels[perm], lam


def smoothing_per_class(
    counts: np.ndarray, head: float, tail: float, profile: SmoothingProfile
) -> np.ndarray:
    """Label-aware smoothing eps_c (MiSLAS, Zhong et al. 2021, Eq. 5), from `tail` (smallest) to `head` (largest).

    With x_c = (n_c - n_min) / (n_max - n_min): concave eps = tail + (head - tail) * sin(pi x / 2),
    linear eps = tail + (head - tail) * x, convex eps = tail + (head - tail) * (1 - cos(pi x / 2)).
    """
    counts = np.asarray(counts, dtype=np.float64)
    span = counts.max() - counts.min()
    x = np.zeros_like(counts) if span == 0 else (counts - counts.min()) / span
    shape = {"concave": np.sin(math.pi * x / 2), "linear": x, "convex": 1.0 - np.cos(math.pi * x / 2)}[
        profile
    ]
    return tail + (head - tail) * shape


class LabelAwareSmoothing(nn.Module):
    """loss = (1 - eps_y) * NLL(y) + eps_y * mean over classes of -log p (eps per target class)."""

    def __init__(self, epsilon: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("epsilon", torch.as_tensor(epsilon, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        eps = self.epsilon[target]
        nll = -log_p.gather(1, target[:, None]).squeeze(1)
        return ((1.0 - eps) * nll - eps * log_p.mean(1)).mean()


class CrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target)


class EpochScheduled(nn.Module):
    """A loss whose formula follows training progress. `set_epoch(epoch, epochs)` is called before every epoch:
    `epoch` 0-based, `epochs` the run's length; after a resume, with the epoch the run resumes at."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch, self.epochs = 0, 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        if not 0 <= epoch < epochs:
            raise ValueError(f"epoch must lie in [0, epochs) = [0, {epochs}), got {epoch}")
        self.epoch, self.epochs = epoch, epochs


def set_loss_epoch(loss: nn.Module, epoch: int, epochs: int) -> None:
    """Tell every EpochScheduled part of `loss` (itself or a wrapped loss) that epoch `epoch` of `epochs`
    starts; a loss without one is left alone."""
    for module in loss.modules():
        if isinstance(module, EpochScheduled):
            module.set_epoch(epoch, epochs)


class BiasCompensation(EpochScheduled):
    """Bias-compensation loss: logit-adjusted cross-entropy blended into plain cross-entropy over training.

    With the training class prior pi_c = n_c / N and a target prior t_c (uniform by default), the adjusted
    logits are z_c + log pi_c - log t_c (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
    Eq. 10 with tau = 1; with a uniform target, log t_c is a constant and the loss is their logit-adjusted
    loss). The loss is (1 - a) * CE(adjusted) + a * CE(z) with a = (epoch / epochs)^2, epoch 0-based: the first
    epoch trains on the adjusted loss alone and training ends close to plain cross-entropy, as the source
    repository's `compensated_loss` does (seed 002; it adds log t_c where Menon subtracts it, which is the same
    loss for the uniform target it uses). Means over the batch; logits are cast to float32.

    Args:
        class_counts: (C,) training images per class, all > 0.
        target_prior: (C,) positive weights of the test-time prior (normalised here); None = uniform.

    Raises:
        ValueError: a class without training images, or a target prior of another length or not positive.
    """

    def __init__(self, class_counts: np.ndarray, target_prior: np.ndarray | None = None) -> None:
        super().__init__()
        counts = np.asarray(class_counts, dtype=np.float64)
        target = np.ones_like(counts) if target_prior is None else np.asarray(target_prior, dtype=np.float64)
        if counts.ndim != 1 or (counts <= 0).any():
            raise ValueError(
                "bias compensation needs a (C,) count per class, every class with training images"
            )
        if target.shape != counts.shape or (target <= 0).any():
            raise ValueError(
                f"target_prior must hold {counts.size} positive values, got shape {target.shape}"
            )
        shift = np.log(counts / counts.sum()) - np.log(target / target.sum())
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))

    @property
    def plain_weight(self) -> float:
        """a = (epoch / epochs)^2: the weight of the plain cross-entropy this epoch."""
        return (self.epoch / self.epochs) ** 2

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, a = logits.float(), self.plain_weight
        return (1.0 - a) * F.cross_entropy(logits + self.shift, target) + a * F.cross_entropy(logits, target)


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(n, n) squared Euclidean distances between the rows of x (n, D), as |a|^2 + |b|^2 - 2 a.b (memory n^2,
    not the n^2 D of pairwise differences; rounding below zero clamped to 0)."""
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)


class RangeLoss(nn.Module):
    """Range loss (Zhang et al., "Range Loss for Deep Face Recognition with Long-Tailed Training Data", ICCV
    2017, Eq. 2-4) on a batch's features; squared Euclidean distances d.

    inter = max(margin - min over pairs of class centres present in the batch of d(centre_q, centre_r), 0)
    (0 when the batch holds one class); intra (when `intra`) = sum over the batch's classes with >= 2 samples of
    m / sum_{j<=m} 1 / d_j, the harmonic mean of the class's m = min(k, pairs) largest pairwise distances. A
    centre is the mean of the class's features in this batch (this worker's: see RangeLossConfig).

    forward(features (B, D) float, targets (B,) int64) -> inter + intra, a float32 scalar.
    """

    def __init__(self, margin: float, k: int, intra: bool) -> None:
        super().__init__()
        self.margin, self.k, self.intra = margin, k, intra

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        features = features.float()
        classes, inverse = torch.unique(target, return_inverse=True)
        loss = features.new_zeros(())
        if classes.numel() >= 2:
            members = F.one_hot(inverse, classes.numel()).to(features.dtype)  # (B, K)
            centres = (members.T @ features) / members.sum(0)[:, None]
            pairs = torch.triu_indices(classes.numel(), classes.numel(), 1, device=features.device)
            closest = squared_distances(centres)[pairs[0], pairs[1]].min()
            loss = loss + F.relu(self.margin - closest)
        if self.intra:
            for c in range(classes.numel()):
                rows = features[inverse == c]
                if rows.shape[0] < 2:
                    continue
                upper = torch.triu_indices(rows.shape[0], rows.shape[0], 1, device=features.device)
                distances = squared_distances(rows)[upper[0], upper[1]]
                largest = distances.topk(min(self.k, distances.numel())).values
                # identical features give d = 0, whose 1/d would turn the gradient to NaN
                loss = loss + largest.numel() / (1.0 / largest.clamp_min(1e-12)).sum()
        return loss


class FeatureLoss(nn.Module):
    """A loss that also reads the penultimate features: forward(logits (B, C), targets (B,) int64, features
    (B, D)) -> scalar."""


class WithRangeLoss(FeatureLoss):
    """`base`(logits, targets) + beta * RangeLoss(features, targets): stage 1 with the range loss
    (stage1.range_loss)."""

    def __init__(self, base: nn.Module, range_loss: RangeLoss, beta: float) -> None:
        super().__init__()
        self.base, self.range_loss, self.beta = base, range_loss, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.base(logits, target) + self.beta * self.range_loss(features, target)


# The gate's uniforms use lnr.rng's class coordinate for the epoch, offset past any class index, so that they
# never coincide with the draws LNR makes for (seed, index, class).
GATE_STREAM = 2**32


class ConsistencyTerms(NamedTuple):
    """loss: scalar float32; pseudo (U,) int64 pseudo-labels; confident (U,) bool (max q >= tau); kept (U,) bool
    (confident and through the gate: the samples the loss counts)."""

    loss: torch.Tensor
    pseudo: torch.Tensor
    confident: torch.Tensor
    kept: torch.Tensor


def gate_uniforms(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """(U,) float64 uniforms in [0, 1) keyed by (seed, epoch, dataset index): the same on any rank, batch or
    worker count (lnr.rng.uniforms with the class coordinate GATE_STREAM + epoch)."""
    indices = np.asarray(indices, dtype=np.int64)
    return uniforms(seed, indices, np.full(indices.shape, GATE_STREAM + epoch, dtype=np.int64))


class FixMatchConsistency(nn.Module):
    """FixMatch's unlabelled loss (Sohn et al., NeurIPS 2020, Eq. 4) with the source recipe's gate (seed 002).

    For U pool images: q = softmax(weak logits) (detached), pseudo = argmax q, confident = max q >= tau; a
    confident image is kept when u < keep[pseudo], u = gate_uniforms(seed, epoch, index); loss = sum over kept of
    CE(strong logits, pseudo) / U (divided by all U, as FixMatch averages over the whole mu x B batch).

    Args:
        tau: confidence threshold in (0, 1).
        keep: (C,) probability of keeping a confident pseudo-label of each class, in [0, 1]
            (data/sampling.py keep_probabilities; all ones = plain FixMatch).
        seed: the gate's seed (the experiment's).

    forward(weak_logits (U, C), strong_logits (U, C), indices (U,) int64 dataset indices of the pool, epoch
    int) -> ConsistencyTerms. U = 0 gives a zero loss.
    """

    def __init__(self, tau: float, keep: np.ndarray, seed: int) -> None:
        super().__init__()
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must lie in (0, 1), got {tau}")
        keep = np.asarray(keep, dtype=np.float64)
        if keep.ndim != 1 or keep.min() < 0 or keep.max() > 1:
            raise ValueError("keep must be a (C,) vector of probabilities")
        self.tau, self.seed = tau, seed
        self.register_buffer("keep", torch.as_tensor(keep, dtype=torch.float64))

    def forward(
        self, weak_logits: torch.Tensor, strong_logits: torch.Tensor, indices: torch.Tensor, epoch: int
    ) -> ConsistencyTerms:
        with torch.no_grad():
            confidence, pseudo = F.softmax(weak_logits.detach().float(), dim=1).max(dim=1)
            confident = confidence >= self.tau
            draws = gate_uniforms(self.seed, epoch, indices.cpu().numpy())
            kept = confident & (torch.from_numpy(draws).to(self.keep.device) < self.keep[pseudo])
        per_sample = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
        loss = (per_sample * kept).sum() / max(weak_logits.shape[0], 1)
        return ConsistencyTerms(loss, pseudo, confident, kept)
