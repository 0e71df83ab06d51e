"""The binary long-tailed task: one digit of the mini set (label 0, majority) against another (label 1), the
minority subsampled in training to `ratio` x the majority count. Inputs are the images as 8x8 grey pixels.

The same two stages as LNR, small enough to run in-process: stage 1 trains an MLP with mixup; the stage-1 model
predicts every training sample twice under a random one-pixel shift and the minority probabilities are
averaged; binary LNR (lnr.binary_flips) flips majority samples; stage 2 re-trains the last layer on the (flipped)
labels. Compared at `ratio`/`threshold`: no flip, LNR, random flips (as many as LNR), SMOTE and ADASYN on the
stage-1 hidden features; swept over ratios x thresholds: flip rate and minority recall of LNR.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.errors import UserError
from ..experiment import BinaryConfig, ExperimentConfig
from ..lnr import FlipTable, binary_flips
from ..stage2.oversample import NotApplicable, adasyn, smote
from ..train.trainer import load_splits


def _pixels(paths: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("L").resize((8, 8), Image.BILINEAR), np.float32).ravel()
                     / 255.0 for p in paths])  # fmt: skip


def load_task(cfg: ExperimentConfig, bcfg: BinaryConfig, ratio: float, seed: int) -> dict[str, tuple]:
    """{split: (x (n, 64) float32, y (n,) 0/1)} with the training minority subsampled to `ratio`."""
    rng = np.random.default_rng([seed, 0xB1])
    task = {}
    for name, split in load_splits(cfg).items():
        rows = [i for i in range(len(split)) if split.labels[i] in (bcfg.majority_class, bcfg.minority_class)]
        y = (split.labels[rows] == bcfg.minority_class).astype(np.int64)
        if name == "train":
            majority, minority = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
            keep = max(2, round(ratio * majority.size))
            if keep > minority.size:
                raise UserError(
                    f"reproduce.binary ratio {ratio}: {keep} minority samples needed (class {bcfg.minority_class} "
                    f"in the train split), {minority.size} exist: lower reproduce.binary.ratio / ratios"
                )
            picked = np.sort(np.concatenate([majority, rng.choice(minority, keep, replace=False)]))
            rows, y = [rows[i] for i in picked], y[picked]
        task[name] = (_pixels([split.full_path(i) for i in rows]), y)
    return task


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.out = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random shift of each 8x8 image by up to one pixel (train-time augmentation)."""
    images = x.reshape(-1, 8, 8)
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(rng.integers(-1, 2, size=(len(images), 2))):
        out[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
    return out.reshape(len(x), 64)


def stage1(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> _MLP:
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x5171])
    model = _MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    targets = np.eye(2, dtype=np.float32)[y]
    for _ in range(epochs):
        lam = float(rng.beta(0.2, 0.2))
        perm = rng.permutation(len(y))
        xb = _shift(x, rng)
        mixed = torch.from_numpy(lam * xb + (1 - lam) * xb[perm])
        soft = torch.from_numpy(lam * targets + (1 - lam) * targets[perm])
        loss = -(soft * torch.log_softmax(model(mixed), 1)).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def minority_probability(model: _MLP, x: np.ndarray, seed: int, passes: int = 2) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x1F])
    q = [torch.softmax(model(torch.from_numpy(_shift(x, rng))), 1)[:, 1].numpy() for _ in range(passes)]
    return np.mean(q, axis=0)


