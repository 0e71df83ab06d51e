"""Losses and mixup: small modules with a few-line forward."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
