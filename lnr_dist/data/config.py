"""The `data` section shared by every job's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are loaded.

    Split files hold `<path> <label>` lines with paths relative to `root`. `image_size` is the train crop and
    eval centre crop; eval first resizes the shorter side to `resize_size` (default image_size / 0.875, the
    224/256 convention). Train crops are Inception-style random resized crops (area in [crop_scale_min, 1]),
    or, with `train_crop: padded`, the CIFAR recipe: zero-pad by `crop_padding` and crop at random.
    `dali_precheck`: before the first DALI pipeline, look at the first and last bytes of every file (spread
    over the ranks) for empty, truncated or non-image files, which DALI's CPU decoder may crash on.
    `unlabeled_split`: an unlabelled pool beside the labelled set (FixMatch, mining), a split file in the same
    format whose images are in no other split and whose labels no training step sees (lnr_dist/data/pool.py);
    null for none.
    """

    root: str
    train_split: str
    val_split: str
    test_split: str
    num_classes: int
    loader: Literal["dali", "torch"] = "torch"
    image_size: int = 224
    resize_size: int | None = None
    train_crop: Literal["random_resized", "padded"] = "random_resized"
    crop_scale_min: float = 0.08
    crop_padding: int = 4
    num_threads: int = 2
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    skip_corrupt: bool = False
    dali_precheck: bool = True
    unlabeled_split: str | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std must be three numbers each, std > 0")
        if self.skip_corrupt and self.loader == "dali":
            raise ValueError(
                "skip_corrupt needs loader: torch (a DALI pipeline stops at an undecodable image); "
                "find such files first with `lnr-dist data check --config ... --decode`"
            )

    @property
    def eval_resize(self) -> int:
        return self.resize_size or round(self.image_size / 0.875)
