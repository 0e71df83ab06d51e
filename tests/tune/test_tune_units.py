"""The sweep's pure decisions: which trial may be chosen, the edge flag, a trial's status line; a trial on cached
features run in-process (its Tune report captured): its TensorBoard curves."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from lnr_dist.core import config as config_lib
from lnr_dist.core import storage
from lnr_dist.core.errors import UserError
from lnr_dist.core.layout import RunLayout
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, Stage2Config, TuneConfig
from lnr_dist.tune import sweep
from lnr_dist.tune.sweep import _trial_row, choose, edge_warning

from ..conftest import tensorboard_scalars

CFG = ExperimentConfig(
    data=DataConfig(root="r", train_split="a", val_split="b", test_split="c", num_classes=10)
)


def row(threshold, value, status="completed", flips=10):
    return {"threshold": threshold, "status": status, "num_flips": flips, "val_balanced_acc": value}


def test_only_completed_trials_can_be_chosen():
    rows = [row(1.0, 50.0), row(2.0, 70.0, "stopped at epoch 1"), row(3.0, 60.0)]
    assert choose(rows, "balanced_acc")["threshold"] == 3.0
    assert choose([row(1.0, 60.0, flips=20), row(2.0, 60.0, flips=5)], "balanced_acc")["threshold"] == 2.0
    with pytest.raises(UserError, match="no sweep trial ran its whole schedule .*raise tune.num_samples"):
        choose([row(1.0, 50.0, "stopped at epoch 2")], "balanced_acc")


def test_edge_flag_on_the_grid_and_within_five_percent_of_a_searched_range():
    grid = replace(CFG, tune=TuneConfig(thresholds=(10.5, 12.5, 14.5, 16.5, 18.5)))
    assert "high edge" in edge_warning(grid, 18.5) and "widen tune.thresholds" in edge_warning(grid, 18.5)
    assert "low edge" in edge_warning(grid, 10.5)
    assert edge_warning(grid, 14.5) is None and edge_warning(grid, 16.5) is None
    asha = replace(CFG, tune=TuneConfig(search="optuna", search_min=0.0, search_max=20.0))
    assert "high edge" in edge_warning(asha, 19.2) and "tune.search_min / tune.search_max" in edge_warning(
        asha, 19.2
    )
    assert "low edge" in edge_warning(asha, 0.9)
    assert edge_warning(asha, 1.1) is None and edge_warning(asha, 18.9) is None


class FakeResult:
    """What run_sweep reads of a Ray Tune result (pure-logic test: no Ray)."""

    def __init__(self, threshold, objective_per_epoch):
        self.config = {"threshold": threshold}
        n = len(objective_per_epoch)
        metrics = {
            f"val_{k}": [1.0] * n for k in ("balanced_acc", "top1", "many", "medium", "few", "ece", "nll")
        }
        self.metrics_dataframe = pd.DataFrame({"training_iteration": range(1, n + 1), "epoch": range(n),
                                               "objective": objective_per_epoch, "num_flips": [7] * n, **metrics})  # fmt: skip


def test_a_trial_stopped_by_asha_is_marked_with_its_epoch():
    stopped = _trial_row(FakeResult(2.0, [40.0, 45.0]), epochs=4, objective="balanced_acc")
    assert (
        stopped["status"] == "stopped at epoch 2"
        and stopped["epochs_run"] == 2
        and stopped["best_epoch"] == 1
    )
    done = _trial_row(FakeResult(3.0, [40.0, 55.0, 50.0, 52.0]), epochs=4, objective="balanced_acc")
    assert done["status"] == "completed" and done["best_epoch"] == 1 and done["num_flips"] == 7


def cached_features_run(tmp_path) -> ExperimentConfig:
    """A run folder as the sweep's trials on cached features read it: split files (of images that do not exist:
    nothing decodes one), features/{train,val,test}.npy, a stage-1 classifier, infer/ predictions + labels.
    Three Gaussian classes, 60 / 15 / 5 training samples (many-free: medium and few)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 3.0, (3, 8))
    labels = {"train": np.repeat(np.arange(3), (60, 15, 5)), "val": np.repeat(np.arange(3), 8),
              "test": np.repeat(np.arange(3), 8)}  # fmt: skip
    run = tmp_path / "run"
    files = {}
    for split, y in labels.items():
        files[split] = tmp_path / f"{split}.txt"
        storage.write_text(files[split], "".join(f"images/{split}_{i}.jpg {c}\n" for i, c in enumerate(y)))
        features = (centres[y] + rng.normal(0.0, 1.5, (y.size, 8))).astype(np.float32)
        storage.write_npy(run / "features" / f"{split}.npy", features)
    cfg = ExperimentConfig(
        data=DataConfig(root=str(tmp_path), train_split=str(files["train"]), val_split=str(files["val"]),
                        test_split=str(files["test"]), num_classes=3),
        run_dir=str(run), stage2=Stage2Config(epochs=3, batch_size=16, lr=0.05),
    ).with_absolute_paths()  # fmt: skip
    classifier = {
        "classifier.weight": torch.from_numpy(centres.astype(np.float32)),
        "classifier.bias": torch.zeros(3),
    }
    storage.write_with(cfg.layout.checkpoint("stage1"), lambda h: torch.save({"model": classifier}, h))
    logits = rng.normal(0.0, 1.0, (labels["train"].size, 3)) + 3.0 * np.eye(3)[labels["train"]]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    storage.write_npy(cfg.layout.infer_file("predictions.npy"), probs.astype(np.float32))
    storage.write_npy(cfg.layout.infer_file("labels.npy"), labels["train"])
    storage.write_json(cfg.layout.infer_file("summary.json"), {"seed": 0, "threshold": 1.0})
    return cfg


def test_each_sweep_trial_on_cached_features_is_a_tensorboard_run_with_every_epoch(tmp_path, monkeypatch):
    cfg = cached_features_run(tmp_path)
    reports = []
    monkeypatch.setattr(sweep.tune, "report", reports.append)
    for threshold in (0.5, 2.0, 0.5):  # 0.5 twice: a trial run again replaces its curves
        sweep.head_trial({"experiment": config_lib.to_dict(cfg), "threshold": threshold})
    folders = {t: RunLayout.tensorboard(cfg.layout.tune_trial(t)) for t in (0.5, 2.0)}
    assert sorted(p.name for p in cfg.layout.tune.iterdir()) == ["trial_t0.5", "trial_t2"]
    for threshold, folder in folders.items():
        scalars = tensorboard_scalars(folder)
        # a head on cached features: its loss, LR and speed, and every validation metric of a group with classes
        assert set(scalars) == {"train/loss", "train/lr", "train/images_per_second", "val/top1",
                                "val/balanced_acc", "val/medium", "val/few", "val/ece", "val/nll"}  # fmt: skip
        assert all([step for step, _ in points] == [0, 1, 2] for points in scalars.values())
        # the curve is the validation metric the trial reported to Tune, epoch by epoch
        reported = [r["val_balanced_acc"] for r in reports if r["threshold"] == threshold][-3:]
        assert [v for _, v in scalars["val/balanced_acc"]] == pytest.approx(reported)
        assert len(list(folder.iterdir())) == 1
