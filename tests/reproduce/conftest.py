"""A synthetic `reproduce`-shaped run folder (no training): what the report and figures read, at any class count."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lnr_dist.core import storage
from lnr_dist.core.synthetic import exponential_counts
from lnr_dist.data.config import DataConfig
from lnr_dist.data.manifest import Manifest
from lnr_dist.experiment import ExperimentConfig, ReproduceConfig
from lnr_dist.lnr import class_prior
from lnr_dist.reproduce.runner import SeedOutcome
from lnr_dist.train.calibration import metrics_at

# method -> (accuracy change in the head, in the tail), in points: LNR-like methods trade head for tail
EFFECTS = {"ce": (0, -25), "mixup": (2, -22), "mislas": (-2, 0), "lnr": (-3, 6), "random": (-4, 1),
           "smote": (-1, -10), "adasyn": (-1, -12)}  # fmt: skip


def synthetic_run(
    run_dir: Path,
    num_classes: int = 1000,
    n_max: int = 1280,
    n_min: int = 5,
    methods: tuple[str, ...] = ("ce", "mislas", "lnr", "random"),
    seeds: int = 2,
    test_per_class: int = 2,
    logits_methods: tuple[str, ...] | None = None,
    threshold: float = 14.5,
) -> tuple[ExperimentConfig, list[SeedOutcome]]:
    """Writes, per seed k, <run_dir>/seed<k>/: methods/<m>/results.json (test metrics computed from the logits,
    so per_class_acc follows EFFECTS, a few classes absent from test as null, and the manifest), methods/<m>/test_logits.npz (float32 logits, labels,
    indices; for `logits_methods`, default all), infer/summary.json + candidates.npz (LNR candidates at
    t_min = threshold - 4), tune/sweep.csv + chosen_threshold.json (at `threshold`), stage1/metrics.csv.

    Class counts fall exponentially from n_max to n_min (class 0 the largest). Returns the config and outcomes
    that `write_figures` takes.
    """
    counts = exponential_counts(num_classes, n_max, n_min)
    train_labels = np.repeat(np.arange(num_classes), counts)
    manifest = Manifest.from_labels(train_labels, num_classes)
    prior = class_prior(counts)
    logits_methods = methods if logits_methods is None else logits_methods
    data = DataConfig(root=str(run_dir), train_split="train.txt", val_split="val.txt", test_split="test.txt",
                      num_classes=num_classes)  # fmt: skip
    cfg = ExperimentConfig(
        data=data, run_dir=str(run_dir), reproduce=ReproduceConfig(methods=methods, seeds=seeds)
    )
    position = np.log(counts.max() / counts) / np.log(counts.max() / counts.min())  # 0 head .. 1 tail
    present = np.random.default_rng(99).random(num_classes) > 0.01  # ~1% of classes have no test image
    outcomes = []  # one test split for every seed (as in a real run)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        folder = run_dir / f"seed{seed}"
        folders = {}
        labels = np.repeat(np.flatnonzero(present), test_per_class)
        for method in methods:
            head, tail = EFFECTS.get(method, (0, 0))
            p = np.clip(80 - 60 * position + head + (tail - head) * position, 1, 99) / 100
            # each test image is right with its class's probability p: its label, else another class, wins
            right = rng.random(labels.size) < p[labels]
            winner = np.where(
                right, labels, (labels + rng.integers(1, num_classes, labels.size)) % num_classes
            )
            logits = rng.normal(0.0, 1.0, (labels.size, num_classes)).astype(np.float32)
            logits[np.arange(labels.size), winner] += (
                rng.normal(5.0, 1.5, labels.size).astype(np.float32) ** 2
            )
            test = metrics_at(torch.from_numpy(logits), torch.from_numpy(labels), manifest)
            folders[method] = folder / "methods" / method
            storage.write_json(folders[method] / "results.json",
                               {"test": test, "test_calibrated": test, "manifest": manifest.to_dict()})  # fmt: skip
            if method in logits_methods:
                storage.write_npz(folders[method] / "test_logits.npz", logits=logits, labels=labels,
                                  indices=np.arange(labels.size))  # fmt: skip
        _write_flip_inputs(folder, train_labels, prior, threshold, seed, rng)
        _write_sweep(folder, threshold, rng)
        rows = [{"epoch": e, "train_loss": 5.0 / (e + 1), "val_balanced_acc": 10.0 + 3 * e} for e in range(5)]
        storage.write_csv(
            folder / "stage1" / "metrics.csv", rows, ["epoch", "train_loss", "val_balanced_acc"]
        )
        outcomes.append(SeedOutcome(seed, folder, folders, None, [], []))
    return replace(cfg, seed=0), outcomes


def _write_flip_inputs(folder: Path, train_labels: np.ndarray, prior: np.ndarray, threshold: float, seed: int,
                       rng: np.random.Generator) -> None:  # fmt: skip
    """summary.json + candidates.npz as the inference job writes them: (sample, rarer class, z) with z > t_min."""
    t_min = threshold - 4.0
    index = np.sort(rng.choice(train_labels.size, size=train_labels.size // 20, replace=False))
    label = train_labels[index]
    rarer = rng.integers(
        label + 1, prior.size + 1
    )  # counts fall with the class index; the last class is rarest
    keep = (rarer < prior.size) & (prior[np.minimum(rarer, prior.size - 1)] > prior[label])
    index, label, cls = index[keep], label[keep], rarer[keep]
    z = t_min + rng.exponential(4.0, index.size)
    storage.write_npz(folder / "infer" / "candidates.npz", index=index, label=label, cls=cls, z=z,
                      t_min=np.array(t_min), prior=prior, seed=np.array(seed))  # fmt: skip
    storage.write_json(folder / "infer" / "summary.json", {"seed": seed, "threshold": threshold})


def _write_sweep(folder: Path, threshold: float, rng: np.random.Generator) -> None:
    grid = threshold + np.arange(-4.0, 5.0, 2.0)
    rows = [{"threshold": float(t), "num_flips": int(4000 / (1 + t - grid[0])),
             "val_balanced_acc": float(40 - (t - threshold) ** 2 / 4 + rng.normal(0, 0.3))} for t in grid]  # fmt: skip
    storage.write_csv(folder / "tune" / "sweep.csv", rows, ["threshold", "num_flips", "val_balanced_acc"])
    storage.write_json(folder / "tune" / "chosen_threshold.json",
                       {"threshold": threshold, "objective": "val_balanced_acc"})  # fmt: skip
