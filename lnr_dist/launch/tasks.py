"""The jobs as submitit tasks: a picklable callable per job, which SLURM can requeue without losing work.

`JobTask(job, config)` carries the resolved ExperimentConfig as a plain dict (validated on the submitting
machine). On SLURM every task of the allocation calls it: task 0 becomes the Ray driver, the others lend their
node to the Ray cluster (ray_allocation.py). On preemption or timeout submitit calls `checkpoint()`, which
resubmits the same task: the job itself resumes from its last complete checkpoint (stage 1/2 `last.pt`; the
inference and sweep jobs recompute, their outputs are only written complete), so nothing before the last
checkpoint is lost. `scontrol requeue` runs the same pickled task again, with the same effect.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit

from ..core import config as config_lib
from ..core.logs import setup_logging
from ..experiment import ExperimentConfig
from .ray_allocation import TaskPlace, ray_allocation

log = logging.getLogger(__name__)


def _stage1(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from ..train.trainer import fit

    return fit(cfg, "stage1", out=None if out is None else Path(out))


def _stage2(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from ..train.trainer import fit

    return fit(cfg, "stage2", out=None if out is None else Path(out))


def _infer(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from ..infer.inference import run_inference

    return run_inference(cfg)


def _tune(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from ..tune.sweep import run_sweep

    return run_sweep(cfg)


def _features(cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any]:
    from ..features.cache import cached_features, features_dir

    shapes = {name: list(array.shape) for name, array in cached_features(cfg).items()}
    return {"folder": str(features_dir(cfg.with_absolute_paths())), "shapes": shapes}


# name -> (config, optional output folder replacing the stage's default) -> the job's summary
JOBS: dict[str, Callable[[ExperimentConfig, str | None], dict[str, Any]]] = {
    "stage1": _stage1,
    "infer": _infer,
    "tune": _tune,
    "stage2": _stage2,
    "features": _features,
}


def allocation_place() -> TaskPlace:
    """This task's place in its SLURM allocation (one task per node), from SLURM's variables."""
    cpus = int(
        os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or os.cpu_count()
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = len([d for d in visible.split(",") if d.strip()])
    # a requeued job must not meet its last attempt's Ray: each attempt has its own folders
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    job_id = f"{os.environ['SLURM_JOB_ID']}.{attempt}"
    return TaskPlace(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), job_id, cpus, gpus)


def run_in_allocation(job: str, cfg: ExperimentConfig, out: str | None = None) -> dict[str, Any] | None:
    """Run `job` on a Ray cluster spanning the allocation: the result on task 0, None on the other tasks."""
    place = allocation_place()
    share = Path(cfg.with_absolute_paths().run_dir) / "slurm" / f"ray-{place.job_id}"
    with ray_allocation(place, share) as address:
        if address is None:
            log.info("task %d lent its node to the Ray cluster of task 0; done", place.rank)
            return None
        return JOBS[job](replace(cfg, ray=replace(cfg.ray, address=address)), out)


def in_sbatch_allocation() -> bool:
    """The sbatch templates (cluster/sbatch/) set LNR_RAY_ALLOCATION=1 and start one task per node with srun."""
    return os.environ.get("LNR_RAY_ALLOCATION") == "1" and "SLURM_PROCID" in os.environ


class JobTask(submitit.helpers.Checkpointable):
    """One job (stage1, infer, tune, stage2 or features) on one resolved config; `out` replaces a stage's
    default folder (stage 2 of several methods in one run)."""

    def __init__(self, job: str, config: dict[str, Any], out: str | None = None) -> None:
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}; one of {', '.join(JOBS)}")
        self.job = job
        self.config = config
        self.out = out

    def __call__(self) -> dict[str, Any] | None:
        env = submitit.JobEnvironment()
        setup_logging(rank=env.global_rank)
        cfg = config_lib.from_dict(ExperimentConfig, self.config, f"{self.job} job config")
        log.info("%s job %s, task %d/%d on %s", self.job, env.job_id, env.global_rank, env.num_tasks,
                 socket.gethostname())  # fmt: skip
        if env.cluster != "slurm":
            return JOBS[self.job](cfg, self.out)
        return run_in_allocation(self.job, cfg, self.out)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        log.info("%s job interrupted (preemption or time limit): requeued; it resumes from its last checkpoint",
                 self.job)  # fmt: skip
        return submitit.helpers.DelayedSubmission(JobTask(self.job, self.config, self.out))
