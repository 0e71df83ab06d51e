"""PNG figures (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import storage  # noqa: E402


def save_figure(fig: Any, path: Path) -> None:
    storage.write_with(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def training_curves(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Train loss and validation accuracies per epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="train loss", title=title)
    for key, label in (
        ("val_top1", "val top-1"),
        ("val_balanced_acc", "val balanced"),
        ("val_few", "val few"),
    ):
        right.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    right.set(xlabel="epoch", ylabel="accuracy (%)")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    save_figure(fig, path)


def rounds_figure(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Iterated LNR, one point per round: left, the round's new flips (bars, count inside) and the labels changed
    from the dataset's so far (line); right, test few-shot accuracy (the issue's measure, bold) with test balanced
    accuracy and validation few-shot accuracy beside it. rows: dicts with round, num_flips, cumulative_flips,
    test_few, test_balanced_acc, val_few (None or missing: no point)."""
    rounds = [int(r["round"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    bars = left.bar(
        rounds, [r["num_flips"] for r in rows], width=0.6, color="#9ecae1", label="new flips this round"
    )
    left.bar_label(bars, [f"{r['num_flips']:,}" for r in rows], label_type="center", fontsize=8)
    left.plot(rounds, [r["cumulative_flips"] for r in rows], marker="o", color="#08519c",
              label="labels changed from the dataset's")  # fmt: skip
    left.set(xlabel="round", ylabel="flips", title=title)
    left.set_ylim(0, 1.15 * max([1, *(r["cumulative_flips"] for r in rows)]))
    for key, label, style, width in (("test_few", "test few-shot", "-", 2.2), ("test_balanced_acc", "test balanced",
                                     ":", 1.2), ("val_few", "val few-shot", "--", 1.2)):  # fmt: skip
        points = [(x, r.get(key)) for x, r in zip(rounds, rows, strict=True) if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", linestyle=style, linewidth=width, label=label)
    right.set(xlabel="round", ylabel="accuracy (%)", title="accuracy of each round's stage 2")
    for axis in (left, right):
        axis.set_xticks(rounds)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    save_figure(fig, path)
