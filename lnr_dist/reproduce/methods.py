"""The methods `reproduce` compares, in one registry: a method names the shared steps it needs and how it
produces its folder (`results.json` with test metrics, `test_logits.npz`). A new stage-2 method (another
rebalancing loss, a nearest-neighbour classifier on cached features, ...) is one more `Method` here; the runner,
tables and figures pick it up unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..experiment import ExperimentConfig

# shared steps, in the order they must run; each maps to a job of lnr_dist/jobs.py
SHARED_STEPS = ("stage1_ce", "stage1", "infer", "tune", "features")


@dataclass(frozen=True)
class SeedRun:
    """One seed's configuration and folders; `execute(job, cfg, out)` runs a job here or on SLURM."""

    cfg: ExperimentConfig  # run_dir = <root>/seed<k> (the mixup backbone's pipeline)
    execute: Callable[[str, ExperimentConfig, str | None], dict[str, Any]]

    @property
    def folder(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def ce_cfg(self) -> ExperimentConfig:
        """Plain cross-entropy stage 1 (no mixup) in its own run folder."""
        return replace(
            self.cfg, run_dir=str(self.folder / "ce"), stage1=replace(self.cfg.stage1, mixup_alpha=0.0)
        )

    def method_dir(self, name: str) -> Path:
        return self.folder / "methods" / name


@dataclass(frozen=True)
class Method:
    name: str
    needs: tuple[str, ...]
    sections: tuple[str, ...]  # config sections whose values the method's result depends on (besides `needs`)
    run: Callable[[SeedRun, Path], dict[str, Any]]  # writes results.json + test_logits.npz into the folder
    description: str


def _stage1_result(which: str) -> Callable[[SeedRun, Path], dict[str, Any]]:
    def run(seed_run: SeedRun, folder: Path) -> dict[str, Any]:
        source = (seed_run.ce_cfg if which == "ce" else seed_run.cfg).stage_dir("stage1")
        return {"source": str(source)}  # stage 1's own folder is the method's result

    return run


def stage2_variant(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    """The config of stage-2 `method`: mislas on the original labels, lnr and random at the sweep's threshold."""
    threshold = None if method == "mislas" else "tuned"
    return replace(cfg, stage2=replace(cfg.stage2, method=method, threshold=threshold))


def _stage2(method: str) -> Callable[[SeedRun, Path], dict[str, Any]]:
    def run(seed_run: SeedRun, folder: Path) -> dict[str, Any]:
        if seed_run.cfg.reproduce.stage2_on == "features":
            return _on_features(method)(seed_run, folder)
        seed_run.execute("stage2", stage2_variant(seed_run.cfg, method), str(folder))
        return {"source": str(folder)}

    return run


def _on_features(method: str) -> Callable[[SeedRun, Path], dict[str, Any]]:
    def run(seed_run: SeedRun, folder: Path) -> dict[str, Any]:
        from .feature_heads import head_method

        head_method(seed_run.cfg, method, folder)
        return {"source": str(folder)}

    return run


FLIP_STEPS = ("stage1", "infer", "tune")
FLIP_SECTIONS = ("stage2", "infer", "tune")
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("ce", ("stage1_ce",), (), _stage1_result("ce"), "stage 1 with plain cross-entropy"),
        Method("mixup", ("stage1",), (), _stage1_result("mixup"), "stage 1 with mixup (LNR's backbone)"),
        Method(
            "mislas",
            ("stage1",),
            ("stage2",),
            _stage2("mislas"),
            "MiSLAS stage 2 (LAS, LWS, balanced), no flips",
        ),
        Method(
            "lnr", FLIP_STEPS, FLIP_SECTIONS, _stage2("lnr"), "stage 2 on LNR flips at the tuned threshold"
        ),
        Method(
            "random", FLIP_STEPS, FLIP_SECTIONS, _stage2("random"), "stage 2 on as many random flips as LNR"
        ),
        Method(
            "smote", ("stage1", "features"), ("stage2",), _on_features("smote"), "SMOTE on stage-1 features"
        ),
        Method(
            "adasyn",
            ("stage1", "features"),
            ("stage2",),
            _on_features("adasyn"),
            "ADASYN on stage-1 features",
        ),
    ]
}
