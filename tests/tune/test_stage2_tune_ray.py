"""Stage 2 (LNR / random / MiSLAS) and the threshold sweep, on a real local Ray cluster and the mini set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lnr_dist.core.storage import flip_table_sha256, load_flip_table
from lnr_dist.data.manifest import Manifest
from lnr_dist.experiment import ThresholdPolicy
from lnr_dist.infer.inference import run_inference
from lnr_dist.models.checkpoint import load_checkpoint
from lnr_dist.models.losses import smoothing_per_class
from lnr_dist.stage2.registry import stage2_flips
from lnr_dist.train.recipes import build_recipe
from lnr_dist.train.trainer import fit, load_splits
from lnr_dist.tune.sweep import run_sweep

from ..conftest import mini_experiment

pytestmark = [pytest.mark.ray, pytest.mark.slow]
THRESHOLDS = [0.5, 1.0, 1.5, 2.5]


@pytest.fixture(scope="module")
def lnr_run(mini_root, tmp_path_factory, stage1_checkpoint):
    """A run folder with the inference job's outputs (threshold 1.0, predictions and candidates saved)."""
    cfg = mini_experiment(
        mini_root, tmp_path_factory.mktemp("lnr"),
        infer={"checkpoint": str(stage1_checkpoint), "threshold": 1.0, "augment": "eval", "batch_size": 96,
               "candidates_t_min": 0.5},
        stage2={"checkpoint": str(stage1_checkpoint), "epochs": 3, "lr": 0.05, "smooth_head": 0.3,
                "smooth_tail": 0.0},
        tune={"thresholds": tuple(THRESHOLDS), "epochs": 4, "cpus_per_trial": 0.5},
    ).with_absolute_paths()  # fmt: skip
    run_inference(cfg)
    return cfg


def labels_and_manifest(cfg):
    labels = load_splits(cfg)["train"].labels
    return labels, Manifest.from_labels(labels, 10)


def test_stage2_changes_exactly_the_labels_in_the_flip_table(lnr_run):
    labels, manifest = labels_and_manifest(lnr_run)
    table = load_flip_table(lnr_run.run_dir + "/infer/flips.npz")
    assert len(table) > 0
    recipe = build_recipe(lnr_run, "stage2", manifest, labels)
    import torch

    mapped = recipe.label_map(torch.arange(labels.size), torch.from_numpy(labels)).numpy()
    changed = np.flatnonzero(mapped != labels)
    np.testing.assert_array_equal(changed, table.index)
    np.testing.assert_array_equal(mapped[changed], table.target)
    expected = smoothing_per_class(manifest.class_counts, 0.3, 0.0, "concave")
    np.testing.assert_allclose(recipe.loss.epsilon.numpy(), expected, rtol=1e-6)
    assert not any(p.requires_grad for p in recipe.model.features.parameters())


def test_random_flips_as_many_as_lnr_toward_rarer_classes(lnr_run):
    from dataclasses import replace

    labels, manifest = labels_and_manifest(lnr_run)
    lnr, _ = stage2_flips(lnr_run, labels)
    random, used = stage2_flips(replace(lnr_run, stage2=replace(lnr_run.stage2, method="random")), labels)
    assert len(random) == len(lnr) and used == 1.0  # the inference job's threshold (policy infer)
    assert not np.array_equal(random.index, lnr.index)
    counts = manifest.class_counts
    assert np.all(counts[random.target] < counts[random.source])
    none, used = stage2_flips(replace(lnr_run, stage2=replace(lnr_run.stage2, method="mislas")), labels)
    assert none is None and used is None


def test_stage2_on_ray_records_the_flip_table_it_trained_on(lnr_run):
    results = fit(lnr_run, "stage2")
    table = load_flip_table(lnr_run.run_dir + "/infer/flips.npz")
    assert results["flips"]["num_flips"] == len(table)
    assert results["flips"]["flips_sha256"] == flip_table_sha256(table)
    state = load_checkpoint(lnr_run.layout.stage("stage2") / "checkpoints" / "best.pt")
    assert state["results_extra"]["flips"]["flips_sha256"] == flip_table_sha256(table)
    assert results["test"]["top1"] > 20 and results["temperature"] > 0
    assert {"ece", "nll"} <= set(results["test_calibrated"])


