"""The Ray Tune threshold sweep: flips re-derived per trial from the inference job's saved predictions or sparse
candidates (no inference per trial), stage 2 per trial, selection on validation, one test evaluation.

The sweep tunes the threshold of stage2.method, a registered method whose threshold policy is tuned (lnr by
default; its label policy makes each trial's flips). Where trials train is the method's backend for the sweep
(stage2.backend; auto: with no BN shift, the classifier head on stage-1 features computed once,
`features/cache.py`, a fraction of a second per trial on the mini set). On images each trial is a
function trainable that builds a TorchTrainer for stage 2 (Ray Train V2's pattern: Tune drives a function that
builds the trainer; `TuneReportCallback` forwards the workers' reports). Trials take `tune.cpus_per_trial` /
`tune.gpus_per_trial`: fractional CPUs on a laptop, one GPU per trial on a cluster. Each trial's per-epoch
curves go to tune/trial_t<t>/tensorboard/ on either backend (train/scalars.py), one TensorBoard run per threshold.

Thresholds come from tune.search: a grid, seeded uniform draws, or Optuna's TPE (Ray Tune's OptunaSearch) in
rounds; tune.early_stop asha stops poor trials early. tune.flip_budget picks the threshold without a sweep
(tune/budget.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ..core import config as config_lib
from ..core import storage
from ..core.errors import RunFailed, UserError
from ..core.logs import display, set_display, setup_logging
from ..core.plots import save_figure
from ..data.splits import load_train_split
from ..experiment import ExperimentConfig, ThresholdPolicy
from ..features.cache import cached_features, head_inputs, stage1_checkpoint
from ..features.heads import evaluate_head, train_head
from ..runtime.raycluster import ensure_ray, groups_that_fit
from ..stage2.flip_sources import FlipSource
from ..stage2.registry import STAGE2_METHODS, flips_at, method_of
from ..train.scalars import scalars_folder
from ..train.trainer import fit
from .budget import run_flip_budget

log = logging.getLogger(__name__)
SWEEP_FIELDS = ("threshold", "status", "epochs_run", "num_flips", "best_epoch", "val_balanced_acc", "val_top1",
                "val_many", "val_medium", "val_few", "val_ece", "val_nll")  # fmt: skip
METRIC_FIELDS = SWEEP_FIELDS[5:]
# a searched (not gridded) threshold this close to an end of the range counts as at the edge
EDGE_SHARE = 0.05


def _adopt_display(config: dict[str, Any]) -> None:
    """A trial logs at the driver's level (--log-level); its Ray Train workers, if any, get it from run_workers."""
    if "display" in config:
        set_display(config["display"])
    setup_logging()


def head_trial(config: dict[str, Any]) -> None:
    """Tune function trainable on cached features: one threshold, reports validation metrics every epoch."""
    _adopt_display(config)
    cfg = config_lib.from_dict(ExperimentConfig, config["experiment"], "<tune trial config>")
    threshold = float(config["threshold"])
    inputs = head_inputs(cfg, extract=False)
    table, _ = flips_at(cfg, inputs.labels["train"], threshold)
    objective = cfg.tune.objective
    best = {"value": -np.inf}

    def report(epoch: int, metrics: dict[str, Any]) -> None:
        best["value"] = max(best["value"], metrics[objective])
        tune.report({"threshold": threshold, "num_flips": len(table), "epoch": epoch, "objective": metrics[objective],
                     "best_objective": best["value"], **storage.finite({f"val_{k}": v for k, v in metrics.items()})})  # fmt: skip

    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))
    # one TensorBoard run per threshold, where a trial on images writes its own (the trainer, in its folder)
    train_head(cfg.stage2, method_of(cfg), _epochs(cfg), inputs.manifest, inputs.features, inputs.labels,
               inputs.classifier, table, cfg.seed, objective, report,
               scalars_folder(cfg, cfg.layout.tune_trial(threshold)))  # fmt: skip


