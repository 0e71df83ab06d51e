"""Dataset manifest: class counts and many/medium/few groups, computed once from the training split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# The ImageNet-LT / Places-LT convention (Liu et al., OLTR, CVPR 2019): many > 100, few < 20 training images.
MANY_ABOVE = 100
FEW_BELOW = 20
GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class Manifest:
    """What metrics, priors and samplers need to know about the training split. Arrays are (C,)."""

    num_classes: int
    num_samples: int
    class_counts: np.ndarray
    group: np.ndarray  # 0 many, 1 medium, 2 few

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_classes: int) -> Manifest:
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)
        group = np.where(counts > MANY_ABOVE, 0, np.where(counts < FEW_BELOW, 2, 1)).astype(np.int64)
        return cls(num_classes, int(counts.sum()), counts, group)

    def group_classes(self, name: str) -> np.ndarray:
        """Class indices of group `name` (many, medium or few)."""
        return np.flatnonzero(self.group == GROUPS.index(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "class_counts": self.class_counts.tolist(),
            "groups": {name: self.group_classes(name).tolist() for name in GROUPS},
            "group_thresholds": {"many_above": MANY_ABOVE, "few_below": FEW_BELOW},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        counts = np.asarray(data["class_counts"], dtype=np.int64)
        group = np.zeros(len(counts), dtype=np.int64)
        for i, name in enumerate(GROUPS):
            group[np.asarray(data["groups"][name], dtype=np.int64)] = i
        return cls(int(data["num_classes"]), int(data["num_samples"]), counts, group)