def test_sweep_writes_its_outputs_and_picks_on_validation(lnr_run):
    report = run_sweep(lnr_run)
    out = lnr_run.run_dir + "/tune/"
    with open(out + "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["threshold"]) for r in rows] == THRESHOLDS
    assert {r["status"] for r in rows} == {"completed"} and {r["epochs_run"] for r in rows} == {"4"}
    assert (report["edge_warning"] is not None) == (report["threshold"] in (THRESHOLDS[0], THRESHOLDS[-1]))
    assert not any("test" in key for key in rows[0])  # trials never see test
    best = max(rows, key=lambda r: (float(r["val_balanced_acc"]), -int(r["num_flips"])))
    assert report["threshold"] == float(best["threshold"])
    flips = [int(r["num_flips"]) for r in rows]
    assert flips == sorted(flips, reverse=True) and flips[0] > flips[-1]
    assert json.loads(Path(out + "chosen_threshold.json").read_text())["threshold"] == report["threshold"]
    assert "(chosen)" in Path(out + "sweep.md").read_text()
    with Image.open(out + "sweep.png") as image:
        assert image.size[0] > 600 and len(set(image.convert("L").getdata())) > 10
    assert set(report["test"]) >= {"top1", "few", "ece"}


def test_stage2_can_use_the_tuned_threshold(lnr_run):
    from dataclasses import replace

    chosen = json.loads(Path(lnr_run.run_dir + "/tune/chosen_threshold.json").read_text())
    labels, _ = labels_and_manifest(lnr_run)
    tuned = replace(lnr_run, stage2=replace(lnr_run.stage2, threshold=ThresholdPolicy("tuned")))
    table, used = stage2_flips(tuned, labels)
    assert used == chosen["threshold"] and len(table) == chosen["chosen"]["num_flips"]


def test_sweep_with_ray_train_per_trial_when_bn_is_shifted(lnr_run):
    from dataclasses import replace

    cfg = replace(
        lnr_run,
        stage2=replace(lnr_run.stage2, shift_bn=True, epochs=2),
        tune=replace(lnr_run.tune, thresholds=(1.0, 2.5)),
        ray=replace(lnr_run.ray, num_workers=1),
    )
    report = run_sweep(cfg)
    assert report["backend"] == "images"
    out = Path(lnr_run.run_dir) / "tune"
    assert (out / "trial_t1" / "metrics.csv").is_file() and (out / "trial_t2.5" / "metrics.csv").is_file()
    assert (
        not (out / "trial_t1" / "results.json").read_text().count('"top1"') > 3
    )  # no test metrics in trials
    assert json.loads((out / "trial_t1" / "results.json").read_text())["test"] is None
    assert report["threshold"] in (1.0, 2.5) and "top1" in report["test"]


def test_asha_sweep_over_a_range(lnr_run):
    from dataclasses import replace

    # one trial at a time and a reduction factor of 4: from the second trial on, a trial below the best quarter
    # of those before it at epoch 1 or 2 is stopped there
    tune_cfg = replace(lnr_run.tune, search="random", early_stop="asha", search_min=0.5, search_max=3.0,
                       num_samples=6, grace_period=1, reduction_factor=4, max_concurrent=1)  # fmt: skip
    report = run_sweep(replace(lnr_run, tune=tune_cfg))
    out = Path(lnr_run.run_dir) / "tune"
    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all(0.5 <= float(r["threshold"]) <= 3.0 for r in rows)
    for r in rows:  # every trial says whether it ran the whole schedule
        ran = int(r["epochs_run"])
        assert r["status"] == ("completed" if ran == 4 else f"stopped at epoch {ran}") and 1 <= ran <= 4
    chosen = next(r for r in rows if float(r["threshold"]) == report["threshold"])
    assert chosen["status"] == "completed"
    best_completed = max(float(r["val_balanced_acc"]) for r in rows if r["status"] == "completed")
    assert float(chosen["val_balanced_acc"]) == best_completed
    md = (out / "sweep.md").read_text()
    assert all(f"| {r['status']} |" in md for r in rows)


def test_another_method_in_the_same_folder_is_refused_not_resumed(lnr_run):
    from dataclasses import replace

    from lnr_dist.core.errors import UserError

    assert (lnr_run.layout.stage("stage2") / "checkpoints" / "last.pt").is_file()
    mislas = replace(lnr_run, stage2=replace(lnr_run.stage2, method="mislas"))
    with pytest.raises(UserError, match=r"stage2.method.*differ.*Use another run_dir"):
        fit(mislas, "stage2")
    other_threshold = replace(lnr_run, stage2=replace(lnr_run.stage2, threshold=ThresholdPolicy.fixed(2.5)))
    with pytest.raises(UserError, match="stage2.threshold, the flip table differ"):
        fit(other_threshold, "stage2")


def test_optuna_sweep_proposes_inside_the_range_and_repeats_with_the_seed(lnr_run):
    from dataclasses import replace

    def proposals(**changes) -> list[tuple[str, str]]:
        # rounds of 2: the first is TPE's random start, the second is proposed from the first round's results
        settings = dict(search="optuna", search_min=0.5, search_max=3.0, num_samples=4, startup_trials=2,
                        max_concurrent=2, epochs=2)  # fmt: skip
        tune_cfg = replace(lnr_run.tune, **{**settings, **changes})
        report = run_sweep(replace(lnr_run, tune=tune_cfg))
        assert report["search"] == "optuna" and 0.5 <= report["threshold"] <= 3.0
        with open(Path(lnr_run.run_dir) / "tune" / "sweep.csv", newline="") as handle:
            return [(r["threshold"], r["status"]) for r in csv.DictReader(handle)]

    first = proposals()
    assert len(first) == 4 and all(0.5 <= float(t) <= 3.0 for t, _ in first)
    assert len({t for t, _ in first}) == 4
    assert proposals() == first
    with_asha = proposals(early_stop="asha", reduction_factor=4, max_concurrent=1, num_samples=3)
    assert len(with_asha) == 3 and all(0.5 <= float(t) <= 3.0 for t, _ in with_asha)
    assert {status for _, status in with_asha} <= {"completed", "stopped at epoch 1"}
