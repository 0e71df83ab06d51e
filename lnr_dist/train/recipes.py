"""What differs between stage 1 and stage 2 is a recipe handed to the one trainer: the model and which of its
parameters train at which learning rate, the loss, the sampler, a per-batch label map, mixup, and for a method
with an unlabelled part (FixMatch) the pool and that part."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import storage
from ..data.manifest import Manifest
from ..data.pool import load_pool
from ..data.sampling import Sampler
from ..data.splits import Split
from ..experiment import ExperimentConfig, Stage2Config, TrainConfig
from ..models.checkpoint import load_model
from ..models.losses import CrossEntropy, RangeLoss, WithRangeLoss
from ..models.network import Network, build_model
from ..stage2.flip_sources import flip_report
from ..stage2.registry import Unlabeled, bias_compensation, method_of, stage2_flips
from .engine import LabelMap


@dataclass(frozen=True)
class UnlabeledRecipe:
    """The pool a method's unlabelled part reads (`pool`: data/pool.py's view, every label UNLABELED) and that
    part (stage2.registry.Unlabeled); the trainer turns them into a second loader and a consistency term."""

    pool: Split
    part: Unlabeled


@dataclass
class Recipe:
    model: Network
    param_groups: list[dict[str, Any]]
    loss: nn.Module
    train: TrainConfig
    sampler: Sampler = "random"  # data/sampling.py
    label_map: LabelMap | None = None
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    unlabeled: UnlabeledRecipe | None = None


# stage1.loss -> its factory (TrainConfig, Manifest) -> module(logits (B, C), targets (B,) int64) -> scalar
STAGE1_LOSSES: dict[str, Callable[[TrainConfig, Manifest], nn.Module]] = {
    "ce": lambda train, manifest: CrossEntropy(),
    "bias_compensation": bias_compensation,
}


def stage1_loss(train: TrainConfig, manifest: Manifest) -> nn.Module:
    """stage1.loss, plus beta x the range loss on the features when stage1.range_loss.enabled (a FeatureLoss
    then: the engine hands it the penultimate features)."""
    loss = STAGE1_LOSSES[train.loss](train, manifest)
    ranged = train.range_loss
    if ranged.enabled:
        loss = WithRangeLoss(loss, RangeLoss(ranged.margin, ranged.k, ranged.intra), ranged.beta)
    return loss


def stage1_recipe(cfg: ExperimentConfig, manifest: Manifest, train_labels: np.ndarray) -> Recipe:
    """Stage 1: the whole network, stage1.loss (+ range loss; with mixup when stage1.mixup_alpha > 0),
    instance sampling."""
    model = build_model(cfg.model, manifest.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    return Recipe(
        model, [{"params": params, "lr": cfg.stage1.lr}], stage1_loss(cfg.stage1, manifest), cfg.stage1
    )


def head_param_groups(
    s2: Stage2Config, classifier: nn.Module, scaling: nn.Module | None, blocks: tuple[nn.Module, ...] = ()
) -> list[dict[str, Any]]:
    """Stage 2's optimizer groups: the classifier (and any trained backbone `blocks`) at lr_factor * lr, the
    weight scaling (LWS) at lr."""
    params = list(classifier.parameters()) + [p for block in blocks for p in block.parameters()]
    groups = [{"params": params, "lr": s2.lr * s2.lr_factor}]
    if scaling is not None:
        groups.append({"params": list(scaling.parameters()), "lr": s2.lr})
    return groups


# A flip table that replaces the method's label policy: (flips.npz path, the threshold it was made at)
FlipsOverride = tuple[str, float | None]


def stage2_recipe(
    cfg: ExperimentConfig, manifest: Manifest, train_labels: np.ndarray, flips: FlipsOverride | None = None
) -> Recipe:
    """Stage 2 of cfg.stage2.method (lnr_dist.stage2.registry): the stage-1 network with frozen features (+
    optional BN shift), classifier (+ LWS) retrained with the method's loss and sampler, labels replaced through
    the method's flip table at the run's threshold policy, or through `flips` (iterated LNR's round r: the table
    from the dataset's labels to round r's, lnr_dist/rounds.py). A method with an unlabelled part also gets the pool
    (data.unlabeled_split, label-free: data/pool.py load_pool, whose UserError names the key when it is unset
    or missing) and, when that part asks for it, a trained last backbone block."""
    s2 = cfg.stage2
    method = method_of(cfg)
    unlabeled = None
    if method.unlabeled is not None:
        unlabeled = UnlabeledRecipe(load_pool(cfg.data).split, method.unlabeled(s2, manifest, cfg.seed))
    path = cfg.layout.backbone_checkpoint(s2.checkpoint)
    model = load_model(cfg.model, manifest.num_classes, path, "stage2.checkpoint")
    model.freeze_features(s2.shift_bn, unlabeled is not None and unlabeled.part.train_last_block)
    lws = method.uses_lws(s2)
    if lws:
        model.enable_weight_scaling()
    groups = head_param_groups(s2, model.classifier, model.scaling if lws else None, model.trained_blocks)
    if flips is None:
        table, threshold = stage2_flips(cfg, train_labels)
    else:
        table, threshold = storage.load_flip_table(flips[0]), flips[1]
    label_map = None
    if table is not None:

        def label_map(indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(table.apply(indices.numpy(), labels.numpy()))

    report = flip_report(method.name, table, threshold)
    extra: dict[str, Any] = {"flips": report, "stage1_checkpoint": str(path)}
    if unlabeled is not None:
        extra["unlabeled"] = {"pool": unlabeled.pool.file, "pool_size": len(unlabeled.pool)}
    return Recipe(
        model, groups, method.loss(s2, manifest), s2, method.sampler_of(s2), label_map,
        {"results_extra": extra}, unlabeled,
    )  # fmt: skip


RECIPES = {"stage1": stage1_recipe, "stage2": stage2_recipe}


def build_recipe(
    cfg: ExperimentConfig,
    stage: str,
    manifest: Manifest,
    train_labels: np.ndarray,
    flips: FlipsOverride | None = None,
) -> Recipe:
    """The recipe of `stage`; `flips` (stage 2 only) replaces the method's label policy (stage2_recipe)."""
    if stage not in RECIPES:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(RECIPES)}")
    if flips is not None:
        if stage != "stage2":
            raise ValueError("a flip table replaces stage 2's label policy only")
        return stage2_recipe(cfg, manifest, train_labels, flips)
    return RECIPES[stage](cfg, manifest, train_labels)