def trainer_trial(config: dict[str, Any]) -> None:
    """Tune function trainable that runs stage 2 on Ray Train for one threshold (uncached backbone)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    _adopt_display(config)
    cfg = config_lib.from_dict(ExperimentConfig, config["experiment"], "<tune trial config>")
    threshold = float(config["threshold"])
    stage2 = replace(cfg.stage2, threshold=ThresholdPolicy.fixed(threshold), evaluate_test=False,
                     epochs=_epochs(cfg), checkpoint=str(stage1_checkpoint(cfg)))  # fmt: skip
    out = cfg.layout.tune_trial(threshold)
    # a trial always runs its whole schedule from the start: a folder an earlier (interrupted) sweep left would be
    # resumed and report only its remaining epochs, which the sweep would take for an early stop
    shutil.rmtree(out, ignore_errors=True)
    fit(replace(cfg, stage2=stage2), "stage2", out=out, callbacks=[TuneReportCallback()])


def _epochs(cfg: ExperimentConfig) -> int:
    return cfg.tune.epochs or cfg.stage2.epochs


def _search(cfg: ExperimentConfig, concurrent: int | None) -> tuple[Any, Any, int, Any]:
    """(threshold domain, search algorithm, num_samples, scheduler) of tune.search and tune.early_stop.

    `concurrent`: how many trials may run at once (None: no limit); it sizes Optuna's rounds (_round_size)."""
    t = cfg.tune
    scheduler = None
    if t.early_stop == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=_epochs(cfg), grace_period=min(t.grace_period, _epochs(cfg)),
            reduction_factor=t.reduction_factor,
        )  # fmt: skip
    if t.search == "grid":
        generator = BasicVariantGenerator(max_concurrent=concurrent or 0)
        return tune.grid_search([float(v) for v in t.thresholds]), generator, 1, scheduler
    domain = tune.uniform(t.search_min, t.search_max)
    if t.search != "optuna":  # random
        generator = BasicVariantGenerator(max_concurrent=concurrent or 0, random_state=cfg.seed)
        return domain, generator, t.num_samples, scheduler
    # Tune tells the searcher each trial's last report of its metric (the schedule's end, or where ASHA stopped
    # it); batch: a round's results reach TPE together once the whole round has ended, so what TPE knows when
    # it proposes does not depend on which trial finished first, and a rerun proposes the same thresholds
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=t.startup_trials)
    searcher = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=_round_size(cfg, concurrent),
                                  batch=True)  # fmt: skip
    # Optuna logs each trial at INFO through its own stderr handler: through the project's instead (core/logs.py
    # keeps other libraries' INFO lines out, their warnings in)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return domain, searcher, t.num_samples, scheduler


def _round_size(cfg: ExperimentConfig, concurrent: int | None) -> int:
    """Trials per Optuna round: tune.max_concurrent, else as many as fit at once (`concurrent`, or for trials on
    cached features the cluster's CPUs / tune.cpus_per_trial, and GPUs / gpus_per_trial), at most num_samples."""
    if concurrent is None:
        have = ray.cluster_resources()
        fits = [have.get("CPU", 0.0) / cfg.tune.cpus_per_trial] if cfg.tune.cpus_per_trial > 0 else []
        fits += [have.get("GPU", 0.0) / cfg.tune.gpus_per_trial] if cfg.tune.gpus_per_trial > 0 else []
        concurrent = int(min(fits) + 1e-9) if fits else cfg.tune.num_samples
    return max(1, min(concurrent, cfg.tune.num_samples))


def _trial_resources(cfg: ExperimentConfig, cached: bool) -> tuple[dict[str, float], int | None]:
    """Resources of one trial and how many trials may run at once.

    A cached-feature trial computes in its own process: it takes tune.cpus_per_trial / gpus_per_trial. A trial
    that runs Ray Train only drives the trainer: it takes next to nothing itself, its workers take ray.num_workers x
    (ray.cpus_per_worker, one GPU each with GPUs), and trials are limited to what the cluster can hold at once,
    so that no trial waits forever for its workers.
    """
    if cached:
        return {
            "cpu": cfg.tune.cpus_per_trial,
            "gpu": cfg.tune.gpus_per_trial,
        }, cfg.tune.max_concurrent or None
    fits = groups_that_fit(cfg.ray, "a stage-2 sweep trial")
    return {"cpu": 0.01}, min(fits, cfg.tune.max_concurrent or fits)  # Tune needs a non-empty request


