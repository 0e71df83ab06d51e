"""Complete, atomic training checkpoints: `last.pt` every epoch, `best.pt` when validation improves.

Saved: model (unwrapped from DDP), optimizer, scheduler, grad scaler, the epoch just finished, best metric and
epoch, torch RNG state, the resolved config and any extra fields (e.g. the flip table's sha256). Everything is
tensors or plain Python values, so loading uses `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import storage


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    storage.write_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    best: dict[str, Any],
    config: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best": best,
        "torch_rng": torch.get_rng_state(),
        "config": config,
        **extra,
    }


def restore_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
