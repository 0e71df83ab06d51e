"""`reproduce` on the real mini set with one seed and short schedules, on the test session's local Ray cluster."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnr_dist.errors import UserError
from lnr_dist.experiment import BinaryConfig, ReproduceConfig
from lnr_dist.reproduce.methods import METHODS, Method
from lnr_dist.reproduce.report import COLUMNS, method_row
from lnr_dist.reproduce.runner import reproduce
from lnr_dist.reproduce.steps import StepFailed
from tests.conftest import mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ALL = ("ce", "mixup", "mislas", "lnr", "random", "smote", "adasyn")


def short_config(root, run_dir, **changes):
    binary = BinaryConfig(
        enabled=True, ratio=0.05, threshold=1.0, ratios=(0.05, 0.2), thresholds=(0.5, 1.0), epochs=60
    )
    return mini_experiment(
        root, run_dir, stage1={"epochs": 2, "warmup_epochs": 0},
        infer={"threshold": 2.0, "candidates_t_min": 1.0},
        tune={"thresholds": (1.0, 2.0), "cpus_per_trial": 0.5},
        stage2={"epochs": 2, "batch_size": 32, "eval_batch_size": 128, "lr": 0.05},
        reproduce=ReproduceConfig(methods=ALL, seeds=1, binary=binary, **changes),
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(mini_root, tmp_path_factory, ray_session):
    cfg = short_config(mini_root, tmp_path_factory.mktemp("reproduce") / "run")
    return cfg, reproduce(cfg)


def test_writes_every_table_and_picture(first_run):
    cfg, report = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    text = (root / "results.md").read_text()
    for method in ALL:
        assert f"| {method} |" in text
    assert "## Binary task" in text and "## Published numbers" in text
    names = {Path(f).name for f in report["figures"]}
    expected = {f"reliability_{m}.png" for m in ALL if (root / "seed0" / "methods" / m / "test_logits.npz").is_file()
                or m in ("ce", "mixup")}  # fmt: skip
    expected |= {"per_class_accuracy.png", "flip_matrix.png", "threshold_sweep.png", "stage1_curves.png",
                 "binary_heatmaps.png"}  # fmt: skip
    assert expected <= names
    for figure in report["figures"]:
        with Image.open(figure) as image:
            image.verify()
        pixels = np.asarray(Image.open(figure).convert("L"), dtype=np.float32)
        assert pixels.shape[0] > 100 and pixels.std() > 5, figure  # not a blank canvas


def test_table_numbers_equal_the_metrics_files(first_run):
    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    with (root / "results_per_seed.csv").open() as handle:
        per_seed = list(csv.DictReader(handle))
    with (root / "results.csv").open() as handle:
        means = {row["method"]: row for row in csv.DictReader(handle)}
    assert {row["method"] for row in per_seed} == set(ALL)
    for row in per_seed:
        results = json.loads(Path(row["source"]).read_text())
        if "not_applicable" in results:
            assert row["not_applicable"] == results["not_applicable"]
            continue
        assert float(row["top1"]) == results["test"]["top1"]
        assert float(row["few"]) == results["test"]["few"]
        assert float(row["ece"]) == results["test"]["ece"]
        assert float(row["nll"]) == results["test"]["nll"]
        assert int(row["num_flips"]) == (results.get("flips") or {}).get("num_flips", 0)
        for key in COLUMNS:  # one seed: the mean is the value and the std 0
            if row[key] not in ("", "None"):
                assert float(means[row["method"]][f"{key}_mean"]) == pytest.approx(float(row[key]))
                assert float(means[row["method"]][f"{key}_std"]) == 0.0
    lnr = method_row(root / "seed0" / "methods" / "lnr")
    chosen = json.loads((root / "seed0" / "tune" / "chosen_threshold.json").read_text())["threshold"]
    assert lnr["threshold"] == chosen and lnr["num_flips"] > 0
    random = method_row(root / "seed0" / "methods" / "random")
    assert random["num_flips"] == lnr["num_flips"]  # as many random flips as LNR made


def test_rerun_skips_finished_steps(first_run):
    cfg, first = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    checkpoint = root / "seed0" / "stage1" / "checkpoints" / "best.pt"
    before = checkpoint.stat().st_mtime_ns
    again = reproduce(cfg)
    assert again["ran"] == []
    assert len(again["skipped"]) == len(first["ran"]) and "seed0/stage1" in again["skipped"]
    assert checkpoint.stat().st_mtime_ns == before
    assert again["table"] == first["table"]  # read back from the same files


def test_a_failed_step_stops_the_chain_and_keeps_what_finished(first_run, monkeypatch):
    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    results_md = (root / "results.md").read_text()
    records = {p.name: p.read_bytes() for p in (root / "seed0" / "steps").glob("*.json")}

    def explode(seed_run, folder):
        raise RuntimeError("out of disk")

    monkeypatch.setitem(METHODS, "boom", Method("boom", ("stage1",), (), explode, "fails"))
    failing = replace(cfg, reproduce=replace(cfg.reproduce, methods=("mixup", "boom", "lnr")))
    with pytest.raises(StepFailed, match="step method-boom failed: RuntimeError: out of disk") as failure:
        reproduce(failing)
    assert "run the same command again to resume" in str(failure.value)
    assert {p.name: p.read_bytes() for p in (root / "seed0" / "steps").glob("*.json")} == records
    assert not (root / "seed0" / "steps" / "method-boom.json").exists()
    assert (root / "results.md").read_text() == results_md  # the last complete report stays


def test_changed_config_reruns_the_step_and_never_mixes_checkpoints(first_run):
    cfg, _ = first_run
    changed = replace(cfg, stage1=replace(cfg.stage1, lr=0.05))
    with pytest.raises(UserError, match="was written by another stage1 setup .*stage1.lr"):
        reproduce(changed)  # the step runs again; the trainer refuses a folder of another recipe


def test_unknown_method_is_a_config_error(mini_root, tmp_path):
    cfg = short_config(
        mini_root,
        tmp_path / "run",
    )
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, methods=("lnr", "focal")))
    with pytest.raises(UserError, match="reproduce.methods: unknown method.*focal"):
        reproduce(cfg)