def run_sweep(cfg: ExperimentConfig) -> dict[str, Any]:
    """Sweep, pick on validation, evaluate the chosen threshold once on test, write the sweep's outputs; with
    tune.flip_budget, the budget's threshold instead (tune/budget.py: no trial, Ray not started)."""
    cfg = cfg.with_absolute_paths()
    method = method_of(cfg)
    if not method.sweepable:
        tunable = ", ".join(m.name for m in STAGE2_METHODS.values() if m.sweepable)
        why = "is scored without a trained head" if method.threshold == "tuned" else "has none to tune"
        raise UserError(f"the sweep tunes a method's threshold; stage2.method {method.name!r} {why} (methods "
                        f"whose threshold the sweep tunes: {tunable}; the others run at its choice)")  # fmt: skip
    if cfg.tune.flip_budget is not None:
        return run_flip_budget(cfg, method.name)
    load_train_split(cfg.data)  # refuses empty classes
    source = FlipSource(cfg.layout)  # fails early without the inference job's outputs
    lowest = searched_range(cfg)[0]
    if lowest < source.lowest_threshold():
        raise UserError(f"threshold {lowest} is below what the saved inference outputs allow "
                        f"({source.lowest_threshold()}); save predictions or lower infer.candidates_t_min")  # fmt: skip
    out = cfg.layout.tune
    config_lib.save_resolved(cfg, out)
    cached = method.backend(cfg.stage2, "sweep") == "features"
    if cached:
        cached_features(cfg)
    ensure_ray(cfg.ray)
    resources, concurrent = _trial_resources(cfg, cached)
    metric = "objective" if cached else f"val_{cfg.tune.objective}"
    space, search_alg, num_samples, scheduler = _search(cfg, concurrent)
    tuner = tune.Tuner(
        tune.with_resources(head_trial if cached else trainer_trial, resources),
        # progress from trials as plain lines: concurrent trials' bars would take turns on the one status line
        param_space={"experiment": config_lib.to_dict(cfg), "threshold": space,
                     "display": replace(display(), bar=False).to_dict()},
        tune_config=tune.TuneConfig(metric=metric, mode="max", search_alg=search_alg, num_samples=num_samples,
                                    scheduler=scheduler, reuse_actors=cached),
        run_config=tune.RunConfig(name="tune", storage_path=str(cfg.layout.ray), verbose=0),
    )  # fmt: skip
    grid = tuner.fit()
    if grid.errors:
        # Tune hands back each trial's exception wrapped (a RayTaskError with the original as cause)
        causes = [getattr(error, "cause", None) or error for error in grid.errors]
        user = next((c for c in causes if isinstance(c, UserError)), None)
        if user is not None:
            raise UserError(str(user)) from None
        raise RunFailed(f"{len(causes)} sweep trial(s) failed, first: {str(causes[0]).strip().splitlines()[-1]}; "
                        f"tracebacks under {cfg.layout.ray / 'tune'}")  # fmt: skip
    rows = [_trial_row(result, _epochs(cfg), cfg.tune.objective) for result in grid]
    rows.sort(key=lambda r: r["threshold"])
    chosen = choose(rows, cfg.tune.objective)
    edge = edge_warning(cfg, chosen["threshold"])
    if edge:
        log.warning("tune: chosen threshold %g: %s", chosen["threshold"], edge)
    final = _evaluate_chosen(cfg, chosen["threshold"], cached)
    report = {"threshold": chosen["threshold"], "objective": f"val_{cfg.tune.objective}", "chosen": chosen,
              "edge_warning": edge, "search": cfg.tune.search, "early_stop": cfg.tune.early_stop,
              "searched": searched_range(cfg), "method": method.name,
              "backend": "features" if cached else "images", **final}  # fmt: skip
    _write_outputs(out, rows, report)
    storage.write_json(cfg.layout.chosen_threshold, report)
    return report


def _trial_row(result: Any, epochs: int, objective: str) -> dict[str, Any]:
    """One trial's line of the sweep: its best validation epoch, and whether it ran all `epochs` (ASHA may have
    stopped it: `stopped at epoch k`)."""
    history = result.metrics_dataframe
    if history is None or history.empty:
        raise RunFailed(f"sweep trial at threshold {result.config['threshold']:g} reported no epoch; its log is "
                        f"under {result.path}")  # fmt: skip
    key = "objective" if "objective" in history else f"val_{objective}"
    best = history.loc[history[key].idxmax()]
    ran = int(history["training_iteration"].max())
    return {"threshold": float(result.config["threshold"]), "epochs_run": ran,
            "status": "completed" if ran >= epochs else f"stopped at epoch {ran}",
            "num_flips": int(best.get("num_flips", 0)), "best_epoch": int(best.get("epoch", 0)),
            **{f: float(best.get(f, np.nan)) for f in METRIC_FIELDS}}  # fmt: skip


