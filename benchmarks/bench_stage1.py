"""Stage-1 training throughput on Ray Train vs the bare model step, side by side in one run.

Run: .venv/bin/python benchmarks/bench_stage1.py [--images 256] [--epochs 3] [--arch resnet10] [--loader torch]
The real loop (Ray Train worker, loader with augmentation, mixup, SGD step, metric bookkeeping) trains on
generated 256px JPEGs cropped to 224; its steady-state rate is the train images/s of the epochs after the first
(the run's own metrics.csv; Ray start-up, loader start-up and evaluation are outside it and printed apart). The
bare rate is forward + backward + SGD step of the same network on in-memory tensors with the same batch size and
threads. Last line: train_vs_bare=<x>.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch
from bench_loader import write_images  # noqa: E402  (benchmarks/ is the script folder)

from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, RayConfig, TrainConfig
from lnr_dist.models.network import ModelConfig, build_model
from lnr_dist.train.trainer import fit


def bare_rate(arch: str, batch: int, threads: int, steps: int = 6) -> float:
    torch.set_num_threads(threads)
    model = build_model(ModelConfig(arch=arch), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step warms up allocators and kernels
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--loader", default="torch", choices=("torch", "dali"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split = write_images(root, args.images)
        small = root / "eval.txt"
        small.write_text("".join(split.read_text().splitlines(keepends=True)[: args.batch]))
        cfg = ExperimentConfig(
            data=DataConfig(
                root=str(root), train_split=str(split), val_split=str(small), test_split=str(small), num_classes=10,
                loader=args.loader, image_size=224, num_threads=1,
            ),
            model=ModelConfig(arch=args.arch),
            run_dir=str(root / "run"),
            stage1=TrainConfig(epochs=args.epochs, batch_size=args.batch, eval_batch_size=args.batch, lr=0.01,
                               mixup_alpha=0.2),
            ray=RayConfig(num_workers=1, cpus_per_worker=args.threads, max_failures=0),
        )  # fmt: skip
        start = time.perf_counter()
        fit(cfg, "stage1")
        total = time.perf_counter() - start
        with open(root / "run" / "stage1" / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    steady = rows[1:] or rows
    images = sum(float(r["train_images"]) for r in steady)
    seconds = sum(float(r["train_seconds"]) for r in steady)
    train = images / seconds
    outside = total - sum(float(r["train_seconds"]) for r in rows)
    bare = bare_rate(args.arch, args.batch, args.threads)
    print(
        f"real loop ({args.loader} loader, Ray Train, 1 worker x {args.threads} threads): {train:.2f} images/s"
    )
    print(
        f"bare forward+backward+step ({args.arch}, batch {args.batch}, {args.threads} threads): {bare:.2f} images/s"
    )
    print(
        f"outside the rate: Ray + loader start-up, evaluation, checkpoints: {outside:.1f} s of {total:.1f} s"
    )
    print(f"train_vs_bare={train / bare:.2f}")


if __name__ == "__main__":
    main()
