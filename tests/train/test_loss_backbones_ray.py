"""A stage-1 loss backbone on a real local Ray cluster with 2 CPU workers (DDP), on the mini set."""

from __future__ import annotations

import csv
import math

import pytest

from lnr_dist.core.config import load_config
from lnr_dist.experiment import ExperimentConfig
from lnr_dist.stage2.registry import backbone_config
from lnr_dist.train.trainer import fit

from ..conftest import mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_range_loss_backbone_trains_through_ddp_with_two_workers(mini_root, tmp_path, ray_session):
    base = mini_experiment(mini_root, tmp_path, stage1={"epochs": 1, "warmup_epochs": 0})
    cfg = backbone_config(base, "range_loss").with_absolute_paths()
    results = fit(cfg, "stage1")
    out = cfg.layout.stage("stage1")
    assert out.parent == tmp_path / "range_loss"
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert results["world_size"] == 2 and results["best_epoch"] == 0
    saved = load_config(ExperimentConfig, out / "config.yaml")
    assert saved.stage1.range_loss.enabled and saved.stage1.mixup_alpha == 0.0
