"""The pictures of a `reproduce` run (PNG, under <run_dir>/figures): a reliability diagram per method, per-class
accuracy against training-set frequency (all methods), the LNR flip matrix, the threshold sweep, stage-1
training curves, and the binary task's heat maps.

Per-class pictures stay readable at 1,000 and 8,142 classes: classes are sorted by training count (head to tail)
and grouped into at most a few dozen bins of consecutive classes (`frequency_bins`), never across a many/medium/few
boundary; the flip matrix is also shown as many/medium/few x many/medium/few counts (`binned_flips`)."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LogNorm

from ..core.layout import RunLayout
from ..core.plots import plt, save_figure
from ..data.manifest import GROUPS, Manifest
from ..experiment import ExperimentConfig
from ..lnr import FlipTable
from ..stage2.flip_sources import LNR_FLIPS, LabelContext
from ..stage2.registry import BACKBONES, STAGE2_METHODS, Stage2Method, stage2_threshold
from ..train.metrics import ECE_BINS as BINS
from ..train.metrics import MetricSums

FLIP_BINS = 20  # frequency bins of the class-level flip matrix (classes above this count are binned)
ACCURACY_BINS = 30  # frequency bins of the per-class accuracy plot
_CHUNK_ROWS = 4096  # logits rows per MetricSums update: bounded memory at 8,142 classes


def frequency_bins(class_counts: np.ndarray, group: np.ndarray, max_bins: int) -> list[np.ndarray]:
    """Classes sorted by training count (head to tail, ties by class index), cut into bins of consecutive classes.

    Args:
        class_counts: (C,) training images per class. group: (C,) 0 many, 1 medium, 2 few (Manifest.group).
        max_bins: at most this many bins (>= 3); with C <= max_bins every class is its own bin.
    Returns:
        Bins head to tail, each an int64 array of class indices; every class is in exactly one bin and no bin mixes
        groups. A group gets bins in proportion to its classes (at least one when non-empty; the largest-average
        rule, so bins hold as equal numbers of classes as the groups allow).
    Raises:
        ValueError: max_bins < 3.
    """
    if max_bins < 3:
        raise ValueError(f"max_bins must be >= 3 (one per many/medium/few group), got {max_bins}")
    counts, group = np.asarray(class_counts, dtype=np.int64), np.asarray(group, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    members = [order[group[order] == g] for g in range(len(GROUPS))]
    sizes = np.array([m.size for m in members])
    if sizes.sum() <= max_bins:
        return [np.array([k], dtype=np.int64) for k in order]
    shares = (sizes > 0).astype(np.int64)
    while shares.sum() < max_bins:
        g = int(np.argmax(np.where(shares < sizes, sizes / np.maximum(shares, 1), -1.0)))
        shares[g] += 1
    return [
        part.astype(np.int64)
        for m, s in zip(members, shares, strict=True)
        if s
        for part in np.array_split(m, s)
    ]


def binned_flips(table: FlipTable, bins: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(B, B) int64 flip counts from the classes of bin a to the classes of bin b.

    `bins` partition range(num_classes) (as `frequency_bins` or the many/medium/few groups do), so the matrix sums
    to len(table), and row a sums to the flips leaving bin a. Works on the table's (F,) arrays: no (C, C) matrix
    (530 MB at 8,142 classes). Raises ValueError when the bins do not cover every class exactly once.
    """
    member = np.full(num_classes, -1, dtype=np.int64)
    for b, classes in enumerate(bins):
        if np.any(member[classes] >= 0):
            raise ValueError("bins overlap")
        member[classes] = b
    if np.any(member < 0):
        raise ValueError(f"bins leave out classes {np.flatnonzero(member < 0)[:5].tolist()}")
    matrix = np.zeros((len(bins), len(bins)), dtype=np.int64)
    np.add.at(matrix, (member[table.source], member[table.target]), 1)
    return matrix


