"""The DALI loader: `fn.readers.file` over the split with shard_id = GLOBAL rank, CPU or mixed GPU decode.

The file reader has no notion of a dataset index, so it is handed each sample's index as its "label"; the true
label is looked up by index. Without CUDA the pipeline runs on the CPU (`device_id=None`, the only CPU-only
setting DALI 2.4 accepts); with CUDA, JPEG decoding is "mixed" (nvJPEG) on this process's local GPU.

Train order: for the random sampler the reader gets a seeded global permutation of the split and reshuffles
after every epoch (`shuffle_after_epoch`, same seed on every rank, so shards stay disjoint; the permutations
are DALI's, not sampling.instance_order's). A class-aware sampler (mean, reverse) draws a new global order
each epoch with sampling.sampler_order, the PyTorch loader's function, and the reader is rebuilt on this
rank's padded shard of it; so is a random order with more draws than samples (an unlabelled pool read for as
many steps as the labelled loader takes). DALI draws crops and flips from per-pipeline random streams: which
augmentation a sample gets depends on the shard layout, unlike the PyTorch loader, whose draws are keyed by
(seed, index, epoch).

A strong view (LoaderSpec.rand_augment, FixMatch) runs a second pipeline: the image is decoded once, cropped and
flipped twice (two independent draws), and the second crop goes through `nvidia.dali.auto_aug.rand_augment`
(n operations of magnitude m out of 31 bins, as torchvision's RandAugment; DALI's own operation set), which
needs `enable_conditionals=True`. The padded background and the fill of rotations and shifts are black (0), as
in the PyTorch path. (DALI 2.4's rand_augment calls two of its own deprecated `fn.experimental` aliases and
prints a DeprecationWarning for each once per process, ignoring warning filters: harmless.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from ..core.errors import UserError
from .check import image_problem
from .checked import checked_before, files_stamp, record_checked
from .loader import Batch, BatchLoader
from .sampling import CLASS_AWARE_SAMPLERS, sampler_order, shard_bounds, shard_of

READER = "Reader"


def _read(root, files, indices, shard_id, num_shards, shuffle):
    """The file reader of both pipelines: this shard's `files` (labelled with their dataset `indices`), reshuffled
    after each epoch with `shuffle`, else the shard's own files in order; the last batch padded."""
    return fn.readers.file(
        file_root=root,
        files=files,
        labels=indices,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_after_epoch=shuffle,
        stick_to_shard=not shuffle,
        pad_last_batch=True,
        name=READER,
    )


@pipeline_def(enable_conditionals=False)
def _pipeline(
    root,
    files,
    indices,
    shard_id,
    num_shards,
    shuffle,
    augment,
    padded,
    padding,
    size,
    resize,
    scale_min,
    mean,
    std,
    gpu,
):
    encoded, index = _read(root, files, indices, shard_id, num_shards, shuffle)
    decoder = "mixed" if gpu else "cpu"
    crop_x = crop_y = 0.5
    if augment and padded:
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=size)
        # A centred window larger than the image is filled with zeros: the padded canvas to crop from.
        images = fn.crop(images, crop=(size + 2 * padding, size + 2 * padding), out_of_bounds_policy="pad")
        crop_x, crop_y = fn.random.uniform(range=(0.0, 1.0)), fn.random.uniform(range=(0.0, 1.0))
        mirror = fn.random.coin_flip(probability=0.5)
    elif augment:
        images = fn.decoders.image_random_crop(
            encoded,
            device=decoder,
            output_type=types.RGB,
            random_area=[scale_min, 1.0],
            random_aspect_ratio=[3.0 / 4.0, 4.0 / 3.0],
        )
        images = fn.resize(images, resize_x=size, resize_y=size)
        mirror = fn.random.coin_flip(probability=0.5)
    else:
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=resize)
        mirror = 0
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        crop=(size, size),
        crop_pos_x=crop_x,
        crop_pos_y=crop_y,
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        mirror=mirror,
    )
    return images, index


def _crop_flip(images, padded, padding, size, scale_min):
    """One draw of the train augmentation on decoded (H, W, 3) uint8 images -> (size, size, 3) uint8."""
    if padded:
        images = fn.resize(images, resize_shorter=size)
        images = fn.crop(images, crop=(size + 2 * padding, size + 2 * padding), out_of_bounds_policy="pad")
        images = fn.crop(
            images,
            crop=(size, size),
            crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
            crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
        )
    else:
        images = fn.random_resized_crop(
            images,
            size=(size, size),
            random_area=[scale_min, 1.0],
            random_aspect_ratio=[3.0 / 4.0, 4.0 / 3.0],
        )
    return fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))


