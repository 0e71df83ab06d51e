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
from .errors import UserError
from .models import ModelConfig, Network, build_model


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


def load_model(model_cfg: ModelConfig, num_classes: int, path: Path) -> Network:
    """The network of the experiment with the checkpoint's weights; clear errors for a missing or foreign file."""
    if not path.is_file():
        raise UserError(
            f"{path}: stage-1 checkpoint not found (run `lnr-dist stage1` first or set infer.checkpoint)"
        )
    try:
        weights = load_checkpoint(path)["model"]
    except Exception as exc:  # any unreadable file is the same user problem
        raise UserError(f"{path}: not a readable lnr-dist checkpoint: {exc}") from exc
    head = weights.get("classifier.weight")
    if head is not None and head.shape[0] != num_classes:
        raise UserError(
            f"{path}: checkpoint has {head.shape[0]} classes but data.num_classes is {num_classes}"
        )
    model = build_model(model_cfg, num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"{path}: checkpoint does not fit model.arch={model_cfg.arch}: {exc}") from exc
    return model
