"""Temperature scaling (Guo et al. 2017) fitted on the validation split, with sums reduced over workers.

Each rank keeps its own validation logits; every NLL evaluation is one all-reduce of (sum, count), so all ranks
follow the same search and agree on the temperature. The search is golden-section on log T (NLL is unimodal in
T for a fixed set of logits).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.dist import all_reduce_sum
from ..data.manifest import Manifest
from .metrics import MetricSums, compute_metrics

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    local = (
        float(F.cross_entropy(logits.double() / temperature, labels, reduction="sum")) if len(labels) else 0.0
    )
    total, count = all_reduce_sum(np.array([local, float(len(labels))]))
    return total / max(count, 1.0)


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0, iterations: int = 60
) -> float:
    """The T in [low, high] minimising the validation NLL of softmax(logits / T)."""
    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = mean_nll(logits, labels, math.exp(c)), mean_nll(logits, labels, math.exp(d))
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = mean_nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = mean_nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2.0)


def metrics_at(
    logits: torch.Tensor, labels: torch.Tensor, manifest: Manifest, temperature: float = 1.0
) -> dict[str, Any]:
    """Global metrics of softmax(logits / T) over all ranks' logits."""
    sums = MetricSums.zeros(manifest.num_classes)
    if len(labels):
        sums.update(logits / temperature, labels)
    return compute_metrics(sums.all_reduced(), manifest)
