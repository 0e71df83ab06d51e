"""A real long-tailed image set built from scikit-learn's bundled digits, in the ImageNet-LT layout.

1,797 real 8x8 grey scans of handwritten digits (10 classes, ~180 each) are upscaled to RGB JPEGs. Validation
and test sets are balanced and disjoint from train; train follows the exponential profile
n_c = int(n_max * imb_factor ** (c / (C - 1))). Deterministic for a seed.

With `unlabeled_ratio` L > 0 an unlabelled pool (`Mini_LT_pool.txt`, lnr_dist/data/pool.py) is drawn from the
digits in no other split, up to L x the training count, and its realised class counts are written to
`Mini_LT_pool_counts.json`. The pool has a random stream of its own: the labelled splits and their images are the
same with or without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core import storage
from ..core.errors import UserError
from .cifar import exponential_profile
from .pool import PoolProfile, draw_pool, write_pool_counts

PREFIX = "Mini_LT"
NUM_CLASSES = 10
VAL_PER_CLASS = 15
TEST_PER_CLASS = 25


def _to_image(pixels: np.ndarray, size: int) -> Image.Image:
    grey = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


def _write_jpeg(path: Path, image: Image.Image) -> None:
    storage.write_with(path, lambda handle: image.save(handle, format="JPEG", quality=95))


def make_mini(
    out: str | Path,
    imb_factor: float = 0.01,
    seed: int = 0,
    size: int = 32,
    unlabeled_ratio: float = 0.0,
    pool_profile: PoolProfile = "balanced",
) -> dict[str, Path]:
    """Write images under `out/images/<class>/` and `Mini_LT_{train,val,test}.txt`; returns the split paths.

    With `unlabeled_ratio` > 0 also `Mini_LT_pool.txt` and `Mini_LT_pool_counts.json` (keys `pool`,
    `pool_counts`): the pool's profile is `pool_profile` (pool.pool_counts), capped per class by the digits
    left (about 180 per class minus val, test and train: the head class has 4 left at IF 0.01).
    Raises UserError for imb_factor outside (0, 1] or a negative ratio.
    """
    from sklearn.datasets import load_digits

    if not 0.0 < imb_factor <= 1.0:
        raise UserError(f"--imb-factor must be in (0, 1] (n_min / n_max), got {imb_factor}")
    if not unlabeled_ratio >= 0.0:
        raise UserError(f"--unlabeled-ratio must be >= 0 (pool size / training size), got {unlabeled_ratio}")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = Path(out)
    per_class = np.bincount(digits.target, minlength=NUM_CLASSES)
    n_max = int(per_class.min()) - VAL_PER_CLASS - TEST_PER_CLASS
    train_counts = exponential_profile(n_max, imb_factor, NUM_CLASSES)
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    left: list[np.ndarray] = []  # per class, the digits in no split: what a pool is drawn from
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        parts = {
            "val": members[:VAL_PER_CLASS],
            "test": members[VAL_PER_CLASS : VAL_PER_CLASS + TEST_PER_CLASS],
            "train": members[VAL_PER_CLASS + TEST_PER_CLASS :][: train_counts[c]],
        }
        left.append(members[VAL_PER_CLASS + TEST_PER_CLASS + train_counts[c] :])
        for split, picked in parts.items():
            for i in picked:
                relative = f"images/{c}/digit_{int(i):04d}.jpg"
                _write_jpeg(out / relative, _to_image(digits.images[i], size))
                rows[split].append((relative, c))
    files = {}
    for split, entries in rows.items():
        order = rng.permutation(len(entries))  # mixed classes, like the published split files
        text = "".join(f"{entries[i][0]} {entries[i][1]}\n" for i in order)
        files[split] = out / f"{PREFIX}_{split}.txt"
        storage.write_text(files[split], text)
    if unlabeled_ratio > 0:
        draw = draw_pool(left, train_counts, unlabeled_ratio, pool_profile, seed)
        lines = []
        for i, c in zip(draw.items, draw.labels, strict=True):
            relative = f"images/{c}/digit_{int(i):04d}.jpg"
            _write_jpeg(out / relative, _to_image(digits.images[i], size))
            lines.append(f"{relative} {c}\n")
        files["pool"] = out / f"{PREFIX}_pool.txt"
        storage.write_text(files["pool"], "".join(lines))
        files["pool_counts"] = write_pool_counts(out / f"{PREFIX}_pool_counts.json", draw)
    return files
