"""The PyTorch loader: PIL + torchvision in a DataLoader, sharded by global rank like the DALI one."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.errors import UserError
from .decode import load_rgb
from .loader import Batch, BatchLoader
from .sampling import sampler_order, shard_of
from .splits import Split
from .transforms import STRONG_STREAM, ImageTransform, StrongTransform, sample_rng


class _Samples(Dataset):
    """Item (index, epoch) -> (image, label, index), or (None, path, index) for a skipped undecodable file; with
    a strong transform, image is the pair (weak, strong)."""

    def __init__(
        self,
        split: Split,
        transform: ImageTransform,
        seed: int,
        skip_corrupt: bool,
        strong: StrongTransform | None = None,
    ) -> None:
        self.split, self.transform, self.seed, self.skip_corrupt = split, transform, seed, skip_corrupt
        self.strong = strong

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path = self.split.full_path(index)
        try:
            rgb = load_rgb(path)  # the rule DALI decodes by, for every PIL mode
        except Exception as exc:  # any decode failure is about this one file; say which
            if self.skip_corrupt:
                return None, path, index
            raise UserError(
                f"{self.split.where(index)}: cannot decode image {path}: {exc} (fix or drop it: "
                "`lnr-dist data check --decode` lists every such image; data.skip_corrupt: true skips them)"
            ) from exc
        image = self.transform(rgb, sample_rng(self.seed, index, epoch))
        if self.strong is not None:
            image = (image, self.strong(rgb, sample_rng(self.seed, index, epoch, STRONG_STREAM)))
        return image, int(self.split.labels[index]), index


def _collate(items: list) -> Batch:
    kept = [item for item in items if item[0] is not None]
    skipped = [item[1] for item in items if item[0] is None]
    two_views = bool(kept) and isinstance(kept[0][0], tuple)
    weak = [item[0][0] if two_views else item[0] for item in kept]
    return Batch(
        torch.stack(weak) if kept else torch.zeros(0),
        torch.tensor([item[1] for item in kept], dtype=torch.int64),
        torch.tensor([item[2] for item in kept], dtype=torch.int64),
        skipped,
        torch.stack([item[0][1] for item in kept]) if two_views else None,
    )


class _EpochSampler(Sampler):
    def __init__(self, owner: TorchLoader) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.owner.epoch
        return iter([(int(i), epoch) for i in self.owner.shard_indices()])

    def __len__(self) -> int:
        return len(self.owner.shard_indices())


class TorchLoader(BatchLoader):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        transform = ImageTransform(self.cfg, train=self.spec.augment)
        strong = (
            None if self.spec.rand_augment is None else StrongTransform(transform, *self.spec.rand_augment)
        )
        dataset = _Samples(self.split, transform, self.spec.seed, self.cfg.skip_corrupt, strong)
        workers = self.cfg.num_threads
        self._loader = DataLoader(
            dataset,
            batch_size=self.spec.batch_size,
            sampler=_EpochSampler(self),
            num_workers=workers,
            collate_fn=_collate,
            # Not fork: jobs run inside threaded processes (Ray workers, gloo), and a forked child can inherit a
            # lock held by another thread and hang. Workers are kept across epochs to pay their start once.
            multiprocessing_context="forkserver" if workers > 0 else None,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def shard_indices(self) -> np.ndarray:
        """This rank's dataset indices for the current epoch, in reading order."""
        if self.spec.order == "sequential":
            order = np.arange(len(self.split), dtype=np.int64)
        else:
            order = sampler_order(
                self.split.labels, self.spec.order, self.spec.seed, self.epoch, self.spec.num_draws
            )
        return shard_of(order, self.ctx.rank, self.ctx.world_size, self.spec.pad)

    def __len__(self) -> int:
        return math.ceil(len(self.shard_indices()) / self.spec.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        for batch in self._loader:
            self.skipped += batch.skipped
            yield batch
