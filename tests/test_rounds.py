"""Iterated LNR's rounds (lnr_dist/rounds.py) on the features backend, on a synthetic run folder of cached features
and inference outputs: no image, no Ray."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lnr_dist import rounds
from lnr_dist.core import storage
from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.core.layout import RunLayout
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, Stage2Config, ThresholdPolicy, TuneConfig
from lnr_dist.features.heads import Head, load_head, predict_probs
from lnr_dist.jobs import JOBS
from lnr_dist.lnr import compute_flips, labels_after, next_round

REPO = Path(__file__).resolve().parents[1]
C, D = 5, 8
COUNTS = (160, 80, 40, 16, 8)
THRESHOLD, FLIP_SEED = 0.5, 3


def _split_file(path: Path, name: str, labels: np.ndarray) -> str:
    storage.write_text(path, "".join(f"images/{name}_{i:04d}.jpg {y}\n" for i, y in enumerate(labels)))
    return str(path)


def synthetic_run(tmp_path: Path, **stage2) -> ExperimentConfig:
    """A run folder as stage 1, `features` and `infer` leave it: cached features of C overlapping Gaussian classes
    (long-tailed), a stage-1 classifier (nearest class centre), and infer/ (the stage-1 softmax of the training
    features, its labels and summary.json with the flip seed). Split files name images that do not exist."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.2, (C, D))
    train_y = np.repeat(np.arange(C), COUNTS)
    eval_y = np.repeat(np.arange(C), 12)
    features = {name: (centres[y] + rng.normal(0.0, 1.0, (y.size, D))).astype(np.float32)
                for name, y in (("train", train_y), ("val", eval_y), ("test", eval_y))}  # fmt: skip
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    files = {name: _split_file(data_dir / f"{name}.txt", name, y)
             for name, y in (("train", train_y), ("val", eval_y), ("test", eval_y))}  # fmt: skip
    data = DataConfig(root=str(data_dir), train_split=files["train"], val_split=files["val"],
                      test_split=files["test"], num_classes=C)  # fmt: skip
    s2 = Stage2Config(epochs=3, batch_size=32, lr=0.05, backend="features", rounds=2,
                      threshold=ThresholdPolicy.fixed(THRESHOLD))  # fmt: skip
    cfg = ExperimentConfig(
        data=data, run_dir=str(run_dir), stage2=replace(s2, **stage2)
    ).with_absolute_paths()
    layout = cfg.layout
    for name, array in features.items():
        storage.write_npy(layout.feature_file(name), array)
    weight = torch.from_numpy(centres.astype(np.float32))
    bias = torch.from_numpy((-(centres**2).sum(1) / 2).astype(np.float32))
    checkpoint = layout.checkpoint("stage1")
    storage.write_with(checkpoint, lambda h: torch.save({"model": {"classifier.weight": weight,
                                                                   "classifier.bias": bias}}, h))  # fmt: skip
    storage.write_json(layout.features_meta, {"checkpoint": str(checkpoint),
                                              "checkpoint_sha256": storage.sha256_file(checkpoint)})  # fmt: skip
    probs = predict_probs(Head(weight, bias, lws=False), features["train"])
    storage.write_npy(layout.infer_file("predictions.npy"), probs)
    storage.write_npy(layout.infer_file("labels.npy"), train_y)
    storage.write_json(layout.infer_file("summary.json"), {"seed": FLIP_SEED, "threshold": 1.0})
    return cfg


def _tables(folder: Path, r: int):
    layout = RunLayout.round(folder, r)
    return storage.load_flip_table(layout.flips), storage.load_flip_table(layout.cumulative_flips)


def test_two_rounds_keep_two_flip_tables_the_second_from_the_first_labels(tmp_path):
    cfg = synthetic_run(tmp_path)
    folder = tmp_path / "lnr"
    results = rounds.run_rounds(cfg, folder)
    original = np.repeat(np.arange(C), COUNTS)
    first, first_total = _tables(folder, 1)
    second, total = _tables(folder, 2)
    # round 1: the flips a single run trains on (stage2.threshold fixed: from infer/'s predictions)
    stage1_probs = np.load(cfg.layout.infer_file("predictions.npy"))
    today = compute_flips(stage1_probs, original, None, THRESHOLD, FLIP_SEED).table
    assert storage.flip_table_sha256(first) == storage.flip_table_sha256(today) and len(first) > 0
    assert storage.flip_table_sha256(first_total) == storage.flip_table_sha256(first)
    # round 2: round 1's head predicts; statistics and flips on round 1's labels, round 2's draws
    after_one = labels_after(original, [first])
    round_two = RunLayout.round(folder, 2)
    np.testing.assert_array_equal(np.load(round_two.labels), after_one)
    head = load_head(RunLayout.head(RunLayout.round(folder, 1).stage2))
    probs = predict_probs(head, np.load(cfg.layout.feature_file("train")))
    np.testing.assert_array_equal(np.load(round_two.predictions), probs)
    expected = next_round(probs, original, [first], THRESHOLD, FLIP_SEED)
    assert storage.flip_table_sha256(second) == storage.flip_table_sha256(expected.table) and len(second) > 0
    np.testing.assert_array_equal(second.source, after_one[second.index])
    np.testing.assert_array_equal(total.apply(np.arange(original.size), original),
                                  labels_after(original, [first, second]))  # fmt: skip
    summary = json.loads(round_two.summary.read_text())
    assert summary["counts_before"] == np.bincount(after_one, minlength=C).tolist()
    assert summary["counts_before"] != list(COUNTS) and summary["threshold"] == THRESHOLD
    assert summary["threshold_from"] == "round 1" and "round 1's head" in summary["predicted_by"]
    # the folder's results are the last round's stage 2, trained on the cumulative flips, with every round's row
    last = json.loads(RunLayout.results(round_two.stage2).read_text())
    assert results["test"] == last["test"] and results["flips"]["num_flips"] == len(total)
    assert results["flips"]["flips_sha256"] == storage.flip_table_sha256(total)
    assert [row["round"] for row in results["rounds"]] == [1, 2]
    assert [row["num_flips"] for row in results["rounds"]] == [len(first), len(second)]
    assert (folder / "test_logits.npz").read_bytes() == (round_two.stage2 / "test_logits.npz").read_bytes()
    with open(RunLayout.rounds_csv(folder), newline="") as handle:
        assert [int(row["cumulative_flips"]) for row in csv.DictReader(handle)] == [len(first), len(total)]
    assert RunLayout.rounds_figure(folder).stat().st_size > 10_000


