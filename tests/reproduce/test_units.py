"""Pure pieces of `reproduce`: oversampling, reliability bins, aggregation, the binary task's data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lnr_dist.data.manifest import Manifest
from lnr_dist.experiment import BinaryConfig
from lnr_dist.reproduce.binary import load_task
from lnr_dist.reproduce.figures import reliability
from lnr_dist.reproduce.report import aggregate, format_summary
from lnr_dist.reproduce.steps import StepLog, config_hash
from lnr_dist.stage2.oversample import NotApplicable, oversample
from lnr_dist.train.calibration import metrics_at
from tests.conftest import mini_experiment


@pytest.mark.parametrize("kind", ["smote", "adasyn"])
def test_oversampling_balances_classes_and_keeps_the_originals(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (80, 4)).astype(np.float32)  # overlapping classes: every neighbourhood is mixed
    y = np.array([0] * 60 + [1] * 12 + [2] * 8, dtype=np.int64)
    xs, ys = oversample(x, y, kind, seed=0)
    counts = np.bincount(ys)
    assert counts[0] == 60 and abs(counts[1] - 60) <= 3 and abs(counts[2] - 60) <= 3
    assert np.allclose(xs[:80], x, atol=1e-6)  # the real samples come first, unchanged


def test_a_class_with_one_sample_is_duplicated_before_smote():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (41, 3)).astype(np.float32)
    y = np.array([0] * 30 + [1] * 10 + [2], dtype=np.int64)
    xs, ys = oversample(x, y, "smote", seed=0)
    assert np.bincount(ys).tolist() == [30, 30, 30]
    assert np.allclose(xs[ys == 2], x[40])  # interpolating between two copies gives the sample itself


def test_adasyn_on_separated_classes_is_not_applicable():
    x = np.concatenate([np.zeros((30, 2)), np.full((5, 2), 100.0)]) + np.arange(35)[:, None] * 1e-3
    y = np.array([0] * 30 + [1] * 5)
    with pytest.raises(NotApplicable, match="adasyn is not applicable"):
        oversample(x.astype(np.float32), y, "adasyn", seed=0)


def test_reliability_ece_matches_the_metrics_ece():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (500, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 500)
    manifest = Manifest.from_labels(np.repeat(np.arange(5), 10), 5)
    expected = metrics_at(torch.from_numpy(logits), torch.from_numpy(labels), manifest)["ece"]
    _, accuracy, share, ece = reliability(logits, labels)
    assert ece == pytest.approx(expected, abs=1e-3)
    assert share.sum() == pytest.approx(1.0) and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_aggregate_mean_and_sample_std_over_seeds():
    rows = [{"top1": 50.0, "many": 1.0, "medium": 1.0, "few": 10.0, "ece": 5.0, "nll": 1.0, "ece_calibrated": 1.0,
             "num_flips": 4, "threshold": 2.0},
            {"top1": 54.0, "many": 1.0, "medium": 1.0, "few": 20.0, "ece": 5.0, "nll": 1.0, "ece_calibrated": 1.0,
             "num_flips": 6, "threshold": None}]  # fmt: skip
    table = aggregate({"lnr": rows, "adasyn": [{"not_applicable": "no"}]})
    assert table["lnr"]["top1"] == pytest.approx((52.0, np.sqrt(8.0)))
    assert table["lnr"]["few"] == pytest.approx((15.0, np.sqrt(50.0)))
    assert table["lnr"]["threshold"] == (2.0, 0.0)
    assert table["adasyn"] == {"not_applicable": "no", "seeds": 0}


def test_config_hash_is_order_free_and_value_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_binary_task_subsamples_the_minority_to_the_ratio(mini_root, tmp_path):
    cfg = mini_experiment(mini_root, tmp_path)
    bcfg = BinaryConfig(majority_class=1, minority_class=2)
    task = load_task(cfg, bcfg, 0.1, seed=0)
    x, y = task["train"]
    majority = int((y == 0).sum())
    assert int((y == 1).sum()) == round(0.1 * majority) and x.shape == (y.size, 64)
    assert x.min() >= 0.0 and x.max() <= 1.0
    x_test, y_test = task["test"]
    assert (y_test == 1).sum() == (y_test == 0).sum()  # test splits stay balanced
    again = load_task(cfg, bcfg, 0.1, seed=0)["train"]
    assert np.array_equal(again[0], x) and not np.array_equal(
        load_task(cfg, bcfg, 0.1, seed=1)["train"][0], x
    )
    with pytest.raises(ValueError, match="minority samples needed"):
        load_task(cfg, BinaryConfig(majority_class=0, minority_class=9), 0.5, seed=0)


def test_steps_are_numbered_k_of_n_across_seeds(tmp_path, caplog):
    """A reproduce of 2 seeds x 3 steps: the second seed's steps are 4 to 6 of 6; a step done before says so."""
    caplog.set_level(logging.INFO, logger="lnr_dist")
    first = StepLog(tmp_path / "seed0", first=1, total=6)
    first.run("stage1", "h1", dict)
    second = StepLog(tmp_path / "seed1", first=4, total=6)
    second.run("stage1", "h1", dict)
    second.run("infer", "h2", dict)
    StepLog(tmp_path / "seed1", first=4, total=6).run("stage1", "h1", dict)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.rsplit(" in ", 1)[0] for line in lines[:6]] == [
        "step 1 of 6: stage1: running", "step 1 of 6: stage1: finished",
        "step 4 of 6: stage1: running", "step 4 of 6: stage1: finished",
        "step 5 of 6: infer: running", "step 5 of 6: infer: finished",
    ]  # fmt: skip
    assert lines[6] == "step 4 of 6: stage1: done before (config h1), skipped"


def test_the_reproduce_summary_is_short_and_points_to_the_report():
    table = {
        "ce": {"seeds": 2, "top1": (45.6, 1.0), "few": (18.67, 0.5), "ece": (16.79, 0.1)},
        "lnr": {"seeds": 2, "top1": (64.0, 1.0), "few": None, "ece": (21.34, 0.2)},
        "adasyn": {"seeds": 0, "not_applicable": "no neighbour of the majority class"},
    }
    report = {"ran": ["a"] * 13, "skipped": [], "table": table, "results_md": "/r/results.md",
              "results_csv": "/r/results.csv", "comparisons_csv": "/r/comparisons.csv",
              "figures": ["/r/figures/a.png", "/r/figures/b.png"]}  # fmt: skip
    assert format_summary(report).splitlines() == [
        "steps run: 13, skipped (done before): 0",
        "method               seeds   top-1     few     ECE   (test, %; every column: results.md)",
        "ce                       2   45.60   18.67   16.79",
        "lnr                      2   64.00       –   21.34",
        "adasyn                   0   n/a: no neighbour of the majority class",
        "results: /r/results.md (and results.csv, comparisons.csv beside it)",
        "figures (2):",
        "  /r/figures/a.png",
        "  /r/figures/b.png",
    ]
