"""`lnr-dist tune` with tune.flip_budget (no Ray), and the keys of tune.search / early_stop / flip_budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lnr_dist.core import storage
from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.core.errors import UserError
from lnr_dist.experiment import ExperimentConfig, ThresholdPolicy
from lnr_dist.lnr import ExpectedFlips, accumulate_stats, candidates_for_rows, flips_from_candidates
from lnr_dist.stage2.registry import stage2_flips
from lnr_dist.tune import sweep
from lnr_dist.tune.sweep import run_sweep

MINI = Path(__file__).resolve().parents[2] / "configs" / "mini.yaml"
INFER_SEED = 3


def mini(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, MINI, list(overrides))


@pytest.fixture
def budget_run(tmp_path, long_tailed_set, monkeypatch):
    """A run folder with the inference job's summary.json and candidates.npz (t_min = mini.yaml's
    infer.candidates_t_min) from the synthetic 12-class set; Ray and Ray Tune fail if anything starts them."""

    def no_ray(*args, **kwargs):
        raise AssertionError("tune.flip_budget must not start Ray or Ray Tune")

    monkeypatch.setattr(sweep, "ensure_ray", no_ray)
    monkeypatch.setattr(sweep.tune, "Tuner", no_ray)
    cfg = mini(f"run_dir={tmp_path}", "tune.flip_budget=0.08", "data.num_classes=12")
    probs, labels = long_tailed_set
    moments = accumulate_stats(probs, labels, 256).moments()
    t_min = cfg.infer.candidates_t_min
    found = candidates_for_rows(probs, labels, np.arange(labels.size), moments, t_min, 256)
    infer = cfg.layout.infer
    storage.write_npz(infer / "candidates.npz", index=found.index, label=found.label, cls=found.cls, z=found.z,
                      t_min=np.array(t_min), prior=moments.prior, seed=np.array(INFER_SEED))  # fmt: skip
    storage.write_json(
        infer / "summary.json", {"seed": INFER_SEED, "threshold": 2.0, "num_samples": labels.size}
    )
    return cfg, found, moments.prior, labels


def test_flip_budget_writes_the_threshold_that_policy_tuned_trains_on(budget_run):
    cfg, found, prior, labels = budget_run
    stale = [cfg.layout.sweep_csv, cfg.layout.tune / "sweep.png"]  # an earlier grid sweep's
    for path in stale:
        storage.write_text(path, "old sweep")
    report = run_sweep(cfg)
    target = 0.08 * labels.size
    assert report["budget_flips"] == pytest.approx(target) and report["num_train"] == labels.size
    assert abs(ExpectedFlips.of(found, prior)(report["threshold"]) - target) <= 1.0
    assert report["threshold"] >= cfg.infer.candidates_t_min
    realised = flips_from_candidates(found, prior, report["threshold"], INFER_SEED)
    assert report["realised_flips"] == len(realised) > 0
    assert json.loads(cfg.layout.chosen_threshold.read_text()) == json.loads(json.dumps(report))
    assert not any(path.exists() for path in stale)
    assert "| flip budget |" in (cfg.layout.tune / "sweep.md").read_text()
    tuned = replace(cfg, stage2=replace(cfg.stage2, threshold=ThresholdPolicy("tuned")))
    table, used = stage2_flips(tuned, labels)
    assert used == report["threshold"] and np.array_equal(table.index, realised.index)


def test_a_budget_beyond_the_candidates_names_both_keys(budget_run):
    cfg, found, prior, labels = budget_run
    most = ExpectedFlips.of(found, prior)(cfg.infer.candidates_t_min)
    over = replace(cfg, tune=replace(cfg.tune, flip_budget=(most + 5) / labels.size))
    with pytest.raises(UserError) as error:
        run_sweep(over)
    message = str(error.value)
    assert "tune.flip_budget" in message and "infer.candidates_t_min = 1" in message and "\n" not in message
    assert f"at most {most:.1f} expected flips" in message


def test_a_budget_without_candidates_says_which_key_makes_them(budget_run):
    cfg, *_ = budget_run
    cfg.layout.infer_file("candidates.npz").unlink()
    with pytest.raises(UserError, match=r"candidates.npz, which does not exist: set infer.candidates_t_min"):
        run_sweep(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tune.flip_budget=1.0"], r"tune: tune.flip_budget must lie in \(0, 1\).*got 1.0"),
        (["tune.flip_budget=0"], r"tune.flip_budget must lie in \(0, 1\)"),
        (["tune.flip_budget=-0.1"], r"tune.flip_budget must lie in \(0, 1\)"),
        (
            ["tune.flip_budget=0.1", "infer.candidates_t_min=null"],
            r"tune.flip_budget .*set infer.candidates_t_min",
        ),
        (["tune.flip_budget=0.1", "tune.search=optuna"], r"tune.search optuna .* would go unused"),
        (["tune.flip_budget=0.1", "tune.early_stop=asha"], r"tune.early_stop asha would go unused"),
        (
            ["tune.scheduler=asha"],
            r"key 'tune.scheduler' was replaced: use tune.search \(grid \| random \| optuna\) "
            r"and tune.early_stop \(none \| asha\)",
        ),  # fmt: skip
        (["tune.search=optuna", "tune.search_min=3", "tune.search_max=3"], "search_min must be below"),
        (["tune.search=tpe"], r"key 'tune.search': expected one of 'grid', 'random', 'optuna'"),
    ],
)
def test_bad_tune_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        mini(*overrides)
    assert "command line" in str(error.value) and "\n" not in str(error.value)


def test_optuna_proposes_in_seeded_rounds_no_larger_than_the_sweep():
    import optuna

    def first_proposals(seed: int) -> list[float]:
        cfg = mini("tune.search=optuna", "tune.num_samples=3", "tune.startup_trials=2", f"seed={seed}")
        _, searcher, num_samples, scheduler = sweep._search(cfg, concurrent=4)
        assert num_samples == 3 and scheduler is None
        assert searcher.batch and searcher.max_concurrent == 3  # a round never exceeds num_samples
        study = optuna.create_study(sampler=searcher.searcher._sampler)
        return [study.ask().suggest_float("threshold", 0.0, 20.0) for _ in range(3)]

    assert first_proposals(11) == first_proposals(11) != first_proposals(12)
    cfg = mini("tune.search=optuna", "tune.early_stop=asha")
    assert type(sweep._search(cfg, concurrent=1)[3]).__name__ == "AsyncHyperBandScheduler"
