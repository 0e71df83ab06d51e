"""Complete, atomic training checkpoints: `last.pt` every epoch, `best.pt` when validation improves.

Saved: model (unwrapped from DDP), optimizer, scheduler, grad scaler, the epoch just finished, best metric and
epoch, torch RNG state, the resolved config and any extra fields (e.g. the flip table's sha256). Everything is
tensors or plain Python values, so loading uses `weights_only=True`.

Writes are atomic, yet a file can still be damaged afterwards (a copy cut short, a full disk during a sync), so
the trainer keeps the file each save replaces as `<name>.prev.pt` and resumes from it when `last.pt` cannot be
read (`find_resume_point`). A damaged file is never taken for "no checkpoint": the run would silently start over.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import storage
from ..core.errors import UserError
from .network import ModelConfig, Network, build_model

log = logging.getLogger(__name__)

# What a training checkpoint must hold to resume a run (training_state writes them all).
TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "best", "torch_rng", "config")


class CheckpointError(UserError):
    """A checkpoint file that is missing or cannot be used; `problem` says what is wrong with `path`."""

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        super().__init__(f"{path}: {problem}: {advice}")
        self.path, self.problem, self.advice = path, problem, advice

    def __reduce__(self):  # raised in Ray workers and pickled back to the driver
        return (self.__class__, (self.path, self.problem, self.advice))


RESTORE_ADVICE = "restore it from a copy, or delete it and run the job that wrote it again"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def previous_path(path: Path) -> Path:
    """last.pt -> last.prev.pt: where `save_checkpoint(keep_previous=True)` keeps the file it replaces."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write `state` atomically; with keep_previous, the file it replaces becomes `previous_path(path)`.

    The rename comes first: if the job dies while writing, `path` is missing and the previous complete file is
    still there, which `find_resume_point` uses."""
    path = Path(path)
    if keep_previous and path.is_file():
        os.replace(path, previous_path(path))
    storage.write_with(path, lambda handle: torch.save(state, handle))


def load_checkpoint(
    path: Path, required: tuple[str, ...] = ("model",), advice: str = RESTORE_ADVICE
) -> dict[str, Any]:
    """The saved dict. Raises CheckpointError naming the file and what is wrong (missing, empty, truncated or
    damaged, not an lnr-dist checkpoint, without one of `required`), followed by `advice`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found", advice)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "checkpoint is an empty file (0 bytes)", advice)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, OSError, RuntimeError, UnpicklingError... for damage
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        raise CheckpointError(
            path, f"checkpoint is truncated or damaged ({size} bytes; {reason})", advice
        ) from exc
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(path, f"not an lnr-dist checkpoint (no {', '.join(missing)})", advice)
    return state


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from; `damaged` is the problem with last.pt when `path` is its previous
    version (None when last.pt itself was read)."""

    state: dict[str, Any]
    path: Path
    damaged: str | None = None


def find_resume_point(folder: Path, stage: str) -> ResumePoint | None:
    """What a run whose checkpoints are in `folder` resumes from: last.pt, else (missing or damaged)
    last.prev.pt; None when neither exists (a fresh run).

    Raises CheckpointError naming last.pt when neither is complete: starting over would throw away the run, and
    only the user can decide that."""
    last = Path(folder) / "last.pt"
    prev = previous_path(last)
    if not last.exists() and not prev.exists():
        return None
    problem = "checkpoint not found (the job was stopped while saving)"
    if last.exists():
        try:
            return ResumePoint(load_checkpoint(last, TRAINING_KEYS), last)
        except CheckpointError as exc:
            problem = exc.problem
    if not prev.exists():
        raise CheckpointError(
            last, f"{problem}, and there is no previous complete checkpoint ({prev.name}) to fall back to",
            f"delete it to start {stage} over, or restore it from a copy",
        )  # fmt: skip
    try:
        state = load_checkpoint(prev, TRAINING_KEYS)
    except CheckpointError as exc:
        raise CheckpointError(
            last, f"{problem}, and the previous checkpoint {prev.name} too ({exc.problem})",
            f"delete {last.name} and {prev.name} to start {stage} over, or restore them from a copy",
        ) from exc  # fmt: skip
    return ResumePoint(state, prev, problem)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a training checkpoint was written at; None when the file is missing or cannot be read."""
    try:
        return int(load_checkpoint(path, ("epoch",))["epoch"])
    except CheckpointError:
        return None


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


def load_model(
    model_cfg: ModelConfig, num_classes: int, path: Path, key: str = "infer.checkpoint"
) -> Network:
    """The network of the experiment with the checkpoint's weights (a stage-2 checkpoint's LWS too). Raises
    CheckpointError for a missing, damaged or foreign file, naming it and `key` (the setting that chose it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            path, "stage-1 checkpoint not found", f"run stage1 first (`lnr-dist stage1`) or set {key}"
        )
    weights = load_checkpoint(
        path, advice=f"restore it from a copy, run `lnr-dist stage1` again in a new run_dir, or set {key}"
    )["model"]
    head = weights.get("classifier.weight")
    if head is not None and head.shape[0] != num_classes:
        raise CheckpointError(
            path,
            f"checkpoint has {head.shape[0]} classes but data.num_classes is {num_classes}",
            f"set {key}",
        )
    model = build_model(model_cfg, num_classes)
    if any(
        name.startswith("scaling.") for name in weights
    ):  # a stage-2 model with LWS (iterated LNR predicts)
        model.enable_weight_scaling()
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        problem = f"checkpoint does not fit model.arch={model_cfg.arch} ({str(exc).splitlines()[0]})"
        raise CheckpointError(path, problem, f"set model.arch to the checkpoint's or {key}") from exc
    return model
