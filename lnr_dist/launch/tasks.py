"""The jobs as submitit tasks: a picklable callable per job, which SLURM can requeue without losing work.

`JobTask(job, config)` carries the resolved ExperimentConfig as a plain dict (validated on the submitting
machine) and runs the job of that name from the registry (lnr_dist/jobs.py). On SLURM every task of the
allocation calls it: task 0 becomes the Ray driver, the others lend their node to the Ray cluster
(ray_allocation.py). On preemption or timeout submitit calls `checkpoint()`, which resubmits the same task: the
job itself resumes from its last complete checkpoint (stage 1/2 `last.pt`; the inference and sweep jobs
recompute, their outputs are only written complete), so nothing before the last checkpoint is lost.
`scontrol requeue` runs the same pickled task again, with the same effect. This is the one module that imports
submitit besides submit.py: a local job never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import submitit

from ..core import config as config_lib
from ..core import storage
from ..core.errors import UserError
from ..core.logs import setup_logging
from ..experiment import ExperimentConfig
from ..jobs import JOBS
from .ray_allocation import run_in_allocation

log = logging.getLogger(__name__)


def user_error_file(folder: str | os.PathLike, job_id: str) -> Path:
    """Where a job that stopped on a UserError leaves its message (beside submitit's logs)."""
    return Path(folder) / f"{job_id}_user_error.txt"


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
        try:
            if env.cluster != "slurm":
                return JOBS[self.job](cfg, self.out)
            return run_in_allocation(self.job, cfg, self.out)
        except UserError as exc:
            # bad input fails the same way on every requeue: the waiting side turns it into one line
            storage.write_text(user_error_file(env.paths.folder, env.job_id), str(exc))
            raise

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        log.info("%s job interrupted (preemption or time limit): requeued; it resumes from its last checkpoint",
                 self.job)  # fmt: skip
        return submitit.helpers.DelayedSubmission(JobTask(self.job, self.config, self.out))