def stage2(model: _MLP, features: np.ndarray, targets: np.ndarray, epochs: int, seed: int) -> nn.Linear:
    """The last layer re-trained (from stage 1's) on fixed hidden features and the given targets."""
    torch.manual_seed(seed)
    head = nn.Linear(32, 2)
    head.load_state_dict(model.out.state_dict())
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    x, t = torch.from_numpy(features), torch.from_numpy(targets)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(head(x), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head


@torch.no_grad()
def _hidden(model: _MLP, x: np.ndarray) -> np.ndarray:
    return model.hidden(torch.from_numpy(x)).numpy()


@torch.no_grad()
def binary_metrics(head: nn.Linear, features: np.ndarray, y: np.ndarray) -> dict[str, float]:
    predicted = head(torch.from_numpy(features)).argmax(1).numpy()
    recall = [float((predicted[y == k] == k).mean() * 100) for k in (0, 1)]
    return {"minority_recall": recall[1], "majority_recall": recall[0], "balanced_acc": float(np.mean(recall)),
            "top1": float((predicted == y).mean() * 100)}  # fmt: skip


# the binary task's compared methods: each makes (features, targets, flips) for stage 2 from
# (y, q, features, threshold, seed, lnr_count); the task has its own small models, not the stage-2 registry's
Targets = tuple[np.ndarray, np.ndarray, int]


def _no_flip(y, q, features, threshold, seed, lnr_count) -> Targets:
    return features, y, 0


def _lnr(y, q, features, threshold, seed, lnr_count) -> Targets:
    indices = np.arange(y.size, dtype=np.int64)
    table = binary_flips(q, y, indices, threshold, seed)
    return features, table.apply(indices, y), len(table)


def _random(y, q, features, threshold, seed, lnr_count) -> Targets:
    """As many majority samples as LNR flips, chosen at random."""
    rng = np.random.default_rng([seed, 0x52])
    chosen = np.sort(rng.choice(np.flatnonzero(y == 0), size=lnr_count, replace=False))
    table = FlipTable(chosen, np.zeros_like(chosen), np.ones_like(chosen))
    return features, table.apply(np.arange(y.size, dtype=np.int64), y), len(table)


def _oversampled(resample):
    def targets(y, q, features, threshold, seed, lnr_count) -> Targets:
        x, t = resample(features, y, seed)
        return x, t, 0

    return targets


COMPARED = {"no_flip": _no_flip, "lnr": _lnr, "random": _random, "smote": _oversampled(smote),
            "adasyn": _oversampled(adasyn)}  # fmt: skip


def run_binary(cfg: ExperimentConfig, seed: int) -> dict[str, Any]:
    """The comparison at (ratio, threshold) and the ratio x threshold sweep of LNR, for one seed."""
    bcfg = cfg.reproduce.binary
    torch.set_num_threads(1)
    comparison, sweep = {}, []
    for ratio in sorted({bcfg.ratio, *bcfg.ratios}):
        task = load_task(cfg, bcfg, ratio, seed)
        (x, y), (x_test, y_test) = task["train"], task["test"]
        model = stage1(x, y, bcfg.epochs, seed)
        q = minority_probability(model, x, seed)
        hidden, hidden_test = _hidden(model, x), _hidden(model, x_test)
        thresholds = sorted({*bcfg.thresholds, *((bcfg.threshold,) if ratio == bcfg.ratio else ())})
        for threshold in thresholds:
            features, targets, flips = _lnr(y, q, hidden, threshold, seed, 0)
            head = stage2(model, features, targets, bcfg.epochs, seed)
            metrics = binary_metrics(head, hidden_test, y_test)
            sweep.append({"ratio": ratio, "threshold": threshold, "flips": flips,
                          "flip_rate": 100.0 * flips / int((y == 0).sum()), **metrics})  # fmt: skip
        if ratio != bcfg.ratio:
            continue
        lnr_count = next(
            r["flips"] for r in sweep if r["ratio"] == ratio and r["threshold"] == bcfg.threshold
        )
        for method, make_targets in COMPARED.items():
            try:
                features, targets, flips = make_targets(y, q, hidden, bcfg.threshold, seed, lnr_count)
            except NotApplicable as exc:
                comparison[method] = {"not_applicable": str(exc)}
                continue
            head = stage2(model, features, targets, bcfg.epochs, seed)
            comparison[method] = {"flips": flips, **binary_metrics(head, hidden_test, y_test)}
    return {"ratio": bcfg.ratio, "threshold": bcfg.threshold, "comparison": comparison, "sweep": sweep,
            "classes": {"majority": bcfg.majority_class, "minority": bcfg.minority_class}}  # fmt: skip
