"""Minority-class mining on the real mini set: the features job extracts the pool's features on Ray workers
beside the labelled splits', once, and `mine` and the `mining` method read the same cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lnr_dist.data.pool import load_pool
from lnr_dist.jobs import JOBS
from tests.conftest import mini_data_config, mini_experiment


@pytest.mark.ray
def test_mine_and_the_mining_method_on_the_mini_set(mini_root, stage1_checkpoint, tmp_path):
    cfg = mini_experiment(
        mini_root, tmp_path / "run", data=mini_data_config(mini_root, pool=True, train_crop="padded"),
        stage2={"checkpoint": str(stage1_checkpoint), "epochs": 2, "batch_size": 32, "eval_batch_size": 128,
                "method": "mining", "backend": "features"},
        mining={"budget": 20},
    ).with_absolute_paths()  # fmt: skip
    layout = cfg.layout
    summary = JOBS["mine"](cfg)
    pool = load_pool(cfg.data)
    features = {name: np.load(layout.feature_file(name)) for name in ("train", "pool")}
    assert features["pool"].shape == (len(pool), features["train"].shape[1])
    assert (
        np.isfinite(features["pool"]).all() and np.abs(features["pool"]).sum(1).min() > 0
    )  # every row written
    meta = json.loads(layout.features_meta.read_text())
    assert meta["pool"] == cfg.data.unlabeled_split and len(meta["pool_sha256"]) == 64
    assert set(summary["precision_at_k"]) == {"mining", "random", "max_softmax", "entropy"}
    with open(layout.mine_file("mined.csv"), newline="") as handle:
        mined = [int(row["index"]) for row in csv.DictReader(handle)]
    assert len(mined) == 20
    written = layout.feature_file("pool").stat().st_mtime_ns
    results = JOBS["stage2"](cfg, str(tmp_path / "mining"))
    assert layout.feature_file("pool").stat().st_mtime_ns == written  # the cache served the method too
    assert results["extra_train"]["pool_indices"] == mined  # the same seed mines the same images
    assert results["test"]["top1"] > 0