def binned_accuracy(per_class_acc: np.ndarray, bins: list[np.ndarray]) -> np.ndarray:
    """(S, C) per-class accuracies (NaN: class absent from test) -> (S, B) mean over each bin's present classes.

    A bin with no present class is NaN (for that seed).
    """
    acc = np.asarray(per_class_acc, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bin -> NaN, said above
        return np.stack([np.nanmean(acc[:, classes], axis=1) for classes in bins], axis=1)


def reliability_sums(arrays: Iterable[tuple[np.ndarray, np.ndarray]]) -> MetricSums:
    """MetricSums (the tables' ECE rule) over (logits (N, C), labels (N,)) pairs, pooled, in row chunks.

    `arrays` may be a generator: one seed's logits in memory at a time. Raises ValueError when it is empty.
    """
    sums = None
    for logits, labels in arrays:
        sums = MetricSums.zeros(logits.shape[1]) if sums is None else sums
        for start in range(0, labels.shape[0], _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            sums.update(torch.from_numpy(np.asarray(logits[rows], dtype=np.float32)),
                        torch.from_numpy(np.asarray(labels[rows], dtype=np.int64)))  # fmt: skip
    if sums is None:
        raise ValueError("no logits to pool")
    return sums


def reliability(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(bin centres, accuracy per bin, share of samples per bin, ECE %): the confidence bins of the metrics."""
    return _reliability_bins(reliability_sums([(logits, labels)]))


def _reliability_bins(sums: MetricSums) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    total = sums.bin_count.sum()
    accuracy = sums.bin_correct / np.maximum(sums.bin_count, 1)
    return (np.arange(BINS) + 0.5) / BINS, accuracy, sums.bin_count / total, sums.ece()


def _logits_and_labels(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """test_logits.npz's `logits` (N, C) and `labels` (N,); its other keys (indices, temperature) are not needed."""
    with np.load(file, allow_pickle=False) as data:
        return data["logits"], data["labels"]


def _reliability_figure(method: str, files: list[Path], path: Path) -> None:
    sums = reliability_sums(_logits_and_labels(file) for file in files)
    centres, accuracy, share, ece = _reliability_bins(sums)
    samples = int(sums.bin_count.sum())
    if len(files) == 1:  # the table's number for this seed
        title = f"{method}: ECE {ece:.2f}% ({samples} test samples)"
    else:  # pooled ECE is not the table's mean over seeds
        title = f"{method}: ECE {ece:.2f}%, pooled over {len(files)} seeds\n({samples} test predictions)"
    fig, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.bar(centres, accuracy, width=1 / BINS, edgecolor="black", alpha=0.75, label="accuracy")
    axis.bar(centres, share, width=1 / BINS, alpha=0.3, color="gray", label="share of samples")
    axis.plot([0, 1], [0, 1], "k--", linewidth=1)
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    axis.title.set_fontsize(10)
    axis.legend(loc="upper left")
    save_figure(fig, path)


def write_figures(
    cfg: ExperimentConfig, outcomes: list, per_seed: dict[str, list[dict[str, Any]]]
) -> list[Path]:
    out = cfg.layout.figures
    written: list[Path] = []
    for method in cfg.reproduce.methods:
        files = [o.methods[method] / "test_logits.npz" for o in outcomes]
        if all(f.is_file() for f in files):
            path = out / f"reliability_{method}.png"
            _reliability_figure(method, files, path)
            written.append(path)
    results = {m: _test_results(outcomes, m) for m in cfg.reproduce.methods}
    results = {m: r for m, r in results.items() if r}
    if results:
        manifest = Manifest.from_dict(next(iter(results.values()))[0]["manifest"])
        written.append(_per_class(results, manifest, out / "per_class_accuracy.png"))
        lnr = next((m for m in cfg.reproduce.methods if STAGE2_METHODS[m].labels is LNR_FLIPS), None)
        if lnr is not None:
            table, threshold = lnr_flips(cfg, STAGE2_METHODS[lnr], outcomes[0])
            path = out / "flip_matrix.png"
            flip_matrix_figure(table, manifest, threshold, outcomes[0].seed, path)
            written.append(path)
    sweeps = [layout for o in outcomes if (layout := RunLayout(o.folder)).sweep_csv.is_file()]
    if sweeps:
        written.append(_sweep(sweeps, out / "threshold_sweep.png"))
    curves = [p for o in outcomes for b in BACKBONES.values()
              if (p := RunLayout(o.folder).backbone(b.folder).stage("stage1") / "metrics.csv").is_file()]  # fmt: skip
    if curves:
        written.append(_stage1_curves(curves, cfg.layout.root, out / "stage1_curves.png"))
    binary = [o.binary for o in outcomes if o.binary]
    if binary:
        written.append(_binary_heatmaps(binary, out / "binary_heatmaps.png"))
    return written


def _test_results(outcomes: list, method: str) -> list[dict[str, Any]]:
    """The method's results.json of each seed that has test metrics (not_applicable seeds left out)."""
    results = [json.loads((o.methods[method] / "results.json").read_text()) for o in outcomes]
    return [r for r in results if "test" in r]


def _bin_labels(counts: np.ndarray, bins: list[np.ndarray]) -> list[str]:
    """A bin's training-count range, head to tail ("1280-904", or "37" when its classes share one count)."""
    labels = []
    for classes in bins:
        high, low = int(counts[classes].max()), int(counts[classes].min())
        labels.append(f"{high}" if high == low else f"{high}-{low}")
    return labels


def _group_spans(axis: Any, manifest: Manifest, bins: list[np.ndarray]) -> None:
    """Shade the many/medium/few stretches of a head-to-tail bin axis and name them on top."""
    groups = np.array([manifest.group[classes[0]] for classes in bins])
    for g, (name, colour) in enumerate(zip(GROUPS, ("#eaf2fa", "#f6f6f6", "#fcefe7"), strict=True)):
        where = np.flatnonzero(groups == g)
        if where.size:
            axis.axvspan(where[0] - 0.5, where[-1] + 0.5, color=colour, zorder=0)
            size = int((manifest.group == g).sum())
            axis.text((where[0] + where[-1]) / 2, 1.01, f"{name} ({size} class{'es' if size > 1 else ''})",
                      transform=axis.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)  # fmt: skip


def _per_class(results: dict[str, list[dict[str, Any]]], manifest: Manifest, path: Path) -> Path:
    counts = manifest.class_counts
    bins = frequency_bins(counts, manifest.group, ACCURACY_BINS)
    x = np.arange(len(bins))
    seeds = max(len(r) for r in results.values())
    fig, axis = plt.subplots(figsize=(9, 4.4))
    _group_spans(axis, manifest, bins)
    for method, runs in results.items():
        acc = np.array([[np.nan if a is None else a for a in r["test"]["per_class_acc"]] for r in runs])
        per_seed = binned_accuracy(acc, bins)  # (S, B)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a bin absent from every seed's test set -> NaN
            mean, low, high = (f(per_seed, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))
        (line,) = axis.plot(x, mean, marker="o", markersize=3, linewidth=1.5, label=f"{method} ({len(runs)})")
        if len(runs) > 1:
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    sizes = sorted({c.size for c in bins})
    per_bin = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    binning = "one point per class" if sizes == [1] else f"{len(bins)} bins of {per_bin} classes each"
    step = max(1, len(bins) // 30)
    axis.set_xticks(x[::step], _bin_labels(counts, bins)[::step], rotation=60, ha="right", fontsize=7)
    axis.set_xlim(-0.5, len(bins) - 0.5)
    axis.set_ylim(-2, 102)
    axis.set_xlabel(f"training images per class (range in the bin), head to tail: {binning}")
    axis.set_ylabel("test accuracy (%)" if sizes == [1] else "test accuracy (%), mean over the bin's classes")
    lines = "line: mean over seeds, band: min-max over seeds" if seeds > 1 else "one seed"
    axis.set_title(f"per-class accuracy by training frequency ({manifest.num_classes} classes; {lines})", pad=16,
                   fontsize=10)  # fmt: skip
    axis.grid(alpha=0.3, axis="y")
    axis.legend(
        title="method (seeds)", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5)
    )
    save_figure(fig, path)
    return path


def lnr_flips(cfg: ExperimentConfig, method: Stage2Method, outcome: Any) -> tuple[FlipTable, float]:
    """The LNR flips `method` (whose labels are LNR_FLIPS) trained on for one seed, at its threshold policy."""
    run_cfg = method.run_config(replace(cfg, seed=outcome.seed, run_dir=str(outcome.folder)))
    # LNR's flips come from the inference outputs alone: the policy reads no training label
    return method.labels.flips(LabelContext(run_cfg, np.empty(0, np.int64), stage2_threshold(run_cfg)))


def _count_image(fig: Any, axis: Any, matrix: np.ndarray, labels: list[str], annotate: bool) -> None:
    """Counts on a log colour scale; zero cells blank (white), colour-bar ticks at 1, 2, 5, 10, ... (integers)."""
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    top = max(2, int(matrix.max()))
    norm = LogNorm(vmin=1, vmax=top)
    image = axis.imshow(np.ma.masked_equal(matrix, 0), cmap=cmap, norm=norm, interpolation="nearest")
    bar = fig.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
    ticks = [v for e in range(len(str(top))) for v in (10**e, 2 * 10**e, 5 * 10**e) if v <= top]
    ticks += [top] if top >= 1.5 * ticks[-1] else []  # the largest count, when far from the last round tick
    bar.set_ticks(ticks, labels=[f"{v:,}" for v in ticks])
    bar.ax.minorticks_off()
    bar.set_label("flips (log scale, blank = 0)")
    size = 9 if len(labels) <= 6 else 8 if len(labels) <= 20 else 6.5
    upright = len(labels) <= 6 or max(len(label) for label in labels) <= 3  # else rotated: no overlaps
    axis.set_xticks(range(len(labels)), labels, rotation=0 if upright else 90, fontsize=size)
    axis.set_yticks(range(len(labels)), labels, fontsize=size)
    axis.tick_params(length=2)
    if annotate:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                dark = norm(value) < 0.6  # viridis is dark below ~0.6
                axis.text(j, i, f"{int(value):,}", ha="center", va="center", fontsize=11 if len(labels) <= 6 else 8,
                          color="white" if dark else "black")  # fmt: skip


def flip_matrix_figure(table: FlipTable, manifest: Manifest, threshold: float, seed: int, path: Path) -> None:
    """Left: many/medium/few x many/medium/few flip counts. Right: every class (C <= FLIP_BINS, by class index)
    or FLIP_BINS frequency bins (head to tail). Rows are the original label, columns the new one."""
    num_classes = manifest.num_classes
    groups = [manifest.group_classes(name) for name in GROUPS]
    group_labels = [f"{name}\n({g.size} cl.)" for name, g in zip(GROUPS, groups, strict=True)]
    if num_classes <= FLIP_BINS:
        bins = [np.array([k]) for k in range(num_classes)]
        labels, title = [str(k) for k in range(num_classes)], "per class (class index)"
    else:
        bins = frequency_bins(manifest.class_counts, manifest.group, FLIP_BINS)
        labels = _bin_labels(manifest.class_counts, bins)
        title = f"{len(bins)} frequency bins, head to tail\n(tick: training images per class in the bin)"
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": (1, 1.45)}, constrained_layout=True
    )
    _count_image(fig, left, binned_flips(table, groups, num_classes), group_labels, annotate=True)
    left.set(xlabel="new label's group", ylabel="original label's group", title="by many / medium / few")
    _count_image(
        fig, right, binned_flips(table, bins, num_classes), labels, annotate=num_classes <= FLIP_BINS
    )
    right.set(xlabel="new label", ylabel="original label", title=title)
    groups_of_bins = np.array([manifest.group[classes[0]] for classes in bins])
    edges = np.flatnonzero(np.diff(groups_of_bins)) + 0.5 if np.all(np.diff(groups_of_bins) >= 0) else []
    for edge in edges:  # many | medium | few boundaries (when the classes run head to tail)
        right.axhline(edge, color="gray", linewidth=0.8)
        right.axvline(edge, color="gray", linewidth=0.8)
    share = 100 * len(table) / max(manifest.num_samples, 1)
    fig.suptitle(f"LNR flips, seed {seed}, threshold {threshold:g}: {len(table):,} flips ({share:.2f}% of "
                 f"{manifest.num_samples:,} training labels), {num_classes:,} classes")  # fmt: skip
    save_figure(fig, path)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV; numbers as float, other non-empty cells (e.g. a trial's status) as text."""
    with path.open() as handle:
        return [
            {k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)
        ]


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _two_panels(series: list[tuple[str, list[float], list[float], list[float]]], labels: tuple[str, ...],
                path: Path, marks: list[float | None] | None = None) -> Path:  # fmt: skip
    """Two line plots sharing x: series of (legend, x, left y, right y); labels = (x, left y, right y, title).
    marks: per series an x to mark on both panels (dashed line in the series' colour, star on the curve)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, (legend, x, left_y, right_y) in enumerate(series):
        mark = marks[k] if marks else None
        for axis, y in ((left, left_y), (right, right_y)):
            (line,) = axis.plot(x, y, marker="o", markersize=3, label=legend)
            if mark is not None:
                axis.axvline(mark, color=line.get_color(), linestyle="--", linewidth=1, alpha=0.8)
                hit = [v for u, v in zip(x, y, strict=True) if u == mark]
                if hit:
                    axis.plot([mark], hit[:1], marker="*", markersize=11, color=line.get_color(),
                              markeredgecolor="black", linestyle="none")  # fmt: skip
    left.set(xlabel=labels[0], ylabel=labels[1], title=labels[3])
    right.set(xlabel=labels[0], ylabel=labels[2])
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save_figure(fig, path)
    return path


def _chosen(layout: RunLayout) -> dict[str, Any]:
    """The sweep's chosen_threshold.json ({} when missing or unreadable: nothing to mark)."""
    try:
        return json.loads(layout.chosen_threshold.read_text())
    except (OSError, ValueError):
        return {}


def _sweep(layouts: list[RunLayout], path: Path) -> Path:
    """The sweep curves of each seed's run folder, the chosen threshold marked."""
    chosen = [_chosen(layout) for layout in layouts]
    tables = [sorted(_read_csv(layout.sweep_csv), key=lambda r: r["threshold"]) for layout in layouts]
    # the sweep's own objective (tune.objective) when every seed names the same one and its sweep.csv has it
    named = {c.get("objective") for c in chosen}
    objective = named.pop() if len(named) == 1 else None
    if objective is None or not all(rows and objective in rows[0] for rows in tables):
        objective = "val_balanced_acc"
    series, marks = [], []
    for layout, rows, choice in zip(layouts, tables, chosen, strict=True):
        threshold = choice.get("threshold")
        marks.append(float(threshold) if isinstance(threshold, (int, float)) else None)
        legend = layout.root.name + (f" (chosen {threshold:g})" if marks[-1] is not None else "")
        series.append((legend, [r["threshold"] for r in rows], [r[objective] for r in rows],
                       [r["num_flips"] for r in rows]))  # fmt: skip
    labels = ("threshold", f"validation {objective.removeprefix('val_').replace('_', ' ')} (%)", "flips",
              "threshold sweep (dashed line, star: the chosen threshold)")  # fmt: skip
    return _two_panels(series, labels, path, marks)


def _stage1_curves(files: list[Path], root: Path, path: Path) -> Path:
    series = []
    for file in files:
        rows = _read_csv(file)
        series.append((str(file.parent.parent.relative_to(root)), [r["epoch"] + 1 for r in rows],
                       [r["train_loss"] for r in rows], [r["val_balanced_acc"] for r in rows]))  # fmt: skip
    labels = ("epoch", "train loss", "validation balanced accuracy (%)",
              "stage 1 (seed<k> = mixup, seed<k>/<name> = backbone <name>)")  # fmt: skip
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
