"""Dataset manifest: class counts and many/medium/few groups, computed once from the training split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .splits import Split, noise_record

# The ImageNet-LT / Places-LT convention (Liu et al., OLTR, CVPR 2019): many > 100, few < 20 training images.
MANY_ABOVE = 100
FEW_BELOW = 20
GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class Manifest:
    """What metrics, priors and samplers need to know about the training split. Arrays are (C,).

    `class_counts` counts the labels training sees (the noisy ones under data.label_noise: what a loss prior, a
    sampler or LNR can know); `group` comes from the clean counts (`clean_counts`, None for clean labels), the
    dataset's own many/medium/few classes, so noise does not move a class between groups of the evaluation.
    `label_noise`: splits.noise_record of the training split (pattern, rate, realised_rate, ...), or None.
    """

    num_classes: int
    num_samples: int
    class_counts: np.ndarray
    group: np.ndarray  # 0 many, 1 medium, 2 few
    clean_counts: np.ndarray | None = None
    label_noise: dict[str, Any] | None = None

    @classmethod
    def from_labels(
        cls,
        labels: np.ndarray,
        num_classes: int,
        clean_labels: np.ndarray | None = None,
        label_noise: dict[str, Any] | None = None,
    ) -> Manifest:
        """From (N,) int64 training labels; the groups from `clean_labels` ((N,) int64) when given."""
        counts = _counts(labels, num_classes)
        clean = None if clean_labels is None else _counts(clean_labels, num_classes)
        group = _groups(counts if clean is None else clean)
        return cls(num_classes, int(counts.sum()), counts, group, clean, label_noise)

    @classmethod
    def of_split(cls, split: Split, num_classes: int) -> Manifest:
        """The manifest of a training split (splits.load_train_split): its labels, its clean labels' groups and
        its noise record."""
        return cls.from_labels(
            split.labels, num_classes, split.clean_labels, noise_record(split, num_classes)
        )

    def group_classes(self, name: str) -> np.ndarray:
        """Class indices of group `name` (many, medium or few)."""
        return np.flatnonzero(self.group == GROUPS.index(name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `clean_class_counts` and `label_noise` only when the training labels carry noise."""
        noisy = {}
        if self.clean_counts is not None:
            noisy = {"clean_class_counts": self.clean_counts.tolist(), "label_noise": self.label_noise}
        return {
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "class_counts": self.class_counts.tolist(),
            "groups": {name: self.group_classes(name).tolist() for name in GROUPS},
            "group_thresholds": {"many_above": MANY_ABOVE, "few_below": FEW_BELOW},
            **noisy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        counts = np.asarray(data["class_counts"], dtype=np.int64)
        group = np.zeros(len(counts), dtype=np.int64)
        for i, name in enumerate(GROUPS):
            group[np.asarray(data["groups"][name], dtype=np.int64)] = i
        clean = data.get("clean_class_counts")
        clean = None if clean is None else np.asarray(clean, dtype=np.int64)
        return cls(
            int(data["num_classes"]), int(data["num_samples"]), counts, group, clean, data.get("label_noise")
        )


def _counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)


def _groups(counts: np.ndarray) -> np.ndarray:
    """(C,) int64 group of each class from its (C,) training count: 0 many, 1 medium, 2 few."""
    return np.where(counts > MANY_ABOVE, 0, np.where(counts < FEW_BELOW, 2, 1)).astype(np.int64)
