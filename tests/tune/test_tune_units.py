"""The sweep's pure decisions: which trial may be chosen, the edge flag, a trial's status line."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from lnr_dist.core.errors import UserError
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig, TuneConfig
from lnr_dist.tune.sweep import _trial_row, choose, edge_warning

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
