"""The inference job's steady-state throughput vs the bare model forward, and the sparse candidates' size.

Run: .venv/bin/python benchmarks/bench_infer.py [--images 256] [--arch resnet10] [--threads 2]
One Ray worker runs the real job (loader with train-time augmentation, forward, accumulation by index) over
generated 256px JPEGs (224 crops) with 3 passes; the steady-state rate is images / seconds of the passes after the
first (loader start-up is in the first). Ray start-up and the final all-reduce, gather and writes are printed
apart. The bare rate is the same network's forward on in-memory tensors, same batch and threads. Also printed:
forward passes per training sample, peak memory per worker, and the candidate set vs the dense predictions at the
ImageNet-LT shape for t_min = 3. Last line: infer_vs_bare=<x>.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_flips import SHAPES, long_tail_counts
from bench_loader import write_images

from lnr_dist.core.synthetic import long_tailed_predictions
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, InferConfig, RayConfig
from lnr_dist.infer.inference import run_inference
from lnr_dist.lnr import accumulate_stats, candidates_for_rows, default_chunk_rows
from lnr_dist.models.checkpoint import save_checkpoint
from lnr_dist.models.network import ModelConfig, build_model


def bare_rate(arch: str, batch: int, threads: int, steps: int = 8) -> float:
    torch.set_num_threads(threads)
    model = build_model(ModelConfig(arch=arch), 10).eval()
    images = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        model(images)
        start = time.perf_counter()
        for _ in range(steps):
            torch.softmax(model(images), 1)
    return steps * batch / (time.perf_counter() - start)


def candidate_share(t_min: float) -> tuple[int, int]:
    num_samples, num_classes, n_max, n_min = SHAPES["ImageNet-LT"]
    probs, labels = long_tailed_predictions(long_tail_counts(num_samples, num_classes, n_max, n_min), seed=0)
    probs = probs.astype(np.float16)
    rows = default_chunk_rows(num_classes)
    moments = accumulate_stats(probs, labels, rows).moments()
    found = candidates_for_rows(probs, labels, np.arange(num_samples), moments, t_min, rows)
    return len(found), probs.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split = write_images(root, args.images)
        checkpoint = root / "model.pt"
        save_checkpoint(checkpoint, {"model": build_model(ModelConfig(arch=args.arch), 10).state_dict()})
        cfg = ExperimentConfig(
            data=DataConfig(root=str(root), train_split=str(split), val_split=str(split), test_split=str(split),
                            num_classes=10, image_size=224, num_threads=1),
            model=ModelConfig(arch=args.arch),
            run_dir=str(root / "run"),
            infer=InferConfig(threshold=3.0, passes=args.passes, batch_size=args.batch, checkpoint=str(checkpoint)),
            ray=RayConfig(num_workers=1, cpus_per_worker=args.threads, max_failures=0),
        )  # fmt: skip
        start = time.perf_counter()
        summary = run_inference(cfg)
        total = time.perf_counter() - start
    passes = summary["pass_seconds_per_worker"][0]
    steady = (len(passes) - 1) * args.images / sum(passes[1:])
    bare = bare_rate(args.arch, args.batch, args.threads)
    predict = sum(passes)
    print(f"job steady state (passes 2..{len(passes)}): {steady:.2f} images/s; first pass {passes[0]:.1f} s")
    print(f"bare forward ({args.arch}, batch {args.batch}, {args.threads} threads): {bare:.2f} images/s")
    print(f"outside the passes (Ray start-up, model load, all-reduce, gather, writes): {total - predict:.1f} s "
          f"of {total:.1f} s")  # fmt: skip
    print(
        f"forward passes per training sample: {summary['forwards_per_sample']:.2f} (passes = {args.passes})"
    )
    print(f"peak memory per worker: {summary['peak_rss_mb_per_worker'][0]:.0f} MiB")
    count, dense = candidate_share(3.0)
    print(f"candidates at the ImageNet-LT shape, t_min=3: {count:,} of {dense:,} entries ({100 * count / dense:.3f}%),"
          f" {count * 32 / 2**20:.1f} MiB vs {dense * 2 / 2**20:.0f} MiB of float16 predictions")  # fmt: skip
    print(f"infer_vs_bare={steady / bare:.2f}")


if __name__ == "__main__":
    main()
