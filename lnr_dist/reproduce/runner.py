"""`lnr-dist reproduce`: for each seed, the shared steps (stage 1 of each backbone the methods need, inference +
flips, the threshold sweep, cached features) once, then every method of the registry, then the binary task; then
the tables and figures over all seeds. Each step is resumable (steps.py); jobs run in this process on a local Ray
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
from ..experiment import ExperimentConfig
from ..stage2.registry import BACKBONES, STAGE2_METHODS, reproduce_methods
from .methods import JOB_ORDER, SeedRun, run_method, sections_of, steps_of
from .steps import StepLog, config_hash

log = logging.getLogger(__name__)


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


def _shared_steps(cfg: ExperimentConfig) -> list:
    """The shared steps of one seed, in the order they run (backbone by backbone, JOB_ORDER within one)."""
    needed = {step for name in cfg.reproduce.methods for step in steps_of(STAGE2_METHODS[name], cfg)}
    order = {name: i for i, name in enumerate(BACKBONES)}
    return sorted(needed, key=lambda s: (order[s.backbone], JOB_ORDER.index(s.job)))


def steps_per_seed(cfg: ExperimentConfig) -> int:
    """Shared steps, one per method, and the binary task when enabled."""
    return len(_shared_steps(cfg)) + len(cfg.reproduce.methods) + int(cfg.reproduce.binary.enabled)


def run_seed(cfg: ExperimentConfig, execute, first: int = 1, total: int | None = None) -> SeedOutcome:
    """One seed's steps, numbered from `first` of `total` in the log."""
    run = SeedRun(cfg, execute)
    steps = StepLog(run.layout.root, first, total)
    methods = [STAGE2_METHODS[name] for name in cfg.reproduce.methods]
    for step in _shared_steps(cfg):
        step_cfg = run.step_config(step)
        steps.run(step.name, _hash(step_cfg, set(step.sections)),
                  lambda job=step.job, c=step_cfg: _summary(execute(job, c, None)))  # fmt: skip
    folders = {}
    for method in methods:
        folder = run.layout.method(method.name)
        digest = _hash(
            method.run_config(cfg), sections_of(method, cfg), method.name, method.backend(cfg.stage2)
        )
        result = steps.run(f"method-{method.name}", digest, lambda m=method, f=folder: run_method(m, run, f))
        folders[method.name] = Path(result["source"])
    binary = None
    if cfg.reproduce.binary.enabled:
        from .binary import run_binary

        def binary_step() -> dict[str, Any]:
            result = run_binary(cfg, cfg.seed)
            storage.write_json(run.layout.binary_results, result)
            return {"source": str(run.layout.binary_results)}

        record = steps.run(
            "binary", _hash(cfg, {"data"}, config_lib.to_dict(cfg.reproduce.binary)), binary_step
        )
        binary = json.loads(Path(record["source"]).read_text())
    return SeedOutcome(cfg.seed, run.layout.root, folders, binary, steps.ran, steps.skipped)


def _summary(result: dict[str, Any] | None) -> dict[str, Any]:
    """What a shared step's record keeps of its job's output (small scalars only)."""
    result = result or {}
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "note"}


def reproduce(cfg: ExperimentConfig, execute=None) -> dict[str, Any]:
    """Run everything; returns {"results_md": path, "figures": [...], "ran": [...], "skipped": [...]}."""
    from ..train.trainer import preflight
    from .report import write_report

    cfg = cfg.with_absolute_paths()
    # reproduce.methods resolved (empty = every registered method), plugins imported, names checked
    methods = reproduce_methods(cfg)
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, methods=tuple(m.name for m in methods)))
    for method in methods:  # a method's own inputs (e.g. the pool and mining.budget), before any job
        method.check_inputs(cfg)
    root = cfg.layout
    preflight(
        replace(cfg, run_dir=str(root.seed(cfg.seed).root)), "stage1"
    )  # before any job (and the pool file)
    execute = execute or local_executor()
    config_lib.save_resolved(cfg, root.root, "reproduce_config.yaml")
    outcomes = []
    per_seed = steps_per_seed(cfg)
    for k in range(cfg.reproduce.seeds):
        seed = cfg.seed + k
        log.info("reproduce: seed %d (%d of %d), %d steps", seed, k + 1, cfg.reproduce.seeds, per_seed)
        seed_cfg = replace(cfg, seed=seed, run_dir=str(root.seed(seed).root))
        outcomes.append(run_seed(seed_cfg, execute, 1 + k * per_seed, per_seed * cfg.reproduce.seeds))
    report = write_report(cfg, outcomes)
    ran = [f"seed{o.seed}/{name}" for o in outcomes for name in o.ran]
    skipped = [f"seed{o.seed}/{name}" for o in outcomes for name in o.skipped]
    return {**report, "ran": ran, "skipped": skipped}
