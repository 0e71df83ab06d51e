"""Iterated LNR end to end on the mini set and a real local Ray cluster: two rounds on cached features and on
images (round 2's sharded inference with round 1's stage-2 model)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lnr_dist.core import storage
from lnr_dist.core.layout import RunLayout
from lnr_dist.infer.inference import run_inference
from lnr_dist.jobs import JOBS
from lnr_dist.lnr import compute_flips, labels_after
from lnr_dist.train.trainer import load_splits

from .conftest import mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def lnr_run(mini_root, tmp_path_factory, stage1_checkpoint):
    """A run folder with the inference job's outputs at threshold 1.0 (predictions saved), 2 rounds asked."""
    cfg = mini_experiment(
        mini_root, tmp_path_factory.mktemp("rounds"),
        infer={"checkpoint": str(stage1_checkpoint), "threshold": 1.0, "augment": "eval", "batch_size": 96},
        stage2={"checkpoint": str(stage1_checkpoint), "epochs": 2, "lr": 0.05, "rounds": 2},
    ).with_absolute_paths()  # fmt: skip
    run_inference(cfg)
    return cfg


@pytest.mark.parametrize("backend", ["features", "images"])
def test_two_rounds_on_the_mini_set(lnr_run, backend):
    cfg = replace(lnr_run, stage2=replace(lnr_run.stage2, backend=backend))
    folder = lnr_run.layout.root / f"lnr_{backend}"
    results = JOBS["stage2"](cfg, str(folder))
    labels = load_splits(cfg)["train"].labels
    first = storage.load_flip_table(RunLayout.round(folder, 1).flips)
    assert storage.flip_table_sha256(first) == storage.flip_table_sha256(
        storage.load_flip_table(cfg.layout.infer_file("flips.npz"))
    )  # round 1: the inference job's own flips (policy infer)
    two = RunLayout.round(folder, 2)
    second = storage.load_flip_table(two.flips)
    after_one = labels_after(labels, [first])
    np.testing.assert_array_equal(second.source, after_one[second.index])
    if backend == "images":  # the sharded job: round 1's stage-2 model, round 1's labels, round 2's draws
        summary = json.loads((two.infer / "summary.json").read_text())
        assert summary["round"] == 2 and summary["counts"] == np.bincount(after_one, minlength=10).tolist()
        assert summary["checkpoint"] == str(RunLayout.round(folder, 1).stage2_checkpoint)
        probs = np.load(two.infer / "predictions.npy")
    else:
        probs = np.load(two.predictions)
    expected = compute_flips(probs, after_one, None, 1.0, cfg.seed, round=2).table
    assert storage.flip_table_sha256(second) == storage.flip_table_sha256(expected)
    assert [row["round"] for row in results["rounds"]] == [1, 2]
    assert results["flips"]["num_flips"] == len(storage.load_flip_table(two.cumulative_flips))
    assert (folder / "test_logits.npz").is_file() and RunLayout.rounds_figure(folder).is_file()
