"""One epoch of training and one pass of evaluation: plain PyTorch, no Ray, no files (DeiT's engine.py shape)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.dist import all_reduce_sum
from ..data.loader import BatchLoader
from ..experiment import TrainConfig
from ..models.losses import FeatureLoss, mixup
from .metrics import MetricSums

LabelMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class UnlabeledStream:
    """The unlabelled side of a training epoch (FixMatch): `loader` yields one pool batch per labelled batch
    (images = weak view, strong = strong view, labels all -1 and never read); `weight` x `consistency`(weak
    logits (U, C), strong logits (U, C), indices (U,), epoch) -> models.losses.ConsistencyTerms is added to the
    labelled loss."""

    loader: BatchLoader
    consistency: nn.Module
    weight: float


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training stops instead of writing a broken checkpoint."""


def lr_multiplier(train: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The LR multiplier of `train`'s schedule as a function of the optimizer step (LambdaLR's lr_lambda).

    The trainer steps the scheduler after every optimizer step: the argument s is the number of optimizer steps
    taken so far (0 before the first). Each parameter group's LR is its own base LR times the multiplier (stage 2:
    the classifier at lr_factor x lr, LWS at lr, as in MiSLAS). The rule counts units u of one optimizer step
    (`schedule_unit: step`: u = s, P = steps_per_epoch units per epoch) or of one epoch (`schedule_unit: epoch`:
    u = s // steps_per_epoch, the 0-based epoch, P = 1, so the LR is set at the start of each epoch and held
    through it). With W = warmup_epochs * P and T = epochs * P:
    - warm-up, u < W: (u + 1) / W. Per epoch that is lr * k / warmup_epochs in the 1-based epochs
      k = 1..warmup_epochs, the rule of MiSLAS's and LNR's `adjust_learning_rate` (train_stage1.py:
      `lr * epoch / 5` for epochs 1-5, where 5 is hard-coded).
    - cosine: 0.5 * (1 + cos(pi * (u - W) / (T - W))), 0 at the end of training. Per epoch without warm-up that
      is `adjust_learning_rate` with `cos: True` (train_stage1.py) and in stage 2 (train_stage2.py, LNR's
      train_stage2_lnr.py): 0.5 * lr * (1 + cos(pi * e / epochs)).
    - step: gamma ** (number of milestones m with u >= m * P), i.e. x gamma once (1-based) epoch m has finished.
      Milestones (160, 180) with gamma 0.1 per epoch is `adjust_learning_rate` with `cos: False` (CIFAR):
      lr * 0.1 for epochs > 160, lr * 0.01 for epochs > 180.

    Args:
        train: the stage's TrainConfig (validated: milestones increasing inside (warmup_epochs, epochs]).
        steps_per_epoch: optimizer steps per epoch (the train loader's length).

    Raises:
        ValueError: steps_per_epoch < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    # count in units of one step or of one epoch; `per` = units per epoch
    per_epoch = train.schedule_unit == "epoch"
    per = 1 if per_epoch else steps_per_epoch
    warmup, total = train.warmup_epochs * per, train.epochs * per
    milestones = [m * per for m in train.milestones]

    def factor(step: int) -> float:
        unit = step // steps_per_epoch if per_epoch else step
        if unit < warmup:
            return (unit + 1) / warmup
        if train.schedule == "step":
            return train.gamma ** sum(unit >= m for m in milestones)
        progress = (unit - warmup) / (total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build_optimizer(param_groups: list[dict], train: TrainConfig) -> torch.optim.SGD:
    """SGD over the recipe's parameter groups (each with its own lr) with the recipe's momentum, weight decay and
    Nesterov flag: the one optimizer of every stage, on Ray Train and on cached features."""
    return torch.optim.SGD(
        param_groups,
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of `train` (stepped once per optimizer step; its state, the step count, is checkpointed)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(train, steps_per_epoch))


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
    unlabeled: UnlabeledStream | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train for one epoch; returns loss/accuracy summed over all ranks, the last LR and the time. `on_batch` is
    told each trained batch's labelled image count (core/progress.py: the epoch's progress).

    Under mixup the loss is lam * loss_fn(y) + (1 - lam) * loss_fn(y_perm). A FeatureLoss also gets the
    penultimate features, asked of the model itself (model(images, return_features=True)) so that a DDP-wrapped
    model's gradient hooks see them. An EpochScheduled loss is told the epoch by the caller (set_loss_epoch).

    With `unlabeled` (FixMatch, Sohn et al. 2020, Eq. 2-4): each step also reads one pool batch and runs ONE
    forward of [labelled; weak; strong] through the model (so DDP sees one forward per backward, and a trained
    block's BatchNorm sees all three as in FixMatch); the weak logits are detached (the pseudo-labels take no
    gradient) and loss = L_x + weight x L_u. The pool's labels are never read. Adds unlabeled_loss (mean L_u
    per step), pool_confident and pool_kept (fractions of pool images with max q >= tau, and kept by the gate
    too) to the returned stats.
    """
    model.train()
    wants_features = isinstance(loss_fn, FeatureLoss)
    # loss * n, correct (lam-weighted under mixup), n; L_u, steps with pool images, pool images, confident, kept
    sums = np.zeros(8)
    pool_batches = iter(unlabeled.loader) if unlabeled is not None else None
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        # one pool batch per labelled step, also on a skipped step, so that the two streams stay aligned
        pool = next(pool_batches, None) if pool_batches is not None else None
        if batch.images.shape[0] == 0:  # every image of the batch was skipped as undecodable
            scheduler.step()  # the schedule counts loader steps (per epoch: step // len(loader)): keep in step
            continue
        images = _prepare(batch.images, device, channels_last)
        labels = batch.labels if label_map is None else label_map(batch.indices, batch.labels)
        labels = labels.to(device, non_blocking=True)
        targets, lam = (labels, labels), 1.0
        if mixup_alpha > 0:
            images, *targets, lam = mixup(images, labels, mixup_alpha, rng or np.random.default_rng())
        n = images.shape[0]
        if pool is not None and pool.images.shape[0]:
            views = [_prepare(v, device, channels_last) for v in (pool.images, pool.strong)]
            images = torch.cat([images, *views])
        with torch.autocast(device.type, enabled=amp):
            logits, *features = model(images, return_features=True) if wants_features else (model(images),)
        logits, pool_logits, features = logits[:n], logits[n:], [f[:n] for f in features]
        loss = loss_fn(logits, targets[0], *features)
        if mixup_alpha > 0:
            loss = lam * loss + (1.0 - lam) * loss_fn(logits, targets[1], *features)
        if pool_logits.shape[0]:
            weak, strong = pool_logits.chunk(2)
            terms = unlabeled.consistency(weak.detach(), strong, pool.indices.to(device), epoch)
            loss = loss + unlabeled.weight * terms.loss
            counts = (weak.shape[0], terms.confident.sum().item(), terms.kept.sum().item())
            sums[3:] += (terms.loss.item(), 1, *counts)
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
        sums[:3] += (loss.item() * n, hits.item(), n)
        if on_batch is not None:
            on_batch(n)
    loss_sum, correct, seen, unlabeled_sum, pool_steps, pool_seen, confident, kept = all_reduce_sum(sums)
    stats = {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": 100.0 * correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "train_images": int(seen),
        "train_seconds": time.perf_counter() - start,
    }
    if unlabeled is not None:
        stats["unlabeled_loss"] = unlabeled_sum / max(pool_steps, 1)
        stats["pool_confident"] = confident / max(pool_seen, 1)
        stats["pool_kept"] = kept / max(pool_seen, 1)
    return stats


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
