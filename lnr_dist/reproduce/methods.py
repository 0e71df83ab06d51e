"""How `reproduce` runs a registered stage-2 method (lnr_dist.stage2.registry) for one seed: the shared steps its
declaration needs (its backbone's stage 1; inference when its labels read it; the sweep when its threshold is
tuned; cached features when it trains on them), then its own run into <seed>/methods/<name>/ (results.json,
test_logits.npz). Nothing here knows a method by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.layout import RunLayout
from ..experiment import ExperimentConfig
from ..features.backend import run_on_features
from ..rounds import run_rounds
from ..stage2.registry import BACKBONES, STAGE2_METHODS, Stage2Method, backbone_config

# a shared step runs a job of lnr_dist/jobs.py on a backbone's run folder; in this order
JOB_ORDER = ("stage1", "infer", "tune", "features")
# the config sections each job's outputs depend on (ray, fault and launch settings do not count)
JOB_SECTIONS = {
    "stage1": ("data", "model", "stage1"),
    "features": ("data", "model", "stage1"),
    "infer": ("data", "model", "stage1", "infer"),
    "tune": ("data", "model", "stage1", "infer", "stage2", "tune"),
}


@dataclass(frozen=True)
class Step:
    """A shared step: `job` on `backbone`'s run folder. Its name keeps the default backbone's steps short
    (stage1, infer, ...) and suffixes the others' (stage1_ce, ...)."""

    job: str
    backbone: str

    @property
    def name(self) -> str:
        return self.job if BACKBONES[self.backbone].folder == "" else f"{self.job}_{self.backbone}"

    @property
    def sections(self) -> tuple[str, ...]:
        return JOB_SECTIONS[self.job]


@dataclass(frozen=True)
class SeedRun:
    """One seed's configuration and folders; `execute(job, cfg, out)` runs a job here or on SLURM."""

    cfg: ExperimentConfig  # run_dir = <root>/seed<k> (the default backbone's pipeline)
    execute: Callable[[str, ExperimentConfig, str | None], dict[str, Any]]

    @property
    def layout(self) -> RunLayout:
        return self.cfg.layout

    def step_config(self, step: Step) -> ExperimentConfig:
        cfg = backbone_config(self.cfg, step.backbone)
        if step.job == "tune":
            cfg = replace(cfg, stage2=replace(cfg.stage2, method=sweep_method(self.cfg).name))
        return cfg


def sweep_method(cfg: ExperimentConfig) -> Stage2Method:
    """The method the sweep step tunes: stage2.method when the sweep can tune it (Stage2Method.sweepable), else
    the first such reproduced method, else the first such registered one (a method scored without a trained head,
    e.g. wann_lnr, has its threshold chosen for it). Its chosen threshold serves every tuned method on that
    backbone."""
    configured = STAGE2_METHODS[cfg.stage2.method]
    if configured.sweepable:
        return configured
    methods = [STAGE2_METHODS[n] for n in cfg.reproduce.methods]
    fallback = next((m for m in STAGE2_METHODS.values() if m.sweepable), configured)
    return next((m for m in methods if m.sweepable), fallback)


def steps_of(method: Stage2Method, cfg: ExperimentConfig) -> list[Step]:
    """The shared steps `method` needs, from its declaration."""
    jobs = ["stage1"]
    if method.retrain:
        if method.labels.reads_inference:
            jobs.append("infer")
        if method.threshold == "tuned":
            jobs.append("tune")
        if method.backend(cfg.stage2) == "features":
            jobs.append("features")
    return [Step(job, method.stage1) for job in jobs]


def sections_of(method: Stage2Method, cfg: ExperimentConfig) -> set[str]:
    """The config sections a method's result depends on (its steps', its declared `sections` and, when it
    retrains, stage2's)."""
    sections = {s for step in steps_of(method, cfg) for s in step.sections} | set(method.sections)
    return sections | ({"stage2"} if method.retrain else set())


def run_method(method: Stage2Method, seed_run: SeedRun, folder: Path) -> dict[str, Any]:
    """Run `method` for one seed; returns {"source": folder with results.json + test_logits.npz}."""
    cfg = method.run_config(seed_run.cfg)
    if not method.retrain:  # the method's result is its backbone's stage-1 model
        return {"source": str(cfg.layout.stage("stage1"))}
    if method.backend(cfg.stage2) == "features":
        if method.rounds_of(cfg.stage2) > 1:  # iterated LNR (on images the stage2 job runs the rounds)
            run_rounds(cfg, folder)
        else:
            run_on_features(cfg, folder)
    else:
        seed_run.execute("stage2", cfg, str(folder))
    return {"source": str(folder)}
