"""One loader interface over DALI and PyTorch: batches of images, labels and dataset indices, sharded by GLOBAL
rank. `build_loader` picks the implementation from `DataConfig.loader`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..core.dist import RankContext
from .config import DataConfig
from .sampling import Sampler
from .splits import Split

Order = Literal["sequential", "random", "mean", "reverse"]  # sequential, or a sampler of data/sampling.py


@dataclass
class Batch:
    """images (B, 3, S, S) float32 normalised; labels (B,) int64 from the split file (an unlabelled pool's are
    all -1); indices (B,) int64; strong (B, 3, S, S) float32, the strongly augmented second view of the same
    samples when the spec asks for one (LoaderSpec.rand_augment), else None."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    strong: torch.Tensor | None = None


@dataclass(frozen=True)
class LoaderSpec:
    """How a job reads a split.

    order: sequential (split order) or a sampler (data/sampling.py): random (a fresh global permutation per
        epoch), mean (each class drawn equally often: stage 2's default) or reverse (rarer classes drawn more
        often); mean and reverse draw a new global order from the split's labels every epoch; augment:
        train-time augmentation (random resized crop + flip) or eval (resize + centre crop); pad: give every rank
        the same number of samples by repeating a few (training in lock-step) instead of exact shards
        (evaluation and inference, where every index is seen once); num_draws: samples per epoch over all ranks
        (None: the split's size; more than that with the random order reads whole permutations one after
        another, sampling.repeated_permutations); rand_augment: (n, m) adds a strong view to every batch
        (Batch.strong): another draw of the train augmentation followed by RandAugment with n operations of
        magnitude m out of 31 bins (torchvision's `RandAugment` on the PyTorch path, DALI's
        `auto_aug.rand_augment` on the DALI path), FixMatch's strong augmentation; `images` stay the weak view,
        the same images as without it.
    """

    batch_size: int
    order: Order = "sequential"
    augment: bool = False
    pad: bool = False
    seed: int = 0
    num_draws: int | None = None
    rand_augment: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.rand_augment is not None and not self.augment:
            raise ValueError("a strong view (rand_augment) needs the train augmentation (augment=True)")
        if self.num_draws is not None and (self.order == "sequential" or self.num_draws < 1):
            raise ValueError("num_draws needs a sampler order and must be >= 1")

    @classmethod
    def train(cls, batch_size: int, seed: int, sampler: Sampler = "random") -> LoaderSpec:
        return cls(batch_size, sampler, augment=True, pad=True, seed=seed)

    @classmethod
    def evaluate(cls, batch_size: int) -> LoaderSpec:
        return cls(batch_size)

    @classmethod
    def unlabeled(
        cls, batch_size: int, seed: int, num_draws: int, rand_augment: tuple[int, int]
    ) -> LoaderSpec:
        """An unlabelled pool read alongside a labelled loader (FixMatch): random order, `num_draws` samples per
        epoch over all ranks, weak (`images`) and strong (`strong`) views, padded shards."""
        return cls(batch_size, "random", augment=True, pad=True, seed=seed, num_draws=num_draws,
                   rand_augment=rand_augment)  # fmt: skip


class BatchLoader(ABC):
    """Iterate one epoch of this rank's shard; call set_epoch(e) before each epoch for a new order."""

    def __init__(self, cfg: DataConfig, split: Split, spec: LoaderSpec, ctx: RankContext) -> None:
        self.cfg, self.split, self.spec, self.ctx = cfg, split, spec, ctx
        self.epoch = 0
        self.skipped: list[str] = []  # files skipped as undecodable in the current epoch (skip_corrupt)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]: ...

    @abstractmethod
    def __len__(self) -> int:
        """Batches per epoch on this rank."""

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.split.labels[indices]

    @property
    def draws(self) -> int:
        """Samples per epoch over all ranks (before padding)."""
        return len(self.split) if self.spec.num_draws is None else self.spec.num_draws


def build_loader(cfg: DataConfig, split: Split, spec: LoaderSpec, ctx: RankContext) -> BatchLoader:
    if cfg.loader == "dali":
        from .dali_loader import DaliLoader

        return DaliLoader(cfg, split, spec, ctx)
    from .torch_loader import TorchLoader

    return TorchLoader(cfg, split, spec, ctx)
