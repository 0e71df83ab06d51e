"""CIFAR-10-LT / CIFAR-100-LT from the standard CIFAR python batches, written out as PNGs + split files.

Nothing is downloaded: put the extracted `cifar-10-batches-py/` (data_batch_1..5, test_batch) or
`cifar-100-python/` (train, test) folder on disk and point `--cifar` at it. The long-tailed training set keeps
the first n_c images of class c in file order (the MiSLAS/LDAM convention), with the exponential profile; the
balanced test set is the test split. The CIFAR-LT literature has no validation split and selects models on
test; here the last `val_per_class` training images of each class form a balanced validation split, disjoint
from train (only head classes, whose n_c would use every image, lose those few images from train). Written in
the ImageNet-LT layout, so every loader reads it the same way.

With `unlabeled_ratio` L > 0 an unlabelled pool (`CIFAR{C}_LT_pool.txt`, lnr_dist/data/pool.py) is drawn (seeded)
from the training images the long-tailed split left out (neither train nor val), up to L x the training count,
written under `train/` like the other training images, with its realised counts in `CIFAR{C}_LT_pool_counts.json`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import storage
from ..core.errors import UserError
from .pool import PoolProfile, draw_pool, write_pool_counts

_LAYOUTS = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def exponential_profile(n_max: int, imb_factor: float, num_classes: int) -> np.ndarray:
    """n_c = int(n_max * imb_factor ** (c / (C - 1))), c = 0..C-1."""
    exponents = np.arange(num_classes) / max(num_classes - 1, 1)
    return np.array([int(n_max * imb_factor**e) for e in exponents], dtype=np.int64)


def _read_batches(folder: Path, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(
                f"{path}: CIFAR batch not found. Nothing is downloaded here: extract the CIFAR python archive "
                f"so that {folder} holds {', '.join(names)}"
            )
        with open(path, "rb") as handle:
            # The official CIFAR distribution is a pickle of plain arrays and lists; read it as bytes.
            batch = pickle.load(handle, encoding="bytes")  # noqa: S301
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def make_cifar_lt(
    cifar: str | Path,
    out: str | Path,
    num_classes: int,
    imb_factor: float,
    val_per_class: int = 20,
    unlabeled_ratio: float = 0.0,
    pool_profile: PoolProfile = "balanced",
    seed: int = 0,
) -> dict[str, Path]:
    """Write `out/{train,test}/<class>/<i>.png` and `CIFAR{C}_LT_{train,val,test}.txt`; returns the split paths.

    With `unlabeled_ratio` > 0 also `CIFAR{C}_LT_pool.txt` and `CIFAR{C}_LT_pool_counts.json` (keys `pool`,
    `pool_counts`), drawn with `seed` (the labelled splits do not depend on it) in the profile `pool_profile`
    (pool.pool_counts). Raises UserError for another num_classes, a missing batch or a negative ratio.
    """
    if num_classes not in _LAYOUTS:
        raise UserError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    if not unlabeled_ratio >= 0.0:
        raise UserError(f"--unlabeled-ratio must be >= 0 (pool size / training size), got {unlabeled_ratio}")
    sub, train_names, test_names, label_key = _LAYOUTS[num_classes]
    folder = Path(cifar)
    if (folder / sub).is_dir():
        folder = folder / sub
    train_x, train_y = _read_batches(folder, train_names, label_key)
    test_x, test_y = _read_batches(folder, test_names, label_key)
    counts = exponential_profile(int(np.bincount(train_y).max()), imb_factor, num_classes)
    members = [np.flatnonzero(train_y == c) for c in range(num_classes)]
    kept = [min(int(counts[c]), len(m) - val_per_class) for c, m in enumerate(members)]
    keep = np.concatenate([m[:k] for m, k in zip(members, kept, strict=True)])
    held_out = np.concatenate([m[len(m) - val_per_class :] for m in members]) if val_per_class else keep[:0]
    parts = [
        ("train", "train", train_x, train_y, keep),
        ("val", "train", train_x, train_y, held_out),
        ("test", "test", test_x, test_y, np.arange(len(test_y))),
    ]
    draw = None
    if unlabeled_ratio > 0:
        left = [m[k : len(m) - val_per_class] for m, k in zip(members, kept, strict=True)]
        draw = draw_pool(left, kept, unlabeled_ratio, pool_profile, seed)
        parts.append(("pool", "train", train_x, train_y, draw.items))
    out = Path(out)
    prefix = f"CIFAR{num_classes}_LT"
    files = {}
    for split, folder_name, images, labels, picked in parts:
        lines = []
        for i in picked:
            relative = f"{folder_name}/{int(labels[i])}/{int(i):05d}.png"
            image = Image.fromarray(images[i])
            storage.write_with(out / relative, lambda handle, image=image: image.save(handle, format="PNG"))
            lines.append(f"{relative} {int(labels[i])}\n")
        files[split] = out / f"{prefix}_{split}.txt"
        storage.write_text(files[split], "".join(lines))
    if draw is not None:
        files["pool_counts"] = write_pool_counts(out / f"{prefix}_pool_counts.json", draw)
    return files
