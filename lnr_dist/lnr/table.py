"""The flip table: which sample moves from which class to which, addressed by dataset index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlipTable:
    """Parallel (F,) int64 arrays, sorted by `index` (unique): sample `index[j]` moves `source[j]` -> `target[j]`.

    Saved as `flips.npz` with the keys `index`, `from`, `to`.
    """

    index: np.ndarray
    source: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        for name in ("index", "source", "target"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        if not self.index.shape == self.source.shape == self.target.shape or self.index.ndim != 1:
            raise ValueError("flip table arrays must be 1-D and of equal length")
        if self.index.size > 1 and not np.all(np.diff(self.index) > 0):
            raise ValueError("flip table indices must be sorted and unique")

    @classmethod
    def concat(cls, parts: list[FlipTable]) -> FlipTable:
        """Union of tables over disjoint samples, in any order."""
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0))
        index = np.concatenate([p.index for p in parts])
        order = np.argsort(index, kind="stable")
        return cls(
            index[order],
            np.concatenate([p.source for p in parts])[order],
            np.concatenate([p.target for p in parts])[order],
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def apply(self, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Labels of a batch after flipping: (B,) dataset indices and (B,) labels -> (B,) new labels.

        Raises ValueError when a flipped sample's label differs from the table's `from` (a table made for
        another split or dataset).
        """
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        pos = np.searchsorted(self.index, indices)
        pos_clipped = np.minimum(pos, max(len(self) - 1, 0))
        hit = (
            (pos < len(self)) & (self.index[pos_clipped] == indices)
            if len(self)
            else np.zeros_like(indices, bool)
        )
        if np.any(self.source[pos_clipped[hit]] != labels[hit]):
            bad = indices[hit][self.source[pos_clipped[hit]] != labels[hit]][0]
            raise ValueError(
                f"flip table does not match the data: sample {bad} has another label than its 'from'"
            )
        flipped = labels.copy()
        flipped[hit] = self.target[pos_clipped[hit]]
        return flipped

    def flip_matrix(self, num_classes: int) -> np.ndarray:
        """(C, C) counts of flips from row class to column class."""
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(matrix, (self.source, self.target), 1)
        return matrix

    def counts_after(self, counts: np.ndarray) -> np.ndarray:
        """Class counts after flipping, from the counts before."""
        num_classes = counts.shape[0]
        return (
            np.asarray(counts, dtype=np.int64)
            - np.bincount(self.source, minlength=num_classes)
            + np.bincount(self.target, minlength=num_classes)
        )
