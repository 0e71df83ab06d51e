"""`lnr-dist mine`: minority-class mining on the unlabelled pool (stage2/mining.py), evaluated against three
baselines, on cached stage-1 features.

Writes <run_dir>/mine/ (RunLayout.mine):

- mined.csv: the mining.budget images the method picks, best first: rank, dataset index (line in the pool file,
  from 0), path, score (reconstruction error), label (the annotator's: Pool.annotate), group of that class;
- summary.json: budget, pool size, the pool's tail fraction (what random picking expects), precision@K of the
  tail (medium + few), medium and few groups for the method and each baseline (random, max_softmax, entropy),
  the classes each one mined;
- precision_recall.png: precision against recall of tail images (left) and of few-shot images (right), one
  curve per ranker, K marked;
- mined_classes.png: how many images of each class (and of each group) each ranker mined;
- config.yaml.

To evaluate, the annotator labels the whole pool (Pool.annotate); nothing trained here reads those labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..core import config as config_lib
from ..core import storage
from ..core.plots import plt, save_figure
from ..data.manifest import GROUPS, Manifest
from ..data.pool import load_pool
from ..experiment import ExperimentConfig
from ..stage2.mining import (
    RANKERS,
    TAIL_GROUPS,
    check_budget,
    group_members,
    pool_scores,
    precision_at_k,
    precision_recall,
    rank,
)
from .cache import head_inputs

MINED_FIELDS = ("rank", "index", "path", "score", "label", "group")
LABELS = {
    "mining": "minority-class mining",
    "random": "random",
    "max_softmax": "max-softmax",
    "entropy": "entropy",
}
PRECISION_GROUPS = ("tail", *TAIL_GROUPS)
GROUP_TITLES = {"tail": "Tail classes (medium + few)", "medium": "Medium classes", "few": "Few-shot classes"}
_PER_CLASS_BARS = 40  # above this many classes the histogram shows groups only


def run_mining(cfg: ExperimentConfig, folder: Path | None = None) -> dict[str, Any]:
    """Mine cfg.mining.budget pool images and evaluate the ranking against the baselines; writes `folder`
    (default <run_dir>/mine/) and returns summary.json's content. Raises UserError, before any work, when there is
    no pool or mining.budget exceeds it."""
    cfg = cfg.with_absolute_paths()
    check_budget(cfg)
    folder = cfg.layout.mine if folder is None else Path(folder)
    config_lib.save_resolved(cfg, folder)
    inputs = head_inputs(cfg)  # extracts the features (pool included) when missing
    pool = load_pool(cfg.data)
    budget, manifest = cfg.mining.budget, inputs.manifest
    scores = pool_scores(inputs.features["train"], inputs.labels["train"], inputs.features["pool"],
                         inputs.classifier, cfg.mining, cfg.seed)  # fmt: skip
    orders = {name: rank(scores[name]) for name in RANKERS}
    truth = pool.annotate(np.arange(len(pool)))  # evaluation only: the annotator labels every pool image
    members = group_members(manifest)

    top = orders["mining"][:budget]
    group_of = np.asarray(GROUPS)[manifest.group]
    rows = [
        {"rank": r + 1, "index": int(i), "path": pool.split.paths[i], "score": float(scores["mining"][i]),
         "label": int(truth[i]), "group": str(group_of[truth[i]])}
        for r, i in enumerate(top)
    ]  # fmt: skip
    storage.write_csv(folder / "mined.csv", rows, MINED_FIELDS)

    summary: dict[str, Any] = {
        "budget": budget,
        "pool": cfg.data.unlabeled_split,
        "pool_size": len(pool),
        "pool_fraction": {g: float(members[g][truth].mean()) for g in PRECISION_GROUPS},
        "precision_at_k": {
            name: {g: precision_at_k(orders[name], members[g][truth], budget) for g in PRECISION_GROUPS}
            for name in RANKERS
        },
        "mined_class_counts": {
            name: np.bincount(truth[orders[name][:budget]], minlength=manifest.num_classes).tolist()
            for name in RANKERS
        },
        "train_class_counts": manifest.class_counts.tolist(),
        "groups": {name: manifest.group_classes(name).tolist() for name in GROUPS},
        "seed": cfg.seed,
    }
    figures = {
        "precision_recall": _precision_recall_figure(
            orders, {g: members[g][truth] for g in ("tail", "few")}, budget, folder
        ),
        "mined_classes": _mined_classes_figure(summary["mined_class_counts"], manifest, budget, folder),
    }
    summary["files"] = {"mined": str(folder / "mined.csv"), **{k: str(v) for k, v in figures.items()}}
    storage.write_json(folder / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """precision@K per ranker as a text table (the CLI prints it)."""
    k = summary["budget"]
    lines = [f"precision@{k} of {summary['pool_size']} pool images (tail = medium + few classes of the labelled "
             "training split)", f"{'ranker':<22} {'tail':>7} {'medium':>7} {'few':>7}"]  # fmt: skip
    share = summary["pool_fraction"]
    for name, values in summary["precision_at_k"].items():
        lines.append(f"{LABELS[name]:<22} " + " ".join(f"{values[g]:>7.3f}" for g in PRECISION_GROUPS))
    lines.append(f"{'(pool share)':<22} " + " ".join(f"{share[g]:>7.3f}" for g in PRECISION_GROUPS))
    return "\n".join(lines)


def _precision_recall_figure(orders: dict[str, np.ndarray], positive: dict[str, np.ndarray], budget: int,
                             folder: Path) -> Path:  # fmt: skip
    """Precision against recall as each ranker's pick grows from 1 to the whole pool, one panel per group of
    `positive` (name -> (M,) bool by pool index: tail, few): the tail alone says little when the pool is mostly
    tail (the mini set's is 99%)."""
    fig, axes = plt.subplots(1, len(positive), figsize=(5.6 * len(positive), 4.6), squeeze=False)
    for axis, (group, members) in zip(axes[0], positive.items(), strict=True):
        for name, order in orders.items():
            precision, recall = precision_recall(order, members)
            (line,) = axis.plot(recall, precision, label=LABELS[name], linewidth=1.6)
            axis.plot(recall[budget - 1], precision[budget - 1], "o", color=line.get_color())
        share = float(members.mean())
        axis.axhline(share, color="grey", linestyle="--", linewidth=1, label=f"{group} share of the pool")
        axis.set(xlabel=f"recall of {group} images in the pool", ylabel=f"precision ({group} images / picked)",
                 title=f"{GROUP_TITLES[group]}: dots at K = {budget}", xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    path = folder / "precision_recall.png"
    save_figure(fig, path)
    return path


def _mined_classes_figure(
    counts: dict[str, list[int]], manifest: Manifest, budget: int, folder: Path
) -> Path:
    """Images mined per class (classes by training count, head first; omitted above _PER_CLASS_BARS classes) and
    per group, one bar per ranker."""
    per_class = manifest.num_classes <= _PER_CLASS_BARS
    fig, axes = plt.subplots(1, 2 if per_class else 1, figsize=(12, 4.2) if per_class else (5.5, 4.2),
                             gridspec_kw={"width_ratios": [3, 1]} if per_class else None, squeeze=False)  # fmt: skip
    width = 0.8 / len(counts)
    if per_class:
        axis = axes[0, 0]
        order = np.argsort(-manifest.class_counts, kind="stable")
        x = np.arange(order.size)
        for j, (name, values) in enumerate(counts.items()):
            axis.bar(
                x + (j - (len(counts) - 1) / 2) * width, np.asarray(values)[order], width, label=LABELS[name]
            )
        axis.set_xticks(x, [f"{c}\n({manifest.class_counts[c]})" for c in order], fontsize=8)
        axis.set(xlabel="class (training images)", ylabel="images mined",
                 title=f"Classes of the K = {budget} images each ranker picks")  # fmt: skip
        axis.legend(fontsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis = axes[0, -1]
    x = np.arange(len(GROUPS))
    for j, (name, values) in enumerate(counts.items()):
        totals = [int(np.asarray(values)[manifest.group_classes(g)].sum()) for g in GROUPS]
        axis.bar(x + (j - (len(counts) - 1) / 2) * width, totals, width, label=LABELS[name])
    axis.set_xticks(x, list(GROUPS))
    axis.set(ylabel="images mined", title="per group")
    if not per_class:
        axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    path = folder / "mined_classes.png"
    save_figure(fig, path)
    return path
