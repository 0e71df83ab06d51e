"""Stage 2 on cached features: a method's classifier head (+ LWS) trained with its loss and sampler on
precomputed stage-1 features, with the stage-2 recipe's optimizer and schedule (train/engine.py). The sweep's
trials and the `features` backend use it: the same recipe as stage 2 without touching an image (features of
un-augmented images stand in for those of augmented ones; the backbone and its BN untouched)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import storage
from ..data.manifest import Manifest
from ..data.sampling import sampler_order
from ..experiment import Stage2Config
from ..lnr import FlipTable
from ..models.losses import set_loss_epoch
from ..models.network import LearnableWeightScaling
from ..stage2.registry import Stage2Method
from ..train.calibration import fit_temperature, metrics_at
from ..train.engine import build_lr_scheduler, build_optimizer
from ..train.recipes import head_param_groups
from ..train.scalars import EpochScalars


class Head(nn.Module):
    """The stage-1 classifier (copied) followed by LWS: features -> logits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, lws: bool) -> None:
        super().__init__()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)
        self.scaling: nn.Module = LearnableWeightScaling(weight.shape[0]) if lws else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scaling(self.classifier(features))

    def save(self, path: Path) -> None:
        """head.pt (atomic): the weights and whether LWS is on, all load_head needs."""
        state = {"head": self.state_dict(), "lws": not isinstance(self.scaling, nn.Identity)}
        storage.write_with(path, lambda handle: torch.save(state, handle))


