"""Threshold sweep throughput on the mini set: thresholds evaluated per minute with and without cached features.

Run: .venv/bin/python benchmarks/bench_tune.py [--cached 12] [--uncached 2] [--epochs 10]
Sets up a run folder (mini set, a short stage 1, the inference job), then times two real Ray Tune sweeps of the lnr
method with stage2.backend auto: one on cached stage-1 features (auto's choice without stage2.shift_bn; feature
extraction timed apart: it happens once per checkpoint) and one where each trial runs stage 2 on Ray Train (auto's
choice with stage2.shift_bn, as stage2.backend=images). Each sweep's time includes the final test evaluation of its
chosen threshold. Last line: thresholds_per_min=<x> for the cached sweep.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lnr_dist.data.config import DataConfig
from lnr_dist.data.mini import make_mini
from lnr_dist.experiment import (
    ExperimentConfig,
    InferConfig,
    RayConfig,
    Stage2Config,
    TrainConfig,
    TuneConfig,
)
from lnr_dist.features.cache import cached_features
from lnr_dist.infer.inference import run_inference
from lnr_dist.train.trainer import fit
from lnr_dist.tune.sweep import run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cached", type=int, default=12, help="thresholds in the cached-feature sweep")
    parser.add_argument("--uncached", type=int, default=2, help="thresholds in the Ray Train sweep")
    parser.add_argument("--epochs", type=int, default=10, help="stage-2 epochs per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mini"
        make_mini(root)
        data = DataConfig(root=str(root), train_split=str(root / "Mini_LT_train.txt"),
                          val_split=str(root / "Mini_LT_val.txt"), test_split=str(root / "Mini_LT_test.txt"),
                          num_classes=10, image_size=32, resize_size=32, train_crop="padded", num_threads=0,
                          mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip
        cfg = ExperimentConfig(
            data=data, run_dir=str(Path(tmp) / "run"),
            stage1=TrainConfig(epochs=4, batch_size=32, eval_batch_size=128, lr=0.1, mixup_alpha=0.2),
            infer=InferConfig(threshold=1.0, batch_size=128, candidates_t_min=0.0),
            stage2=Stage2Config(epochs=args.epochs, batch_size=32, eval_batch_size=128, lr=0.05),
            ray=RayConfig(num_workers=2, cpus_per_worker=1, max_failures=0),
        )  # fmt: skip
        fit(cfg, "stage1")
        run_inference(cfg)
        start = time.perf_counter()
        cached_features(cfg)
        extraction = time.perf_counter() - start
        rates = {}
        for name, count, shift_bn in (
            ("cached features", args.cached, False),
            ("Ray Train per trial", args.uncached, True),
        ):
            thresholds = tuple(float(t) for t in np.linspace(0.5, 3.0, count))
            sweep_cfg = replace(cfg, stage2=replace(cfg.stage2, shift_bn=shift_bn),
                                tune=TuneConfig(thresholds=thresholds, cpus_per_trial=0.5),
                                ray=replace(cfg.ray, num_workers=1, cpus_per_worker=1))  # fmt: skip
            start = time.perf_counter()
            run_sweep(sweep_cfg)
            seconds = time.perf_counter() - start
            rates[name] = 60.0 * count / seconds
            print(f"{name}: {count} thresholds in {seconds:.1f} s = {rates[name]:.1f} thresholds/min "
                  f"({args.epochs} stage-2 epochs each)")  # fmt: skip
        print(f"feature extraction (once per stage-1 checkpoint, not in the rate): {extraction:.1f} s")
    print(f"thresholds_per_min={rates['cached features']:.1f}")


if __name__ == "__main__":
    main()
