"""Image transforms of the PyTorch loader, with each sample's randomness drawn from (seed, index, epoch).

A sample's augmentation then does not depend on which worker or rank reads it, so inference with train-time
augmentation gives the same inputs for any number of workers. FixMatch's strong view (StrongTransform) draws
from a stream of its own, so adding it changes no weak view.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import RandAugment

from .config import DataConfig

RATIO = (3.0 / 4.0, 4.0 / 3.0)


WEAK_STREAM, STRONG_STREAM = 7, 8


def sample_rng(seed: int, index: int, epoch: int, stream: int = WEAK_STREAM) -> np.random.Generator:
    """The random stream of one sample's augmentation in one epoch (STRONG_STREAM: its strong view)."""
    return np.random.default_rng([seed, index, epoch, stream])


def random_resized_crop_box(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in `scale` and aspect ratio in RATIO (Inception crop);
    falls back to the central crop at the nearest allowed ratio after 10 tries, as torchvision does."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ImageTransform:
    """PIL image -> normalised (3, S, S) float tensor; train: random resized crop + flip, eval: resize + centre."""

    def __init__(self, cfg: DataConfig, train: bool) -> None:
        self.size = cfg.image_size
        self.resize = cfg.eval_resize
        self.scale = (cfg.crop_scale_min, 1.0)
        self.padded = cfg.train_crop == "padded"
        self.padding = cfg.crop_padding
        self.mean, self.std = list(cfg.mean), list(cfg.std)
        self.train = train

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        return self.finish(self.augment(image, rng))

    def augment(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The geometric part: a (S, S) PIL image (random crop + flip when training, resize + centre crop
        else)."""
        if self.train and self.padded:
            image = TF.resize(image, self.size, antialias=True) if min(image.size) != self.size else image
            image = TF.center_crop(image, [self.size + 2 * self.padding] * 2)  # zero padding all round
            top, left = (int(v) for v in rng.integers(0, 2 * self.padding + 1, size=2))
            image = TF.crop(image, top, left, self.size, self.size)
        elif self.train:
            top, left, h, w = random_resized_crop_box(rng, image.width, image.height, self.scale)
            image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        else:
            image = TF.center_crop(TF.resize(image, self.resize, antialias=True), [self.size, self.size])
        if self.train and rng.random() < 0.5:
            image = TF.hflip(image)
        return image

    def finish(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) float32, normalised by the config's mean and std."""
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)


class StrongTransform:
    """FixMatch's strong view (Sohn et al., NeurIPS 2020, Sec. 2.3): the train augmentation (its own draw),
    then torchvision's `RandAugment` with `num_ops` operations of `magnitude` out of 31 bins, then normalised.

    n = 2, m = 10 by default (stage2.fixmatch.randaugment): the strong augmentation of the PyTorch FixMatch
    re-implementation (kekmodel/FixMatch-pytorch, dataset/cifar.py, `RandAugmentMC(n=2, m=10)` after flip and
    crop); torchvision's and DALI's 31 bins put m on the [0, 30] scale of the RandAugment re-implementation the
    source recipe uses (ildoonet/pytorch-randaugment, seed 002). Unlike FixMatch's own RandAugment, the
    magnitude is fixed and no Cutout follows. torchvision draws the operations from torch's global generator:
    they are drawn with that generator seeded from `rng` and restored afterwards (fork_rng), so the view depends
    only on (seed, index, epoch) like the weak one.
    """

    def __init__(self, weak: ImageTransform, num_ops: int, magnitude: int) -> None:
        if not weak.train:
            raise ValueError("the strong view builds on the train augmentation")
        self.weak = weak
        self.rand_augment = RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=31)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = self.weak.augment(image, rng)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(rng.integers(0, 2**63 - 1)))  # the CPU stream only
            image = self.rand_augment(image)
        return self.weak.finish(image)
