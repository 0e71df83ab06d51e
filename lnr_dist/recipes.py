"""What differs between stage 1 and stage 2 is a recipe handed to the one trainer: the model and which of its
parameters train at which learning rate, the loss, the sampler, a per-batch label map and mixup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .data.manifest import Manifest
from .engine import LabelMap
from .experiment import ExperimentConfig, TrainConfig
from .losses import CrossEntropy
from .models import Network, build_model


@dataclass
class Recipe:
    model: Network
    param_groups: list[dict[str, Any]]
    loss: nn.Module
    train: TrainConfig
    balanced_sampling: bool = False
    label_map: LabelMap | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)


def stage1_recipe(cfg: ExperimentConfig, manifest: Manifest) -> Recipe:
    """Stage 1: the whole network, cross-entropy (with mixup when stage1.mixup_alpha > 0), instance sampling."""
    model = build_model(cfg.model, manifest.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    return Recipe(model, [{"params": params, "lr": cfg.stage1.lr}], CrossEntropy(), cfg.stage1)


RECIPES = {"stage1": stage1_recipe}


def build_recipe(cfg: ExperimentConfig, stage: str, manifest: Manifest) -> Recipe:
    if stage not in RECIPES:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[stage](cfg, manifest)
