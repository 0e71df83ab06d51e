"""The pictures of a `reproduce` run (PNG, under <run_dir>/figures): a reliability diagram per method, per-class
accuracy against training-set frequency (all methods), the LNR flip matrix, the threshold sweep, stage-1
training curves, and the binary task's heat maps."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..experiment import ExperimentConfig
from ..metrics import ECE_BINS as BINS
from ..metrics import MetricSums
from ..plots import plt, save_figure


def reliability(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(bin centres, accuracy per bin, share of samples per bin, ECE %): the confidence bins of the metrics."""
    sums = MetricSums.zeros(logits.shape[1])
    sums.update(torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(labels.astype(np.int64)))
    total = sums.bin_count.sum()
    accuracy = sums.bin_correct / np.maximum(sums.bin_count, 1)
    ece = float(np.abs(sums.bin_correct - sums.bin_confidence).sum() / total * 100)
    return (np.arange(BINS) + 0.5) / BINS, accuracy, sums.bin_count / total, ece


def _reliability_figure(method: str, logits: np.ndarray, labels: np.ndarray, path: Path) -> None:
    centres, accuracy, share, ece = reliability(logits, labels)
    fig, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.bar(centres, accuracy, width=1 / BINS, edgecolor="black", alpha=0.75, label="accuracy")
    axis.bar(centres, share, width=1 / BINS, alpha=0.3, color="gray", label="share of samples")
    axis.plot([0, 1], [0, 1], "k--", linewidth=1)
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title=f"{method}: ECE {ece:.2f}% ({labels.size} test samples)")  # fmt: skip
    axis.legend(loc="upper left")
    save_figure(fig, path)


def write_figures(
    cfg: ExperimentConfig, outcomes: list, per_seed: dict[str, list[dict[str, Any]]]
) -> list[Path]:
    out = Path(cfg.run_dir) / "figures"
    written: list[Path] = []
    for method in cfg.reproduce.methods:
        files = [o.methods[method] / "test_logits.npz" for o in outcomes]
        if all(f.is_file() for f in files):
            arrays = [np.load(f) for f in files]
            path = out / f"reliability_{method}.png"
            _reliability_figure(method, np.concatenate([a["logits"] for a in arrays]),
                                np.concatenate([a["labels"] for a in arrays]), path)  # fmt: skip
            written.append(path)
    written.append(_per_class(cfg, outcomes, out / "per_class_accuracy.png"))
    if "lnr" in cfg.reproduce.methods:
        written.append(_flip_matrix(cfg, outcomes[0], out / "flip_matrix.png"))
    sweeps = [
        o.folder / "tune" / "sweep.csv" for o in outcomes if (o.folder / "tune" / "sweep.csv").is_file()
    ]
    if sweeps:
        written.append(_sweep(sweeps, out / "threshold_sweep.png"))
    curves = [p for o in outcomes for p in (o.folder / "stage1" / "metrics.csv", o.folder / "ce" / "stage1" /
                                             "metrics.csv") if p.is_file()]  # fmt: skip
    if curves:
        written.append(_stage1_curves(curves, Path(cfg.run_dir), out / "stage1_curves.png"))
    binary = [o.binary for o in outcomes if o.binary]
    if binary:
        written.append(_binary_heatmaps(binary, out / "binary_heatmaps.png"))
    return written


def _per_class(cfg: ExperimentConfig, outcomes: list, path: Path) -> Path:
    fig, axis = plt.subplots(figsize=(7, 4.2))
    counts = None
    for method in cfg.reproduce.methods:
        results = [json.loads((o.methods[method] / "results.json").read_text()) for o in outcomes]
        results = [r for r in results if "test" in r]
        if not results:
            continue
        counts = np.asarray(results[0]["manifest"]["class_counts"])
        acc = np.nanmean(
            [[np.nan if a is None else a for a in r["test"]["per_class_acc"]] for r in results], 0
        )
        order = np.argsort(-counts, kind="stable")
        axis.plot(counts[order], acc[order], marker="o", label=method, alpha=0.8)
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set(xlabel="training images of the class (log scale, head to tail)", ylabel="test accuracy (%)",
             title="per-class accuracy against training frequency (mean over seeds)")  # fmt: skip
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(fig, path)
    return path


