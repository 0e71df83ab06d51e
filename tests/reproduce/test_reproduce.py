"""`reproduce` on the real mini set with one seed and short schedules, on the test session's local Ray cluster."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnr_dist.core import storage
from lnr_dist.core.errors import UserError
from lnr_dist.data.splits import load_split
from lnr_dist.experiment import BinaryConfig, ReproduceConfig
from lnr_dist.lnr import FlipTable
from lnr_dist.reproduce.report import COLUMNS, method_row
from lnr_dist.reproduce.runner import reproduce
from lnr_dist.reproduce.steps import StepFailed
from lnr_dist.stage2.export import export_flipped_split
from lnr_dist.stage2.registry import STAGE2_METHODS, Stage2Method
from tests.conftest import mini_data_config, mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ALL = ("ce", "mixup", "mislas", "lnr", "random", "smote", "adasyn")


def short_config(root, run_dir, **changes):
    binary = BinaryConfig(
        enabled=True, ratio=0.05, threshold=1.0, ratios=(0.05, 0.2), thresholds=(0.5, 1.0), epochs=60
    )
    return mini_experiment(
        root, run_dir, data=mini_data_config(root, pool=True, train_crop="padded"),
        stage1={"epochs": 2, "warmup_epochs": 0},
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


def test_every_json_written_is_standard_json(first_run):
    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    files = [
        p for p in root.rglob("*.json") if "ray" not in p.relative_to(root).parts
    ]  # Ray's own files aside
    assert len(files) > 20
    for path in files:
        json.loads(path.read_text(), parse_constant=reject)
    text = (root / "results.md").read_text()
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert not re.search(r"\d ± \d", text)  # one seed: the values alone


def test_saved_test_logits_reproduce_the_table_exactly(first_run):
    import torch

    from lnr_dist.data.manifest import Manifest
    from lnr_dist.reproduce.figures import reliability
    from lnr_dist.train.calibration import metrics_at

    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    with (root / "results_per_seed.csv").open() as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    checked = 0
    for method in ALL:
        path = Path(table[method]["source"]).parent / "test_logits.npz"
        if not path.is_file():
            continue
        with np.load(path) as data:
            logits, labels, indices = data["logits"], data["labels"], data["indices"]
        assert logits.dtype == np.float32 and np.array_equal(indices, np.arange(labels.size))
        results = json.loads(Path(table[method]["source"]).read_text())
        manifest = Manifest.from_dict(results["manifest"])
        again = metrics_at(torch.from_numpy(logits), torch.from_numpy(labels), manifest)
        assert again["top1"] == float(table[method]["top1"]) and again["few"] == float(table[method]["few"])
        assert reliability(logits, labels)[3] == pytest.approx(float(table[method]["ece"]), abs=1e-9)
        checked += 1
    assert checked >= 5


def test_export_writes_the_split_lnr_trained_on(first_run, tmp_path):
    """`lnr-dist export --seed 0` on a reproduce folder: the split file read back by the product's reader has
    the labels of the flip table method lnr trained on (its results.json's hash)."""
    cfg, _ = first_run
    cfg = cfg.with_absolute_paths()
    done = export_flipped_split(cfg, tmp_path / "flipped.txt", seed=cfg.seed)
    lnr = json.loads((cfg.layout.seed(cfg.seed).method("lnr") / "results.json").read_text())["flips"]
    assert done.num_flips == lnr["num_flips"] > 0 and done.threshold == lnr["threshold"]
    original = load_split(cfg.data.train_split, cfg.data.root, 10)
    exported = load_split(done.split, cfg.data.root, 10)
    assert exported.paths == original.paths
    changed = np.flatnonzero(exported.labels != original.labels)
    table = FlipTable(changed, original.labels[changed], exported.labels[changed])
    assert storage.flip_table_sha256(table) == lnr["flips_sha256"]


def test_comparisons_with_intervals_and_verdicts(first_run):
    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    text = (root / "comparisons.csv").read_text()
    assert (
        text.splitlines()[0] == "method,baseline,metric,delta,ci_low,ci_high,seeds,verdict"
        and "nan" not in text
    )
    rows = list(csv.DictReader(text.splitlines()))
    with (root / "results_per_seed.csv").open() as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    pairs = {(r["method"], r["baseline"]) for r in rows}
    assert {("lnr", "mislas"), ("lnr", "random"), ("lnr", "ce")} <= pairs
    for r in rows:
        delta = float(r["delta"])
        expected = float(table[r["method"]][r["metric"]]) - float(table[r["baseline"]][r["metric"]])
        assert delta == pytest.approx(expected, abs=1e-6)
        assert float(r["ci_low"]) <= delta <= float(r["ci_high"]) and r["seeds"] == "1"
        assert r["verdict"] in ("better", "worse", "not distinguishable from noise")
    md = (root / "results.md").read_text()
    assert "## Is the difference real?" in md and f"{len(rows)} comparisons, no correction" in md


def test_a_threshold_at_the_edge_of_the_grid_is_flagged(first_run):
    cfg, _ = first_run
    root = Path(cfg.with_absolute_paths().run_dir)
    chosen = json.loads((root / "seed0" / "tune" / "chosen_threshold.json").read_text())
    assert chosen["threshold"] in (1.0, 2.0)  # a two-value grid: the choice is always at an edge
    assert "edge of the searched range [1, 2]: widen tune.thresholds" in chosen["edge_warning"]
    assert chosen["edge_warning"] in (root / "seed0" / "tune" / "sweep.md").read_text()
    assert (
        f"Warning (seed 0): the threshold the sweep chose is {chosen['edge_warning']}"
        in (root / "results.md").read_text()
    )


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

    def explode(s2, manifest):
        raise RuntimeError("out of disk")

    monkeypatch.setitem(
        STAGE2_METHODS, "boom", Stage2Method("boom", "fails", loss=explode, backends=("features",))
    )
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


# the seed methods of issue 16, each a registry entry: their own stage-1 backbones, FixMatch on the pool (images)
# and mining (cached features); they share the first run's stage 1, inference, sweep and features
SEED_METHODS = ("bias_compensation", "range_loss", "fixmatch", "fixmatch_lnr", "mining", "mining_random")


def test_every_seed_method_runs_through_reproduce(first_run):
    cfg, _ = first_run
    methods = replace(
        cfg.reproduce, methods=("mislas", "lnr", *SEED_METHODS), baselines=("mislas", "mining_random")
    )
    report = reproduce(replace(cfg, reproduce=methods, mining=replace(cfg.mining, budget=20)))
    root = Path(cfg.with_absolute_paths().run_dir)
    assert {"seed0/stage1", "seed0/infer", "seed0/tune"} <= set(
        report["skipped"]
    )  # shared with the first run
    assert {"seed0/stage1_bias_compensation", "seed0/stage1_range_loss"} <= set(report["ran"])
    table = (root / "results.md").read_text()
    for method in SEED_METHODS:
        results = json.loads((root / "seed0" / "methods" / method / "results.json").read_text())
        assert "not_applicable" not in results and results["test"]["top1"] > 0, method
        assert f"| {method} |" in table
    fixmatch = json.loads((root / "seed0" / "methods" / "fixmatch_lnr" / "results.json").read_text())
    chosen = json.loads((root / "seed0" / "tune" / "chosen_threshold.json").read_text())
    assert fixmatch["flips"]["threshold"] == chosen["threshold"]
    with (root / "comparisons.csv").open() as handle:
        pairs = {(row["method"], row["baseline"]) for row in csv.DictReader(handle)}
    assert {("mining", "mislas"), ("mining", "mining_random"), ("fixmatch", "mislas")} <= pairs