def choose(rows: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The completed trial with the best validation `objective` (ties: fewer flips). Early-stopped trials are
    listed in the sweep but never chosen: their best epoch comes from a shorter schedule."""
    completed = [r for r in rows if r["status"] == "completed"]
    if not completed:
        raise UserError("no sweep trial ran its whole schedule (ASHA stopped every one): raise tune.num_samples "
                        "or tune.grace_period, or lower tune.reduction_factor")  # fmt: skip
    return max(completed, key=lambda r: (r[f"val_{objective}"], -r["num_flips"]))


def searched_range(cfg: ExperimentConfig) -> list[float]:
    t = cfg.tune
    return [min(t.thresholds), max(t.thresholds)] if t.search == "grid" else [t.search_min, t.search_max]


def edge_warning(cfg: ExperimentConfig, threshold: float) -> str | None:
    """A message when `threshold` sits at an end of the searched range: the grid's lowest or highest value, or
    for a search within EDGE_SHARE of the range's ends. The best threshold may then lie outside the range."""
    low, high = searched_range(cfg)
    margin = 0.0 if cfg.tune.search == "grid" else EDGE_SHARE * (high - low)
    keys = "tune.thresholds" if cfg.tune.search == "grid" else "tune.search_min / tune.search_max"
    if threshold <= low + margin:
        return f"at the low edge of the searched range [{low:g}, {high:g}]: widen {keys}"
    if threshold >= high - margin:
        return f"at the high edge of the searched range [{low:g}, {high:g}]: widen {keys}"
    return None


def _evaluate_chosen(cfg: ExperimentConfig, threshold: float, cached: bool) -> dict[str, Any]:
    """The chosen threshold's model on test, once (the sweep itself never looks at test)."""
    if not cached:
        stage2 = replace(cfg.stage2, threshold=ThresholdPolicy.fixed(threshold), epochs=_epochs(cfg),
                         checkpoint=str(stage1_checkpoint(cfg)))  # fmt: skip
        out = cfg.layout.tune_chosen
        shutil.rmtree(out, ignore_errors=True)  # an earlier sweep may have chosen another threshold
        results = fit(replace(cfg, stage2=stage2), "stage2", out=out)
        return {k: results[k] for k in ("test", "test_calibrated", "temperature")}
    inputs = head_inputs(cfg)
    table, _ = flips_at(cfg, inputs.labels["train"], threshold)
    result = train_head(cfg.stage2, method_of(cfg), _epochs(cfg), inputs.manifest, inputs.features, inputs.labels,
                        inputs.classifier, table, cfg.seed, cfg.tune.objective,
                        tensorboard=scalars_folder(cfg, cfg.layout.tune_chosen))  # fmt: skip
    return evaluate_head(result.head, inputs.features, inputs.labels, inputs.manifest)


def _pct(value: float | None) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _write_outputs(out: Path, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    storage.write_csv(out / "sweep.csv", rows, SWEEP_FIELDS)
    lines = [
        "| threshold | trial | flips | val balanced | val top-1 | val few | val ECE |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " **(chosen)**" if r["threshold"] == report["threshold"] else ""
        lines.append(f"| {r['threshold']:g}{mark} | {r['status']} | {r['num_flips']} | {_pct(r['val_balanced_acc'])} | "
                     f"{_pct(r['val_top1'])} | {_pct(r['val_few'])} | {_pct(r['val_ece'])} |")  # fmt: skip
    test = report["test"]
    stopped = sum(r["status"] != "completed" for r in rows)
    lines += ["", f"Chosen on {report['objective']} among the {len(rows) - stopped} completed trials"
              + (f" ({stopped} stopped early by ASHA are listed, not chosen)" if stopped else "")
              + f": threshold {report['threshold']:g}. Test (evaluated once): top-1 {_pct(test['top1'])}, "
              f"few {_pct(test['few'])}, ECE {_pct(test['ece'])} ({_pct(report['test_calibrated']['ece'])} after "
              "temperature scaling)."]  # fmt: skip
    if report["edge_warning"]:
        lines += ["", f"**Warning: the chosen threshold is {report['edge_warning']}.**"]
    storage.write_text(out / "sweep.md", "\n".join(lines) + "\n")
    x = [r["threshold"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for axis, (key, label) in zip(axes, (("val_balanced_acc", "val balanced acc (%)"), ("val_few", "val few (%)"),
                                         ("val_ece", "val ECE (%)"), ("num_flips", "flips")), strict=True):  # fmt: skip
        axis.plot(x, [r[key] for r in rows], marker="o")
        axis.axvline(report["threshold"], color="gray", linestyle="--")
        axis.set(xlabel="threshold", ylabel=label)
        axis.grid(alpha=0.3)
    save_figure(fig, out / "sweep.png")