def load_head(path: Path) -> Head:
    """The head a run on cached features saved (Head.save)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["head"]
    head = Head(weights["classifier.weight"], weights["classifier.bias"], bool(state["lws"]))
    head.load_state_dict(weights)
    return head.eval()


def predict_probs(head: Head, features: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
    """(N, D) float32 features -> (N, C) float32 softmax of `head`, in blocks of rows (bounded memory)."""
    parts = []
    with torch.no_grad():
        for start in range(0, features.shape[0], batch_rows):
            logits = head(torch.from_numpy(np.ascontiguousarray(features[start : start + batch_rows])))
            parts.append(torch.softmax(logits.float(), dim=1).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, head.classifier.out_features), np.float32)


@dataclass
class HeadResult:
    head: Head
    best_epoch: int
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def train_head(
    s2: Stage2Config,
    method: Stage2Method,
    epochs: int,
    manifest: Manifest,
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    classifier: dict[str, torch.Tensor],
    flips: FlipTable | None,
    seed: int,
    objective: str,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    tensorboard: Path | None = None,
) -> HeadResult:
    """Train `method`'s head (its loss, sampler and LWS choice, the stage-2 recipe's optimizer and schedule) on
    features["train"] ((N, D) float32) with labels["train"] ((N,) int64) replaced through `flips`; keep the
    epoch with the best validation `objective` (a metric name of metrics_at). With `tensorboard` (a folder),
    each epoch's mean training loss, last LR, feature rows per second and validation metrics go there as
    TensorBoard scalars (train/scalars.py; a head always trains from epoch 0, so earlier curves are replaced)."""
    with EpochScalars(tensorboard) as scalars:
        torch.manual_seed(seed)
        train_labels = labels["train"]
        targets = (
            flips.apply(np.arange(train_labels.size), train_labels) if flips is not None else train_labels
        )
        x, y = torch.from_numpy(features["train"]), torch.from_numpy(targets)
        x_val, y_val = torch.from_numpy(features["val"]), torch.from_numpy(labels["val"])
        lws = method.uses_lws(s2)
        head = Head(classifier["classifier.weight"], classifier["classifier.bias"], lws)
        optimizer = build_optimizer(head_param_groups(s2, head.classifier, head.scaling if lws else None), s2)
        steps = math.ceil(len(y) / s2.batch_size)
        # `epochs` may be the sweep's shorter tune.epochs: the schedule spans the epochs actually run
        schedule = s2 if epochs == s2.epochs else replace(s2, epochs=epochs)
        scheduler = build_lr_scheduler(optimizer, schedule, steps)
        loss_fn, sampler = method.loss(s2, manifest), method.sampler_of(s2)
        result = HeadResult(head, -1, {objective: -math.inf})
        best_state = copy.deepcopy(head.state_dict())
        for epoch in range(epochs):
            set_loss_epoch(loss_fn, epoch, epochs)
            order = sampler_order(train_labels, sampler, seed, epoch)
            head.train()
            loss_sum, started = 0.0, time.perf_counter()
            for start in range(0, len(order), s2.batch_size):
                rows = torch.from_numpy(order[start : start + s2.batch_size])
                loss = loss_fn(head(x[rows]), y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(rows)
            seconds = time.perf_counter() - started
            head.eval()
            with torch.no_grad():
                metrics = metrics_at(head(x_val), y_val, manifest)
            metrics = {k: v for k, v in metrics.items() if k != "per_class_acc"}
            result.history.append({"epoch": epoch, **metrics})
            scalars.write(epoch, {"train_loss": loss_sum / max(len(order), 1), "lr": optimizer.param_groups[0]["lr"],
                                  "images_per_second": len(order) / max(seconds, 1e-9),
                                  **{f"val_{k}": v for k, v in metrics.items()}})  # fmt: skip
            if metrics[objective] > result.best[objective]:
                result.best_epoch, result.best = epoch, metrics
                best_state = copy.deepcopy(head.state_dict())
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        head.load_state_dict(best_state)
        return result


def fresh_classifier(dim: int, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A new linear layer's weights (C, D) and bias (C,) as torch initialises nn.Linear, from `seed` (the global
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(dim, num_classes)
    return {"classifier.weight": layer.weight.detach(), "classifier.bias": layer.bias.detach()}


def fresh_head_fitter(
    s2: Stage2Config,
    method: Stage2Method,
    manifest: Manifest,
    labels: dict[str, np.ndarray],
    seed: int,
    objective: str,
    tensorboard: Path | None = None,
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """The `fit_head` a method's predict hook receives (stage2/registry.py FitHead): (train (N, D), val, test
    float32 rows) -> `method`'s head trained from a fresh linear layer (fresh_classifier) on train with
    labels["train"], the epoch picked on validation `objective`, and its (val, test) logits (n, C) float32 with
    {"best_epoch": e}. `tensorboard`: as train_head's."""

    def fit(
        train: np.ndarray, val: np.ndarray, test: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        classifier = fresh_classifier(train.shape[1], manifest.num_classes, seed)
        result = train_head(s2, method, s2.epochs, manifest, {"train": train, "val": val}, labels, classifier, None,
                            seed, objective, tensorboard=tensorboard)  # fmt: skip
        with torch.no_grad():
            val_logits, test_logits = (result.head(torch.from_numpy(x)).numpy() for x in (val, test))
        return val_logits, test_logits, {"best_epoch": result.best_epoch}

    return fit


def evaluate_head(
    head: Head, features: dict[str, np.ndarray], labels: dict[str, np.ndarray], manifest: Manifest
):
    """Test metrics before and after temperature scaling fitted on validation."""
    with torch.no_grad():
        val = head(torch.from_numpy(features["val"]))
        test = head(torch.from_numpy(features["test"]))
    return evaluate_logits(val, test, labels, manifest)


def evaluate_logits(
    val: torch.Tensor, test: torch.Tensor, labels: dict[str, np.ndarray], manifest: Manifest
) -> dict[str, Any]:
    """evaluate_head on logits already computed."""
    y_val, y_test = torch.from_numpy(labels["val"]), torch.from_numpy(labels["test"])
    temperature = fit_temperature(val, y_val)
    return {
        "test": metrics_at(test, y_test, manifest),
        "test_calibrated": metrics_at(test, y_test, manifest, temperature),
        "temperature": temperature,
    }
