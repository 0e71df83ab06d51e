"""Train-pipeline throughput: DALI (CPU mode here, mixed decode with a GPU) vs the PyTorch loader.

Run: .venv/bin/python benchmarks/bench_loader.py [--images 320] [--epochs 3] [--threads 2]
Generates 256x256 JPEGs, reads them with the train pipeline (decode, random resized crop to 224, flip,
normalise) at batch 32, with the same number of threads (DALI) / worker processes (PyTorch), one warm-up epoch
then timed epochs. Last line: dali_vs_torch=<x> (images/s ratio).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lnr_dist.core.dist import RankContext
from lnr_dist.data.config import DataConfig
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.splits import load_split


def write_images(root: Path, count: int, size: int = 256) -> Path:
    """Smooth random colour images (photo-like JPEG sizes), 10 classes."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        noise = rng.integers(0, 24, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(np.clip(np.asarray(image, np.int16) + noise - 12, 0, 255).astype(np.uint8))
        relative = f"img/{i % 10}/{i:05d}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative, quality=90)
        lines.append(f"{relative} {i % 10}\n")
    (root / "train.txt").write_text("".join(lines))
    return root / "train.txt"


def rate(loader_name: str, root: Path, split_file: Path, threads: int, epochs: int, batch: int) -> float:
    cfg = DataConfig(
        root=str(root),
        train_split=str(split_file),
        val_split=str(split_file),
        test_split=str(split_file),
        num_classes=10,
        loader=loader_name,
        image_size=224,
        num_threads=threads,
    )
    split = load_split(split_file, root, 10)
    loader = build_loader(cfg, split, LoaderSpec.train(batch, seed=0), RankContext())
    for _ in loader:  # warm-up epoch: worker start, pipeline build, page cache
        pass
    seen, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for batch_ in loader:
            seen += batch_.images.shape[0]
    elapsed = time.perf_counter() - start
    print(
        f"{loader_name:>5}: {seen / elapsed:8.1f} images/s ({seen} images, {epochs} epochs, {threads} threads)"
    )
    return seen / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split_file = write_images(root, args.images)
        torch_rate = rate("torch", root, split_file, args.threads, args.epochs, args.batch)
        dali_rate = rate("dali", root, split_file, args.threads, args.epochs, args.batch)
    print(f"dali_vs_torch={dali_rate / torch_rate:.2f}")


if __name__ == "__main__":
    main()
