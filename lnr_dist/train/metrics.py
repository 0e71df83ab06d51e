"""Evaluation metrics from mergeable sums: top-1, balanced accuracy, many/medium/few, ECE (15 bins), NLL.

Each worker accumulates sums over its shard; one all-reduce of the packed float64 array gives the global sums,
so W workers report exactly what one process computes over the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.dist import all_reduce_sum
from ..data.manifest import GROUPS, Manifest

ECE_BINS = 15


def sample_terms(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each sample adds to the metrics, on the CPU: hit (B,) float64 (1 if the top-1 class is the label),
    confidence (B,) float64 (the top softmax probability), ECE bin (B,) int64, NLL (B,) float64 in nats.

    The one definition the sums, the reliability diagrams and the bootstrap comparisons share. The softmax is
    taken in float32 (as the logits come from the model) and carried on in float64.
    """
    log_p = F.log_softmax(logits.detach().float(), dim=1).cpu().double()
    labels = labels.cpu()
    confidence, predicted = log_p.exp().max(dim=1)
    hit = (predicted == labels).double()
    # Bin b holds confidences in (b/15, (b+1)/15]; confidence >= 1/C > 0 so bin 0 is (0, 1/15].
    bins = torch.clamp(torch.ceil(confidence * ECE_BINS).long() - 1, 0, ECE_BINS - 1)
    return hit, confidence, bins, -log_p.gather(1, labels[:, None])[:, 0]


@dataclass
class MetricSums:
    """Per-class correct/count, NLL sum, and per-bin count/confidence/correct sums (float64)."""

    correct: np.ndarray
    count: np.ndarray
    nll: float
    bin_count: np.ndarray
    bin_confidence: np.ndarray
    bin_correct: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> MetricSums:
        z = np.zeros
        return cls(z(num_classes), z(num_classes), 0.0, z(ECE_BINS), z(ECE_BINS), z(ECE_BINS))

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: (B, C) logits and (B,) true labels."""
        labels = labels.cpu()
        hit, confidence, bins, nll = sample_terms(logits, labels)
        num_classes = self.correct.shape[0]
        self.correct += torch.bincount(labels, weights=hit, minlength=num_classes).numpy()
        self.count += torch.bincount(labels, minlength=num_classes).double().numpy()
        self.nll += float(nll.sum())
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS).double().numpy()
        self.bin_confidence += torch.bincount(bins, weights=confidence, minlength=ECE_BINS).numpy()
        self.bin_correct += torch.bincount(bins, weights=hit, minlength=ECE_BINS).numpy()

    def ece(self) -> float:
        """Expected calibration error in % (15 equal-width confidence bins, weighted by their samples)."""
        return 100.0 * float(np.sum(np.abs(self.bin_correct - self.bin_confidence)) / self.bin_count.sum())

    def to_array(self) -> np.ndarray:
        return np.concatenate(
            [self.correct, self.count, [self.nll], self.bin_count, self.bin_confidence, self.bin_correct]
        )

    @classmethod
    def from_array(cls, packed: np.ndarray, num_classes: int) -> MetricSums:
        c, b = num_classes, ECE_BINS
        return cls(
            packed[:c].copy(),
            packed[c : 2 * c].copy(),
            float(packed[2 * c]),
            packed[2 * c + 1 : 2 * c + 1 + b].copy(),
            packed[2 * c + 1 + b : 2 * c + 1 + 2 * b].copy(),
            packed[2 * c + 1 + 2 * b :].copy(),
        )

    def merged(self, other: MetricSums) -> MetricSums:
        return MetricSums.from_array(self.to_array() + other.to_array(), self.correct.shape[0])

    def all_reduced(self) -> MetricSums:
        """Global sums over every rank (a copy when not distributed)."""
        return MetricSums.from_array(all_reduce_sum(self.to_array()), self.correct.shape[0])


def compute_metrics(sums: MetricSums, manifest: Manifest) -> dict[str, Any]:
    """Percentages for accuracies, ECE in percent (as the field reports it), NLL in nats per sample.

    Group accuracies average the per-class accuracies of the classes in the group that have evaluation samples.
    """
    total = sums.count.sum()
    if total == 0:
        raise ValueError("no evaluation samples")
    present = sums.count > 0
    per_class = np.where(present, sums.correct / np.maximum(sums.count, 1), np.nan)
    metrics: dict[str, Any] = {
        "top1": 100.0 * sums.correct.sum() / total,
        "balanced_acc": 100.0 * float(np.nanmean(per_class)),
        "nll": sums.nll / total,
        "ece": sums.ece(),
        "num_samples": int(total),
    }
    for name in GROUPS:
        classes = [k for k in manifest.group_classes(name) if present[k]]
        metrics[name] = 100.0 * float(np.mean(per_class[classes])) if classes else float("nan")
    metrics["per_class_acc"] = [None if np.isnan(a) else 100.0 * float(a) for a in per_class]
    return metrics
