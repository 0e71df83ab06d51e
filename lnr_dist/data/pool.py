"""Unlabelled pools: images beside a long-tailed labelled set, whose labels no training step may see.

A pool is a split file in the usual `<path> <label>` format (`data.unlabeled_split`), holding images that are in
no other split. It serves semi-supervised training (FixMatch) and minority-class mining, and the contract those
methods rely on is:

- `load_pool(cfg)` -> `Pool` is the training-facing view. `Pool.split` is a `Split` whose labels are all
  `UNLABELED` (-1): it goes to the loaders like any split (batches carry -1 as their labels and the dataset
  indices), and a loss fed those labels fails instead of learning from them. The view holds no pool label in
  memory: pickling it to a Ray worker ships none. Loading does read the label field, only to refuse a malformed
  file or a label outside [0, data.num_classes) before any work, and drops it.
- `Pool.annotate(indices)` is the annotator, the ONE place that returns pool labels: it reads the file again and
  gives the true labels of the requested dataset indices (positions in the pool file). Mining calls it for the
  K images it picked (the human who labels them) and to evaluate what it mined; nothing else may.
- A pool that shares a path with the train, val or test split is refused (`load_pool`, the trainer's preflight,
  `lnr-dist data check`), naming both lines.

Building a pool (`draw_pool`, used by `lnr-dist data make-mini` / `make-cifar --unlabeled-ratio L`): up to
L x the training count, drawn from the images the builder put in no other split, with its own class profile
(`pool_counts`), capped per class by what is left. The realised counts are written beside the split as
`<prefix>_pool_counts.json` (`write_pool_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core import storage
from ..core.errors import UserError
from .config import DataConfig
from .splits import Split, load_split, parse_split

UNLABELED = -1
PoolProfile = Literal["balanced", "same", "reversed"]
PROFILES: tuple[str, ...] = ("balanced", "same", "reversed")
KEY = "data.unlabeled_split"
# The pool is drawn from a random stream of its own (seeded by [seed, _STREAM]), so that adding a pool never
# changes the labelled splits a builder writes for the same seed.
_STREAM = 0x9001
_SHOWN = 5  # overlapping paths named in the one-line error


def pool_counts(
    train_counts: Sequence[int] | np.ndarray,
    available: Sequence[int] | np.ndarray,
    ratio: float,
    profile: PoolProfile = "balanced",
) -> np.ndarray:
    """How many pool images each class gets: (C,) int64, `min(wanted_c, available_c)`.

    With N = sum(train_counts), the wanted counts are `floor(ratio * N / C)` for every class (`balanced`),
    `floor(ratio * n_c)` (`same`: the training profile) or `floor(ratio * m_c)` (`reversed`), where m gives the
    class with the most training images the count of the one with the fewest, the second most the second fewest,
    and so on (ties in index order; for the sorted profiles of CIFAR-LT and the mini set: n reversed). A class
    short of images gets all it has left; the deficit is not moved to other classes, so the pool holds up to
    ratio x N images.

    Raises ValueError for a negative ratio, an unknown profile or mismatched lengths.
    """
    train = np.asarray(train_counts, dtype=np.int64)
    left = np.asarray(available, dtype=np.int64)
    if train.shape != left.shape or train.ndim != 1:
        raise ValueError(f"train_counts {train.shape} and available {left.shape} must be the same (C,) shape")
    if not ratio >= 0:
        raise ValueError(f"the pool ratio must be >= 0, got {ratio}")
    if profile == "balanced":
        wanted = np.full(train.shape, ratio * train.sum() / max(train.size, 1))
    elif profile == "same":
        wanted = ratio * train
    elif profile == "reversed":
        order = np.argsort(-train, kind="stable")  # most training images first
        mirrored = np.empty_like(train)
        mirrored[order] = train[order][::-1]
        wanted = ratio * mirrored
    else:
        raise ValueError(f"unknown pool profile {profile!r}: use one of {', '.join(PROFILES)}")
    # 1e-9 absorbs binary rounding (0.29 * 100 = 28.999...) so the count is what the decimal ratio says
    return np.minimum(np.floor(wanted + 1e-9).astype(np.int64), left)


@dataclass(frozen=True)
class PoolDraw:
    """A drawn pool: `items` (K,) the builder's image ids and `labels` (K,) int64, in the pool file's order
    (classes mixed); per class (C,) int64: `train` counts, `available` (in no other split), `counts` drawn."""

    ratio: float
    profile: str
    seed: int
    items: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    available: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """What `<prefix>_pool_counts.json` holds."""
        return {
            "ratio": self.ratio,
            "profile": self.profile,
            "seed": self.seed,
            "pool_size": int(self.counts.sum()),
            "train_size": int(self.train.sum()),
            "pool_counts": self.counts.tolist(),
            "train_counts": self.train.tolist(),
            "available": self.available.tolist(),
        }


def draw_pool(
    available: Sequence[np.ndarray],
    train_counts: Sequence[int] | np.ndarray,
    ratio: float,
    profile: PoolProfile = "balanced",
    seed: int = 0,
) -> PoolDraw:
    """Draw a pool from `available[c]` (1-D array of the image ids of class c that are in no other split).

    Each class gets `pool_counts(...)` ids drawn without replacement, then the pool is shuffled (mixed classes,
    like the published split files). Seeded by a stream of its own: the same (available, seed) give the same
    pool, and the caller's own random draws are untouched.
    """
    counts = pool_counts(train_counts, [len(a) for a in available], ratio, profile)
    rng = np.random.default_rng([seed, _STREAM])
    items = [rng.permutation(np.asarray(a))[:k] for a, k in zip(available, counts, strict=True)]
    labels = np.repeat(np.arange(len(available), dtype=np.int64), counts)
    flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    order = rng.permutation(flat.size)
    return PoolDraw(
        float(ratio), profile, int(seed), flat[order], labels[order],
        np.asarray(train_counts, dtype=np.int64), np.asarray([len(a) for a in available], dtype=np.int64), counts,
    )  # fmt: skip


def write_pool_counts(path: str | Path, draw: PoolDraw) -> Path:
    """Write `draw.to_dict()` as JSON (atomic); returns the path."""
    storage.write_json(path, draw.to_dict())
    return Path(path)


def pool_counts_table(summary: Mapping[str, Any]) -> str:
    """A `_pool_counts.json` (`PoolDraw.to_dict()`) as a text table: class, train, left (in no split), pool."""
    columns = [summary["train_counts"], summary["available"], summary["pool_counts"]]
    rows = [f"{'class':>5} {'train':>6} {'left':>6} {'pool':>6}"]
    rows += [f"{c:>5} {t:>6} {a:>6} {p:>6}" for c, (t, a, p) in enumerate(zip(*columns, strict=True))]
    rows.append(f"{'all':>5} {sum(columns[0]):>6} {sum(columns[1]):>6} {sum(columns[2]):>6}")
    head = f"pool: {summary['profile']}, up to {summary['ratio']:g} x {summary['train_size']} training images"
    return "\n".join([head, *rows])


@dataclass(frozen=True)
class Pool:
    """An unlabelled pool: `split` is the training-facing view (labels all UNLABELED; its `file` and `root` are
    where the annotator reads the labels back), `annotate` the annotator. See the module docstring."""

    split: Split
    num_classes: int

    def __len__(self) -> int:
        return len(self.split)

    def annotate(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The true labels (same shape as `indices`, int64) of pool samples given by dataset index.

        The one step that reads pool labels. Raises UserError when an index is outside [0, len(pool)) or when
        the pool file no longer lists the paths it listed at load time (edited in between).
        """
        wanted = np.asarray(indices, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= len(self)):
            raise UserError(
                f"{self.split.file}: pool indices must be in [0, {len(self)}), got {int(wanted.min())}.."
                f"{int(wanted.max())}"
            )
        labelled, problems = parse_split(self.split.file, self.split.root, self.num_classes, "pool")
        if problems or labelled.paths != self.split.paths:
            raise UserError(
                f"{self.split.file}: the pool file changed since it was loaded ({KEY}); load the pool again"
            )
        return labelled.labels[wanted]


