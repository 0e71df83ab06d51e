"""`lnr-dist reproduce`: for each seed, the shared steps (stage 1 with plain CE and with mixup, inference + flips,
the threshold sweep, cached features) once, then every method of the registry, then the binary task; then the
tables and figures over all seeds. Each step is resumable (steps.py); jobs run in this process on a local Ray
cluster, or each as a SLURM job through submitit (`cluster="slurm"`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core import config as config_lib
from ..core import storage
from ..core.errors import UserError
from ..experiment import ExperimentConfig
from .methods import METHODS, SHARED_STEPS, SeedRun
from .steps import StepLog, config_hash

log = logging.getLogger(__name__)

# the config sections each shared step's outputs depend on (ray, fault and launch settings do not count)
STEP_SECTIONS = {
    "stage1_ce": ("data", "model", "stage1"),
    "stage1": ("data", "model", "stage1"),
    "features": ("data", "model", "stage1"),
    "infer": ("data", "model", "stage1", "infer"),
    "tune": ("data", "model", "stage1", "infer", "stage2", "tune"),
}


@dataclass(frozen=True)
class SeedOutcome:
    seed: int
    folder: Path
    methods: dict[str, Path]  # method -> folder with results.json (+ test_logits.npz)
    binary: dict[str, Any] | None
    ran: list[str]
    skipped: list[str]


def _hash(cfg: ExperimentConfig, sections: set[str], *extra: Any) -> str:
    data = config_lib.to_dict(cfg)
    return config_hash(cfg.seed, {name: data[name] for name in sorted(sections)}, *extra)


def local_executor() -> Callable[[str, ExperimentConfig, str | None], dict[str, Any]]:
    from ..jobs import JOBS

    return lambda job, cfg, out: JOBS[job](cfg, out)


def slurm_executor(opts) -> Callable[[str, ExperimentConfig, str | None], dict[str, Any]]:
    """Each job is one SLURM job (submitit), waited for; a failure raises JobFailed with the log's tail."""
    from ..launch.submit import submit, wait_for

    return lambda job, cfg, out: wait_for(submit(job, cfg, opts, out=out))


def check_methods(methods: tuple[str, ...], baselines: tuple[str, ...] = ()) -> None:
    for key, names in (("reproduce.methods", methods), ("reproduce.baselines", baselines)):
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise UserError(f"{key}: unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")


def run_seed(cfg: ExperimentConfig, execute) -> SeedOutcome:
    run = SeedRun(cfg, execute)
    steps = StepLog(run.folder)
    methods = cfg.reproduce.methods
    needed = {step for m in methods for step in METHODS[m].needs}
    if cfg.reproduce.stage2_on == "features":
        needed.add("features")
    jobs = {"stage1_ce": lambda: execute("stage1", run.ce_cfg, None), "stage1": lambda: execute("stage1", cfg, None),
            "infer": lambda: execute("infer", cfg, None), "tune": lambda: execute("tune", cfg, None),
            "features": lambda: execute("features", cfg, None)}  # fmt: skip
    for step in SHARED_STEPS:
        if step in needed:
            steps.run(step, _hash(cfg, set(STEP_SECTIONS[step])), lambda step=step: _summary(jobs[step]()))
    folders = {}
    for name in methods:
        method = METHODS[name]
        sections = {s for need in method.needs for s in STEP_SECTIONS[need]} | set(method.sections)
        folder = run.method_dir(name)
        digest = _hash(cfg, sections, name, cfg.reproduce.stage2_on if "stage2" in sections else None)
        result = steps.run(f"method-{name}", digest, lambda m=method, f=folder: m.run(run, f))
        folders[name] = Path(result["source"])
    binary = None
    if cfg.reproduce.binary.enabled:
        from .binary import run_binary

        def binary_step() -> dict[str, Any]:
            result = run_binary(cfg, cfg.seed)
            storage.write_json(run.folder / "binary" / "results.json", result)
            return {"source": str(run.folder / "binary" / "results.json")}

        record = steps.run(
            "binary", _hash(cfg, {"data"}, config_lib.to_dict(cfg.reproduce.binary)), binary_step
        )
        binary = json.loads(Path(record["source"]).read_text())
    return SeedOutcome(cfg.seed, run.folder, folders, binary, steps.ran, steps.skipped)


def _summary(result: dict[str, Any] | None) -> dict[str, Any]:
    """What a shared step's record keeps of its job's output (small scalars only)."""
    result = result or {}
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "note"}


def reproduce(cfg: ExperimentConfig, execute=None) -> dict[str, Any]:
    """Run everything; returns {"results_md": path, "figures": [...], "ran": [...], "skipped": [...]}."""
    from ..train.trainer import preflight
    from .report import write_report

    cfg = cfg.with_absolute_paths()
    check_methods(cfg.reproduce.methods, cfg.reproduce.baselines)
    preflight(replace(cfg, run_dir=str(Path(cfg.run_dir) / f"seed{cfg.seed}")), "stage1")  # before any job
    execute = execute or local_executor()
    root = Path(cfg.run_dir)
    config_lib.save_resolved(cfg, root, "reproduce_config.yaml")
    outcomes = []
    for k in range(cfg.reproduce.seeds):
        seed = cfg.seed + k
        log.info("reproduce: seed %d (%d of %d)", seed, k + 1, cfg.reproduce.seeds)
        outcomes.append(run_seed(replace(cfg, seed=seed, run_dir=str(root / f"seed{seed}")), execute))
    report = write_report(cfg, outcomes)
    ran = [f"seed{o.seed}/{name}" for o in outcomes for name in o.ran]
    skipped = [f"seed{o.seed}/{name}" for o in outcomes for name in o.skipped]
    return {**report, "ran": ran, "skipped": skipped}
