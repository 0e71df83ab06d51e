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