def _flip_matrix(cfg: ExperimentConfig, outcome, path: Path) -> Path:
    from ..flip_sources import FlipSource, tuned_threshold

    seed_cfg = replace(cfg, seed=outcome.seed, run_dir=str(outcome.folder))
    threshold = tuned_threshold(seed_cfg)
    table, _ = FlipSource(seed_cfg).at(threshold)
    matrix = table.flip_matrix(cfg.data.num_classes)
    fig, axis = plt.subplots(figsize=(5.2, 4.4))
    image = axis.imshow(matrix, cmap="viridis")
    fig.colorbar(image, ax=axis, label="flips")
    axis.set(xlabel="new label", ylabel="original label",
             title=f"LNR flips at threshold {threshold:g} (seed {outcome.seed}): {len(table)}")  # fmt: skip
    if cfg.data.num_classes <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                axis.text(j, i, str(int(value)), ha="center", va="center", color="white", fontsize=8)
    save_figure(fig, path)
    return path


def _read_csv(path: Path) -> list[dict[str, float]]:
    """The numeric cells of each row (text columns such as a sweep trial's status are left out)."""

    def number(text: str | None) -> float | None:
        try:
            return float(text)
        except (TypeError, ValueError):
            return None

    with path.open() as handle:
        rows = [{k: number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _two_panels(series: list[tuple[str, list[float], list[float], list[float]]], labels: tuple[str, ...],
                path: Path) -> Path:  # fmt: skip
    """Two line plots sharing x: series of (legend, x, left y, right y); labels = (x, left y, right y, title)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for legend, x, left_y, right_y in series:
        left.plot(x, left_y, marker="o", markersize=3, label=legend)
        right.plot(x, right_y, marker="o", markersize=3, label=legend)
    left.set(xlabel=labels[0], ylabel=labels[1], title=labels[3])
    right.set(xlabel=labels[0], ylabel=labels[2])
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(fig, path)
    return path


def _sweep(files: list[Path], path: Path) -> Path:
    series = []
    for file in files:
        rows = sorted(_read_csv(file), key=lambda r: r["threshold"])
        x = [r["threshold"] for r in rows]
        series.append(
            (file.parents[1].name, x, [r["val_balanced_acc"] for r in rows], [r["num_flips"] for r in rows])
        )
    labels = ("threshold", "validation balanced accuracy (%)", "flips", "threshold sweep")
    return _two_panels(series, labels, path)


def _stage1_curves(files: list[Path], root: Path, path: Path) -> Path:
    series = []
    for file in files:
        rows = _read_csv(file)
        series.append((str(file.parent.parent.relative_to(root)), [r["epoch"] + 1 for r in rows],
                       [r["train_loss"] for r in rows], [r["val_balanced_acc"] for r in rows]))  # fmt: skip
    labels = ("epoch", "train loss", "validation balanced accuracy (%)",
              "stage 1 (seed<k> = mixup, seed<k>/ce = plain CE)")  # fmt: skip
    return _two_panels(series, labels, path)


def _binary_heatmaps(results: list[dict[str, Any]], path: Path) -> Path:
    ratios = sorted({r["ratio"] for r in results[0]["sweep"]})
    thresholds = sorted({r["threshold"] for r in results[0]["sweep"]})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    for axis, key, label in zip(axes, ("flip_rate", "minority_recall"),
                                ("flip rate (% of majority)", "minority recall (%)"), strict=True):  # fmt: skip
        grid = np.full((len(ratios), len(thresholds)), np.nan)
        for i, ratio in enumerate(ratios):
            for j, threshold in enumerate(thresholds):
                values = [row[key] for r in results for row in r["sweep"]
                          if row["ratio"] == ratio and row["threshold"] == threshold]  # fmt: skip
                grid[i, j] = np.mean(values) if values else np.nan
        image = axis.imshow(grid, cmap="magma", aspect="auto")
        fig.colorbar(image, ax=axis, label=label)
        for (i, j), value in np.ndenumerate(grid):
            axis.text(j, i, f"{value:.0f}", ha="center", va="center", color="cyan", fontsize=8)
        axis.set_xticks(range(len(thresholds)), [f"{t:g}" for t in thresholds])
        axis.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        axis.set(xlabel="threshold", ylabel="minority / majority ratio", title=f"binary LNR: {label}")
    save_figure(fig, path)
    return path
