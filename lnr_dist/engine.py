"""One epoch of training and one pass of evaluation: plain PyTorch, no Ray, no files (DeiT's engine.py shape)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.loader import BatchLoader
from .dist import all_reduce_sum
from .losses import mixup
from .metrics import MetricSums

LabelMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of writing a broken checkpoint."""


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up to 1, then cosine decay to 0 (per step, not per epoch)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _prepare(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loss_fn: nn.Module,
    device: torch.device,
    epoch: int,
    *,
    mixup_alpha: float = 0.0,
    label_map: LabelMap | None = None,
    rng: np.random.Generator | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Train for one epoch; returns loss/accuracy summed over all ranks, the last LR and the time."""
    model.train()
    sums = np.zeros(3)  # loss * n, correct (lam-weighted under mixup), n
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        if batch.images.shape[0] == 0:  # every image of the batch was skipped as undecodable
            continue
        images = _prepare(batch.images, device, channels_last)
        labels = batch.labels if label_map is None else label_map(batch.indices, batch.labels)
        labels = labels.to(device, non_blocking=True)
        targets, lam = (labels, labels), 1.0
        if mixup_alpha > 0:
            images, *targets, lam = mixup(images, labels, mixup_alpha, rng or np.random.default_rng())
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        loss = lam * loss_fn(logits, targets[0]) + (1.0 - lam) * loss_fn(logits, targets[1])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch}, step {step}: training stopped "
                "(lower the learning rate, check the data, or turn AMP off)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        with torch.no_grad():
            predicted = logits.argmax(1)
            hits = lam * (predicted == targets[0]).sum() + (1 - lam) * (predicted == targets[1]).sum()
        n = labels.shape[0]
        sums += (loss.item() * n, hits.item(), n)
    loss_sum, correct, seen = all_reduce_sum(sums)
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "train_images": int(seen),
        "train_seconds": time.perf_counter() - start,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    device: torch.device,
    num_classes: int,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> MetricSums:
    """This rank's metric sums over its shard (all-reduce them for global metrics).

    Pass the model unwrapped from DDP: exact evaluation shards may differ by one batch between ranks, and DDP's
    forward would wait for the other ranks (buffer broadcast).
    """
    model.eval()
    sums = MetricSums.zeros(num_classes)
    for batch in loader:
        if batch.images.shape[0] == 0:
            continue
        with torch.autocast(device.type, enabled=amp):
            logits = model(_prepare(batch.images, device, channels_last))
        sums.update(logits, batch.labels)
    return sums


@torch.inference_mode()
def collect_logits(
    model: nn.Module,
    loader: BatchLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (n, C) float32 logits, (n,) int64 labels and (n,) int64 dataset indices on the CPU (pass the
    model unwrapped from DDP)."""
    model.eval()
    logits, labels, indices = [], [], []
    for batch in loader:
        if batch.images.shape[0] == 0:
            continue
        with torch.autocast(device.type, enabled=amp):
            logits.append(model(_prepare(batch.images, device, channels_last)).float().cpu())
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not logits:
        empty = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, 0), empty, empty
    return torch.cat(logits), torch.cat(labels), torch.cat(indices)
