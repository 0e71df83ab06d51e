"""Stage-1 features of every split, computed once on Ray Train workers, for sweeps on a frozen backbone.

Written to <run_dir>/features/{train,val,test}.npy (row i = dataset index i; eval transforms, BatchNorm in eval
mode, the backbone exactly as stage 2 sees it without shift_bn) with `meta.json` naming the checkpoint's sha256,
so a new stage-1 checkpoint invalidates the cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config as config_lib
from ..core import storage
from ..data.loader import LoaderSpec, build_loader
from ..data.manifest import Manifest
from ..data.sampling import shard_bounds
from ..experiment import ExperimentConfig
from ..models.checkpoint import load_checkpoint, load_model
from ..runtime.raycluster import run_workers, worker_setup
from ..runtime.shared_rows import write_shared_rows
from ..train.trainer import load_splits

SPLITS = ("train", "val", "test")


def stage1_checkpoint(cfg: ExperimentConfig) -> Path:
    """The backbone stage 2 starts from: stage2.checkpoint, else the run's stage-1 best checkpoint."""
    return cfg.layout.backbone_checkpoint(cfg.stage2.checkpoint)


def cached_features(cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """The features of the three splits, extracted first if missing or made from another checkpoint."""
    cfg = cfg.with_absolute_paths()
    layout, checkpoint = cfg.layout, stage1_checkpoint(cfg)
    sha = storage.sha256_file(checkpoint) if checkpoint.is_file() else None
    meta = layout.features_meta
    if sha is None or not meta.is_file() or json.loads(meta.read_text()).get("checkpoint_sha256") != sha:
        # a missing or damaged checkpoint is one line here, before any worker starts (an unchanged one, whose
        # sha256 the cache recorded, loaded before)
        load_model(cfg.model, cfg.data.num_classes, checkpoint, "stage2.checkpoint")
        run_workers(
            extract_worker,
            {"config": config_lib.to_dict(cfg)},
            cfg.ray,
            "features",
            layout.ray,
            layout.features,
        )
        storage.write_json(meta, {"checkpoint": str(checkpoint), "checkpoint_sha256": sha})
    return {name: np.load(layout.feature_file(name)) for name in SPLITS}


@dataclass(frozen=True)
class HeadInputs:
    """What training a classifier head on cached features starts from (sweep trials, the chosen threshold,
    reproduce's feature-space methods)."""

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    manifest: Manifest
    classifier: dict[str, torch.Tensor]  # the stage-1 weights the head starts from


def head_inputs(cfg: ExperimentConfig, extract: bool = True) -> HeadInputs:
    """Features (extracted first unless `extract` is False: a sweep trial reads what the driver wrote), labels,
    manifest and stage-1 classifier."""
    cfg = cfg.with_absolute_paths()
    if extract:
        features = cached_features(cfg)
    else:
        features = {name: np.load(cfg.layout.feature_file(name)) for name in SPLITS}
    labels = {name: split.labels for name, split in load_splits(cfg).items()}
    manifest = Manifest.from_labels(labels["train"], cfg.data.num_classes)
    return HeadInputs(features, labels, manifest, load_checkpoint(stage1_checkpoint(cfg))["model"])


@torch.inference_mode()
def extract_worker(loop_config: dict[str, Any]) -> None:
    cfg = config_lib.from_dict(ExperimentConfig, loop_config["config"], "<ray worker config>")
    ctx, device = worker_setup(cfg.ray)
    model = load_model(cfg.model, cfg.data.num_classes, stage1_checkpoint(cfg), "stage2.checkpoint")
    model = model.to(device).eval()
    batch = max(1, cfg.stage2.eval_batch_size // ctx.world_size)
    for name, split in load_splits(cfg).items():
        start, stop = shard_bounds(len(split), ctx.rank, ctx.world_size)
        rows = np.zeros((stop - start, model.feature_dim), dtype=np.float32)
        for b in build_loader(cfg.data, split, LoaderSpec.evaluate(batch), ctx):
            rows[b.indices.numpy() - start] = model.features(b.images.to(device)).float().cpu().numpy()
        shape = (len(split), model.feature_dim)
        write_shared_rows(cfg.layout.feature_file(name), shape, np.dtype(np.float32), start, rows, ctx)
