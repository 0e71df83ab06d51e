"""The `data` section shared by every job's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .label_noise import asymmetric_targets

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LabelNoiseConfig:
    """`data.label_noise`: synthetic noise on the TRAINING labels (lnr_dist/data/label_noise.py has the
    patterns and their sources); validation and test stay clean, the many/medium/few groups come from the clean
    counts. Off when `pattern` is none or `rate` is 0.

    `rate`: the probability that a training label changes, in [0, 1) (instance: the mean of the per-sample
    rates). `seed`: the noise's own seed, the same for every training seed of `reproduce` (one noisy dataset,
    several training runs). `class_map` (asymmetric only): {class: class it is flipped to}; the classes it leaves
    out keep their labels; null: c -> (c + 1) mod C. `instance_side` (instance only): the features are each
    training image resized to instance_side x instance_side RGB, pixels in [0, 1] (32: CIFAR's own pixels, as
    Xia et al. use; decoding every training image once per process that loads the split).
    """

    pattern: Literal["none", "symmetric", "asymmetric", "instance"] = "none"
    rate: float = 0.0
    seed: int = 0
    class_map: dict[str, int] | None = None
    instance_side: int = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(
                f"rate must be in [0, 1) (the share of training labels changed), got {self.rate}"
            )
        if self.pattern == "none" and self.rate > 0:
            raise ValueError(
                f"rate {self.rate} with pattern none: set data.label_noise.pattern (symmetric | asymmetric | "
                "instance), or rate 0"
            )
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.class_map is not None:
            if self.pattern != "asymmetric":
                raise ValueError(f"class_map is read by pattern asymmetric only (pattern is {self.pattern})")
            bad = next((k for k in self.class_map if not str(k).strip().lstrip("-").isdigit()), None)
            if bad is not None:
                raise ValueError(f"class_map key {bad!r} is not a class index")
        if self.instance_side < 1:
            raise ValueError(f"instance_side must be >= 1, got {self.instance_side}")

    @property
    def active(self) -> bool:
        return self.pattern != "none" and self.rate > 0

    def mapping(self) -> dict[int, int] | None:
        """class_map with integer keys (YAML and the config loader give string keys), or None."""
        return None if self.class_map is None else {int(k): int(v) for k, v in self.class_map.items()}

    def describe(self) -> dict[str, Any]:
        """pattern, rate, seed (+ class_map / instance_side where the pattern reads it), for summaries."""
        extra = {
            "asymmetric": {"class_map": self.class_map},
            "instance": {"instance_side": self.instance_side},
        }.get(self.pattern, {})
        return {"pattern": self.pattern, "rate": self.rate, "seed": self.seed, **extra}


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
    null for none. `label_noise`: synthetic noise on the training labels (LabelNoiseConfig).
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
    label_noise: LabelNoiseConfig = field(default_factory=LabelNoiseConfig)

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
        if self.label_noise.class_map is not None:
            try:
                asymmetric_targets(self.num_classes, self.label_noise.mapping())
            except ValueError as exc:
                raise ValueError(
                    f"label_noise.class_map: {exc} (data.num_classes = {self.num_classes})"
                ) from exc

    @property
    def eval_resize(self) -> int:
        return self.resize_size or round(self.image_size / 0.875)
