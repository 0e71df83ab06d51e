"""Stage-1 features of every split, computed once on Ray Train workers, for sweeps on a frozen backbone.

Written to <run_dir>/features/{train,val,test}.npy (row i = dataset index i; eval transforms, BatchNorm in eval
mode, the backbone exactly as stage 2 sees it without shift_bn) with `meta.json` naming the checkpoint's sha256,
so a new stage-1 checkpoint invalidates the cache. When data.unlabeled_split is set, the pool's features too
(`pool.npy`, row i = line i of the pool file), extracted through the pool's label-free view (data/pool.py
load_pool: labels all -1), so no pool label enters the cache; meta.json also holds the sha256 of the pool's
paths (not of its labels), so another pool invalidates it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import config as config_lib
from ..core import storage
from ..core.progress import progress
from ..data.loader import LoaderSpec, build_loader
from ..data.manifest import Manifest
from ..data.pool import load_pool
from ..data.sampling import shard_bounds
from ..data.splits import Split
from ..experiment import ExperimentConfig
from ..models.checkpoint import load_checkpoint, load_model
from ..runtime.raycluster import run_workers, worker_setup
from ..runtime.shared_rows import write_shared_rows
from ..train.trainer import load_splits

SPLITS = ("train", "val", "test")
POOL = "pool"


def stage1_checkpoint(cfg: ExperimentConfig) -> Path:
    """The backbone stage 2 starts from: stage2.checkpoint, else the run's stage-1 best checkpoint."""
    return cfg.layout.backbone_checkpoint(cfg.stage2.checkpoint)


def feature_splits(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The splits whose features the cache holds: train, val, test, and pool when data.unlabeled_split is set."""
    return (*SPLITS, POOL) if cfg.data.unlabeled_split is not None else SPLITS


def _splits_to_extract(cfg: ExperimentConfig) -> dict[str, Split]:
    """The labelled splits and, when configured, the pool's label-free view (UserError for a bad pool file)."""
    splits = load_splits(cfg)
    if cfg.data.unlabeled_split is not None:
        splits[POOL] = load_pool(cfg.data, splits).split
    return splits


def _paths_sha256(split: Split) -> str:
    """sha256 of a split's paths, one a line: what its features depend on (its labels do not count)."""
    return hashlib.sha256("\n".join(split.paths).encode()).hexdigest()


def cached_features(cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """The features of the three splits (+ the pool's when configured): split -> (N, D) float32, row i = dataset
    index i; extracted first if missing, made from another checkpoint, or (pool) from another pool file."""
    cfg = cfg.with_absolute_paths()
    layout, checkpoint = cfg.layout, stage1_checkpoint(cfg)
    names = feature_splits(cfg)
    sha = storage.sha256_file(checkpoint) if checkpoint.is_file() else None
    pool = cfg.data.unlabeled_split
    # a bad pool file is one line here, before any worker starts
    pool_sha = _paths_sha256(load_pool(cfg.data).split) if pool is not None else None
    meta = layout.features_meta
    recorded = json.loads(meta.read_text()) if meta.is_file() else {}
    stale = (
        sha is None
        or recorded.get("checkpoint_sha256") != sha
        or (pool is not None and recorded.get("pool_sha256") != pool_sha)
        or not all(layout.feature_file(name).is_file() for name in names)
    )
    if stale:
        # a missing or damaged checkpoint is one line here, before any worker starts (an
        # unchanged checkpoint, whose sha256 the cache recorded, loaded before)
        load_model(cfg.model, cfg.data.num_classes, checkpoint, "stage2.checkpoint")
        run_workers(
            extract_worker,
            {"config": config_lib.to_dict(cfg)},
            cfg.ray,
            "features",
            layout.ray,
            layout.features,
        )
        storage.write_json(meta, {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "pool": pool,
                                  "pool_sha256": pool_sha})  # fmt: skip
    return {name: np.load(layout.feature_file(name)) for name in names}


@dataclass(frozen=True)
class HeadInputs:
    """What training a classifier head on cached features starts from (sweep trials, the chosen threshold,
    reproduce's feature-space methods)."""

    features: dict[str, np.ndarray]  # train, val, test (+ pool): (N, D) float32
    labels: dict[str, np.ndarray]  # train, val, test: (N,) int64 (never the pool's)
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
    splits = load_splits(cfg)
    labels = {name: split.labels for name, split in splits.items()}
    manifest = Manifest.of_split(splits["train"], cfg.data.num_classes)
    return HeadInputs(features, labels, manifest, load_checkpoint(stage1_checkpoint(cfg))["model"])


@torch.inference_mode()
def extract_worker(loop_config: dict[str, Any]) -> None:
    cfg = config_lib.from_dict(ExperimentConfig, loop_config["config"], "<ray worker config>")
    ctx, device = worker_setup(cfg.ray)
    model = load_model(cfg.model, cfg.data.num_classes, stage1_checkpoint(cfg), "stage2.checkpoint")
    model = model.to(device).eval()
    batch = max(1, cfg.stage2.eval_batch_size // ctx.world_size)
    for name, split in _splits_to_extract(cfg).items():
        start, stop = shard_bounds(len(split), ctx.rank, ctx.world_size)
        rows = np.zeros((stop - start, model.feature_dim), dtype=np.float32)
        on_batch = progress(f"features {name}", len(split), ctx, cfg.logging.log_every_s)
        for b in build_loader(cfg.data, split, LoaderSpec.evaluate(batch), ctx):
            rows[b.indices.numpy() - start] = model.features(b.images.to(device)).float().cpu().numpy()
            on_batch(b.indices.shape[0])
        on_batch.close()
        shape = (len(split), model.feature_dim)
        write_shared_rows(cfg.layout.feature_file(name), shape, np.dtype(np.float32), start, rows, ctx)