@pipeline_def(enable_conditionals=True)  # rand_augment picks its operations with conditionals
def _two_view_pipeline(
    root, files, indices, shard_id, num_shards, padded, padding, size, scale_min, mean, std, gpu, num_ops,
    magnitude,
):  # fmt: skip
    encoded, index = _read(root, files, indices, shard_id, num_shards, shuffle=False)
    images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
    weak = _crop_flip(images, padded, padding, size, scale_min)
    strong = rand_augment.rand_augment(
        _crop_flip(images, padded, padding, size, scale_min), n=num_ops, m=magnitude, fill_value=0
    )
    views = [
        fn.crop_mirror_normalize(
            view,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255.0 * m for m in mean],
            std=[255.0 * s for s in std],
        )
        for view in (weak, strong)
    ]
    return views[0], views[1], index


class DaliLoader(BatchLoader):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gpu = torch.cuda.is_available()
        self._iterator: DALIGenericIterator | None = None
        self._built_epoch = -1
        self._needs_reset = False
        self._checked = not self.cfg.dali_precheck

    def _check_files(self) -> None:
        """DALI 2.4's CPU decoder can crash the process (SIGSEGV) on an undecodable image instead of raising, so
        before the first pipeline each rank looks at its 1/world_size of the split (together: all of it, as
        shuffled epochs move every file through every rank) for truncated, empty or non-image files, and for
        images DALI refuses or reads as another picture than the PyTorch loader (`check.image_problem`)."""
        mine = range(self.ctx.rank, len(self.split), self.ctx.world_size)
        root, paths = str(self.split.root), self.split.paths
        files = [os.path.join(root, paths[i]) for i in mine]  # strings: Path objects cost more here
        stamp = files_stamp(files)
        if checked_before(stamp):  # the same files, unchanged, passed before (data/checked.py)
            self._checked = True
            return
        found = ((i, image_problem(file)) for i, file in zip(mine, files, strict=True))
        bad = [(i, reason) for i, reason in found if reason is not None]
        if bad:
            listed = "\n".join(f"{self.split.where(i)}: {why} ({self.split.full_path(i)})" for i, why in bad)
            raise UserError(
                f"{len(bad)} image(s) would stop the DALI loader or differ from what the PyTorch loader reads "
                f"(fix, convert or drop them, or use loader: torch):\n{listed}"
            )
        record_checked(stamp)
        self._checked = True

    def _reader_plan(self) -> tuple[np.ndarray, int, int, bool]:
        """(global or pre-sharded order, shard_id, num_shards, reshuffle) for the current epoch."""
        num = len(self.split)
        if self._predrawn:
            order = sampler_order(
                self.split.labels, self.spec.order, self.spec.seed, self.epoch, self.spec.num_draws
            )
            return shard_of(order, self.ctx.rank, self.ctx.world_size, pad=True), 0, 1, False
        if self.spec.order == "sequential":
            return np.arange(num), self.ctx.rank, self.ctx.world_size, False
        order = np.random.default_rng([self.spec.seed, 0, 2]).permutation(
            num
        )  # random: the reader reshuffles
        return order, self.ctx.rank, self.ctx.world_size, True

    @property
    def _predrawn(self) -> bool:
        """The order is drawn here each epoch (a class-aware sampler, or a set number of draws) and the reader
        rebuilt on this rank's shard of it."""
        return self.spec.order in CLASS_AWARE_SAMPLERS or self.spec.num_draws is not None

    def _pipeline_args(self, order: np.ndarray, shard_id: int, num_shards: int) -> dict:
        """What both pipelines take: batching, threads, device, seed, the files of `order` and this shard,
        crop and normalisation."""
        cfg = self.cfg
        return dict(
            batch_size=self.spec.batch_size,
            num_threads=max(cfg.num_threads, 1),
            device_id=self.ctx.local_rank if self.gpu else None,
            seed=self.spec.seed * 1000 + self.ctx.rank,
            root=self.split.root,
            files=[self.split.paths[int(i)] for i in order],
            indices=[int(i) for i in order],
            shard_id=shard_id,
            num_shards=num_shards,
            padded=cfg.train_crop == "padded",
            padding=cfg.crop_padding,
            size=cfg.image_size,
            scale_min=cfg.crop_scale_min,
            mean=cfg.mean,
            std=cfg.std,
            gpu=self.gpu,
        )

    def _build(self) -> DALIGenericIterator:
        if not self._checked:
            self._check_files()
        order, shard_id, num_shards, shuffle = self._reader_plan()
        cfg = self.cfg
        policy = LastBatchPolicy.FILL if self.spec.pad else LastBatchPolicy.PARTIAL
        if self.spec.rand_augment is not None:
            return self._build_two_views(order, shard_id, num_shards, policy)
        pipe = _pipeline(
            **self._pipeline_args(order, shard_id, num_shards),
            shuffle=shuffle,
            augment=self.spec.augment,
            resize=cfg.eval_resize,
        )
        pipe.build()
        return DALIGenericIterator(
            [pipe], ["images", "indices"], reader_name=READER, last_batch_policy=policy
        )

    def _build_two_views(
        self, order: np.ndarray, shard_id: int, num_shards: int, policy: LastBatchPolicy
    ) -> DALIGenericIterator:
        """The weak + strong pipeline (_two_view_pipeline) over `order`."""
        pipe = _two_view_pipeline(
            **self._pipeline_args(order, shard_id, num_shards),
            num_ops=self.spec.rand_augment[0],
            magnitude=self.spec.rand_augment[1],
        )
        pipe.build()
        return DALIGenericIterator(
            [pipe], ["images", "strong", "indices"], reader_name=READER, last_batch_policy=policy
        )

    def _epoch_iterator(self) -> DALIGenericIterator:
        # A class-aware order is drawn anew each epoch, so that reader is rebuilt; the others reset (and
        # reshuffle: random's permutations come from the reader's own shuffle_after_epoch).
        if self._iterator is None or (self._predrawn and self._built_epoch != self.epoch):
            self._iterator, self._built_epoch = self._build(), self.epoch
        elif self._needs_reset:
            self._iterator.reset()
        self._needs_reset = True
        return self._iterator

    def __len__(self) -> int:
        if self._predrawn or self.spec.pad:
            size = math.ceil(self.draws / self.ctx.world_size)
        else:
            start, stop = shard_bounds(len(self.split), self.ctx.rank, self.ctx.world_size)
            size = stop - start
        return math.ceil(size / self.spec.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        seen = np.zeros(len(self.split), dtype=bool)
        try:
            for outputs in self._epoch_iterator():  # building it already decodes the first batch
                images, strong = outputs[0]["images"], outputs[0].get("strong")
                indices = outputs[0]["indices"].reshape(-1).to(torch.int64).cpu()
                if not self.spec.pad:  # drop padding duplicates by index
                    fresh = ~torch.from_numpy(seen[indices.numpy()])
                    seen[indices.numpy()] = True
                    images, indices = images[fresh.to(images.device)], indices[fresh]
                labels = torch.from_numpy(self.split.labels[indices.numpy()])
                yield Batch(images, labels, indices, strong=strong)
        except RuntimeError as exc:
            if "decoders" not in str(exc):
                raise
            raise UserError(self._undecodable_report()) from exc

    def _undecodable_report(self) -> str:
        """DALI's decode errors do not say which file failed: find it (this rank's samples first, then all)."""
        order, shard_id, num_shards, _ = self._reader_plan()
        start, stop = shard_bounds(len(order), shard_id, num_shards)
        for candidates in (order[start:stop], np.arange(len(self.split))):
            found = [
                (int(i), image_problem(Path(self.split.full_path(int(i))), decode=True)) for i in candidates
            ]
            bad = [(i, why) for i, why in found if why is not None]
            if bad:
                listed = "\n".join(
                    f"{self.split.where(i)}: {why} ({self.split.full_path(i)})" for i, why in bad
                )
                return (
                    f"DALI could not decode {len(bad)} image(s) (fix, convert or drop them, or set loader: torch, "
                    f"with skip_corrupt: true to skip undecodable ones):\n{listed}"
                )
        return (
            f"{self.split.file}: DALI failed to decode an image that the PyTorch loader decodes; see the DALI "
            "error above, and try loader: torch"
        )
