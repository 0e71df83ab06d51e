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

    def _lookup(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B,) dataset indices -> (B,) bool listed here, (B,) their 'from' and (B,) 'to' (-1 where not listed)."""
        pos = np.minimum(np.searchsorted(self.index, indices), max(len(self) - 1, 0))
        hit = self.index[pos] == indices if len(self) else np.zeros(indices.shape, dtype=bool)
        source, target = np.full(indices.shape, -1, np.int64), np.full(indices.shape, -1, np.int64)
        source[hit], target[hit] = self.source[pos[hit]], self.target[pos[hit]]
        return hit, source, target

    def then(self, later: FlipTable) -> FlipTable:
        """One table for this one followed by `later` (iterated LNR: round r's flips after rounds 1..r-1).

        `later`'s 'from' are the labels this table leaves. The result maps the labels before this table to those
        after `later`; a sample that ends at its first label is left out. Raises ValueError when a sample of
        both tables has a `later` 'from' other than this table's 'to' (tables of different label sets).
        """
        index = np.union1d(self.index, later.index).astype(np.int64)
        in_first, first_from, first_to = self._lookup(index)
        in_later, later_from, later_to = later._lookup(index)
        clash = in_first & in_later & (later_from != first_to)
        if clash.any():
            raise ValueError(
                f"the later flip table's 'from' of sample {index[clash][0]} is not the earlier table's 'to'"
            )
        source = np.where(in_first, first_from, later_from)
        target = np.where(in_later, later_to, first_to)
        moved = source != target
        return FlipTable(index[moved], source[moved], target[moved])

    def flip_matrix(self, num_classes: int) -> np.ndarray:
        """(C, C) counts of flips from row class to column class."""
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(matrix, (self.source, self.target), 1)
        return matrix

    def flip_pairs(self) -> np.ndarray:
        """(P, 3) int64 rows (from, to, count) of the P class pairs with at least one flip, most flips first (ties
        by from, then to): the sparse flip_matrix, whose size follows the flips, not C^2 (8,142^2 for iNat)."""
        if not len(self):
            return np.zeros((0, 3), dtype=np.int64)
        pairs, counts = np.unique(np.stack([self.source, self.target], axis=1), axis=0, return_counts=True)
        order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))
        return np.column_stack([pairs[order], counts[order]]).astype(np.int64)

    def counts_after(self, counts: np.ndarray) -> np.ndarray:
        """Class counts after flipping, from the counts before."""
        num_classes = counts.shape[0]
        return (
            np.asarray(counts, dtype=np.int64)
            - np.bincount(self.source, minlength=num_classes)
            + np.bincount(self.target, minlength=num_classes)
        )