def test_a_finished_round_is_not_redone_and_another_setup_redoes_it(tmp_path, monkeypatch):
    cfg = synthetic_run(tmp_path)
    folder = tmp_path / "lnr"
    rounds.run_rounds(cfg, folder)
    first_summary = RunLayout.round(folder, 1).summary.read_text()
    trained = []
    real = rounds.run_on_features

    def counting(run_cfg, out, flips=None):
        trained.append(Path(out).parent.name)
        return real(run_cfg, out, flips=flips)

    monkeypatch.setattr(rounds, "run_on_features", counting)
    rounds.run_rounds(cfg, folder)
    assert trained == []
    # interrupted in round 2 (its summary never written): round 2 runs again, round 1 is kept
    RunLayout.round(folder, 2).summary.unlink()
    rounds.run_rounds(cfg, folder)
    assert trained == ["round2"]
    three = replace(cfg, stage2=replace(cfg.stage2, rounds=3))
    rounds.run_rounds(three, folder)
    assert trained == ["round2", "round3"] and RunLayout.round(folder, 1).summary.read_text() == first_summary
    other = replace(cfg, stage2=replace(cfg.stage2, lr=0.01))
    rounds.run_rounds(other, folder)
    assert trained == ["round2", "round3", "round1", "round2"]


def test_the_stage2_job_runs_the_rounds_and_other_methods_run_once(tmp_path):
    cfg = synthetic_run(tmp_path)
    JOBS["stage2"](cfg)
    assert RunLayout.round(cfg.layout.stage("stage2"), 2).summary.is_file()
    mislas = replace(cfg, stage2=replace(cfg.stage2, method="mislas"))
    JOBS["stage2"](mislas, str(tmp_path / "mislas"))
    assert (tmp_path / "mislas" / "results.json").is_file() and not (tmp_path / "mislas" / "rounds").exists()
    with pytest.raises(UserError, match=r"^stage2.rounds: method 'mislas' trains on 'none' labels"):
        rounds.run_rounds(mislas, tmp_path / "other")


def test_per_round_tuning_picks_each_round_threshold_on_validation(tmp_path):
    cfg = synthetic_run(tmp_path)
    cfg = replace(cfg, tune=TuneConfig(thresholds=(0.25, 0.5, 1.5), per_round=True, epochs=2))
    folder = tmp_path / "lnr"
    rounds.run_rounds(cfg, folder)
    layout = RunLayout.round(folder, 2)
    with open(layout.sweep_csv, newline="") as handle:
        sweep = list(csv.DictReader(handle))
    assert [float(row["threshold"]) for row in sweep] == [0.25, 0.5, 1.5]
    summary = json.loads(layout.summary.read_text())
    best = max(sweep, key=lambda row: (float(row["val_balanced_acc"]), -int(row["num_flips"])))
    assert summary["threshold"] == float(best["threshold"]) and "tune.per_round" in summary["threshold_from"]
    first, _ = _tables(folder, 1)
    expected = next_round(np.load(layout.predictions), np.repeat(np.arange(C), COUNTS), [first],
                          summary["threshold"], FLIP_SEED).table  # fmt: skip
    second, _ = _tables(folder, 2)
    assert storage.flip_table_sha256(second) == storage.flip_table_sha256(expected)
    assert int(next(r for r in sweep if float(r["threshold"]) == summary["threshold"])["num_flips"]) == len(
        second
    )


def test_per_round_tuning_on_images_is_refused_before_any_work(tmp_path):
    cfg = synthetic_run(tmp_path, backend="images")
    cfg = replace(cfg, tune=TuneConfig(per_round=True))
    with pytest.raises(UserError, match=r"^tune.per_round: .* runs on images: set stage2.backend=features"):
        rounds.run_rounds(cfg, tmp_path / "lnr")
    assert not (tmp_path / "lnr").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stage2.rounds=0"], "rounds must be in [1, "),
        (
            ["stage2.rounds=2", "infer.seed=281474976710656"],
            "infer.seed must be in [0, 2**48) with stage2.rounds",
        ),
    ],
)
def test_bad_round_settings_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", ["infer.seed=281474976710656"])
