"""FixMatch stage 2 on a real local Ray cluster (2 CPU workers, DDP over gloo) on the mini set and its pool: one
epoch, then the same run resumed for a second (metrics.csv read back with the pool columns)."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from lnr_dist.models.checkpoint import load_checkpoint
from lnr_dist.models.network import build_model
from lnr_dist.train.trainer import fit

from ..conftest import mini_data_config, mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_fixmatch_trains_on_ray_with_the_pool_and_resumes(mini_root, tmp_path, ray_session):
    cfg = mini_experiment(
        mini_root, tmp_path / "run", stage2={"epochs": 1, "batch_size": 32, "eval_batch_size": 128, "lr": 0.05,
                                             "method": "fixmatch"},
    )  # fmt: skip
    fixmatch = replace(cfg.stage2.fixmatch, mu=2, tau=0.5, train_last_block=True)
    cfg = replace(cfg, data=mini_data_config(mini_root, pool=True, train_crop="padded"),
                  stage2=replace(cfg.stage2, fixmatch=fixmatch)).with_absolute_paths()  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, 10)
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)  # confident pseudo-labels from the first step
    path = cfg.layout.backbone_checkpoint()
    path.parent.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, path)

    results = fit(cfg, "stage2")
    out = cfg.layout.stage("stage2")
    assert results["world_size"] == 2 and results["unlabeled"]["pool_size"] == 586
    first = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert not torch.equal(first["features.body.8.weight"], model.state_dict()["features.body.8.weight"])
    assert torch.equal(first["features.body.0.weight"], model.state_dict()["features.body.0.weight"])

    longer = replace(cfg, stage2=replace(cfg.stage2, epochs=2))
    fit(longer, "stage2")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row in rows:
        assert (
            0 < float(row["pool_kept"]) <= float(row["pool_confident"]) <= 1
            and float(row["unlabeled_loss"]) > 0
        )