def _overlap_error(pool: Split, others: Mapping[str, Split]) -> str | None:
    """One line naming the pool lines whose path is also in another split, or None."""
    where = {path: (name, split, i) for name, split in others.items() for i, path in enumerate(split.paths)}
    hits = [(i, where[path]) for i, path in enumerate(pool.paths) if path in where]
    if not hits:
        return None
    shown = "; ".join(
        f"{pool.where(i)}: {pool.paths[i]!r} is also in the {name} split ({split.where(j)})"
        for i, (name, split, j) in hits[:_SHOWN]
    )
    more = f" (and {len(hits) - _SHOWN} more)" if len(hits) > _SHOWN else ""
    return (
        f"{len(hits)} image(s) of the pool ({KEY}) are also in a labelled or test split: {shown}{more}; a pool "
        "holds only images in no other split"
    )


def load_pool(cfg: DataConfig, splits: Mapping[str, Split] | None = None) -> Pool:
    """The pool of `cfg.unlabeled_split`, checked and without its labels (see the module docstring).

    `splits` are the train / val / test splits already loaded by the caller (loaded here when None). Raises
    UserError, one message naming the file or key, when no pool is configured, the file is missing, a line is
    malformed or its label outside [0, cfg.num_classes) (splits.load_split's `file:line: reason` report), or a
    path is also in another split.
    """
    file = cfg.unlabeled_split
    if file is None:
        raise UserError(
            f"no unlabelled pool: set {KEY} to a '<path> <label>' file of images in no other split"
        )
    if not Path(file).is_file():
        raise UserError(
            f"{file}: pool file not found ({KEY}); `lnr-dist data make-mini` / `make-cifar` write one with "
            f"--unlabeled-ratio L, or set {KEY}=null for no pool"
        )
    split = load_split(file, cfg.root, cfg.num_classes, "pool")
    if splits is None:
        splits = {
            name: load_split(path, cfg.root, cfg.num_classes, name)
            for name, path in (("train", cfg.train_split), ("val", cfg.val_split), ("test", cfg.test_split))
        }
    reason = _overlap_error(split, splits)
    if reason is not None:
        raise UserError(reason)
    hidden = np.full(len(split), UNLABELED, dtype=np.int64)
    return Pool(replace(split, labels=hidden), cfg.num_classes)
