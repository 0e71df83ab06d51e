"""`lnr-dist launch`: submit a job (or the whole pipeline) through submitit, to SLURM or to a local process.

The config is loaded and checked here, on the submitting machine, so bad input fails before any cluster time
is spent. The pipeline is stage1 -> infer -> tune -> stage2, chained on SLURM with `afterok` dependencies (a
failed step cancels the rest: `kill-on-invalid-dep`), each step resumable on its own.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit

from ..core import config as config_lib
from ..core.errors import UserError
from ..experiment import ExperimentConfig
from ..jobs import JOBS
from .tasks import JobTask, user_error_file

log = logging.getLogger(__name__)

PIPELINE = ("stage1", "infer", "tune", "stage2")


@dataclass(frozen=True)
class LaunchOptions:
    """Where and how a job runs. cpus_per_task None = what the config's Ray workers need per node."""

    cluster: Literal["local", "slurm"] = "local"
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int = 240
    mem_gb: float | None = None
    folder: str | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 0 or self.time_min < 1:
            raise UserError("need --nodes >= 1, --gpus-per-node >= 0 and --time >= 1 (minutes)")
        if self.cluster == "local" and self.nodes != 1:
            raise UserError("--cluster local runs one process: use --nodes 1, or --cluster slurm")


@dataclass(frozen=True)
class Submitted:
    name: str
    job: submitit.Job

    @property
    def log_paths(self) -> tuple[Path, Path]:
        return self.job.paths.stdout, self.job.paths.stderr


def check_before_submit(job: str, cfg: ExperimentConfig) -> None:
    """What can fail without a cluster fails here: splits and their files, batch sizes, and the inputs a job
    reads from earlier steps (unless the pipeline makes them)."""
    from ..data.splits import load_train_split
    from ..infer.inference import checkpoint_path
    from ..models.checkpoint import load_model
    from ..stage2.flip_sources import FlipSource
    from ..stage2.registry import method_of
    from ..train.trainer import preflight

    if job in ("stage1", "stage2"):
        preflight(cfg, job)
    elif job == "infer":
        preflight(cfg, "stage1")
        load_model(
            cfg.model, cfg.data.num_classes, checkpoint_path(cfg)
        )  # missing, damaged or foreign: one line
    elif job == "tune":
        method_of(cfg)
        load_train_split(cfg.data)
        FlipSource(cfg.layout)


def _executor(opts: LaunchOptions, cfg: ExperimentConfig, name: str) -> submitit.AutoExecutor:
    folder = Path(opts.folder or cfg.layout.slurm_logs).resolve()
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.cluster)
    except RuntimeError as exc:  # submitit finds no srun/sbatch here: not a SLURM login node
        raise UserError(
            f"--cluster {opts.cluster}: {exc} (use --cluster local to run on this machine)"
        ) from exc
    need = math.ceil(cfg.ray.num_workers * cfg.ray.cpus_per_worker / opts.nodes)
    params: dict[str, Any] = {
        "name": f"lnr-{name}",
        "timeout_min": opts.time_min,
        "cpus_per_task": opts.cpus_per_task or max(1, need),
        "tasks_per_node": 1,
    }
    if opts.cluster == "slurm":
        params.update(nodes=opts.nodes, gpus_per_node=opts.gpus_per_node or None, slurm_partition=opts.partition,
                      slurm_signal_delay_s=60)  # fmt: skip
        if opts.mem_gb:
            params["mem_gb"] = opts.mem_gb
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit(
    job: str,
    cfg: ExperimentConfig,
    opts: LaunchOptions,
    after: Submitted | None = None,
    out: str | None = None,
) -> Submitted:
    executor = _executor(opts, cfg, job)
    if after is not None:
        executor.update_parameters(
            slurm_additional_parameters={
                "dependency": f"afterok:{after.job.job_id}",
                "kill-on-invalid-dep": "yes",
            }
        )
    try:
        submitted = Submitted(
            job, executor.submit(JobTask(job, config_lib.to_dict(cfg.with_absolute_paths()), out))
        )
    except submitit.core.utils.FailedJobError as exc:  # sbatch refused the request (it printed why)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no reason given"
        raise UserError(f"sbatch refused the {job} job: {reason} (check --partition, --nodes, --gpus-per-node, "
                        "--time and --mem-gb)") from exc  # fmt: skip
    log.info("submitted %s as job %s", job, submitted.job.job_id)
    return submitted


def launch(job: str, cfg: ExperimentConfig, opts: LaunchOptions) -> list[Submitted]:
    """Check, then submit `job` (or the pipeline); `wait_for` each returned job to block until it is done."""
    if job != "pipeline" and job not in JOBS:
        raise UserError(f"unknown job {job!r}: one of {', '.join((*JOBS, 'pipeline'))}")
    # (features is a job too: `reproduce` submits it; on its own `launch` offers the four stages and pipeline)
    cfg = cfg.with_absolute_paths()
    steps = PIPELINE if job == "pipeline" else (job,)
    if job == "pipeline":
        _check_pipeline(cfg)
    check_before_submit(steps[0], cfg)
    submitted: list[Submitted] = []
    for step in steps:
        if opts.cluster == "local" and submitted:
            wait_for(submitted[-1])  # a local process has no dependencies: run the chain in order
        submitted.append(submit(step, cfg, opts, after=submitted[-1] if submitted else None))
    return submitted


def _check_pipeline(cfg: ExperimentConfig) -> None:
    """The pipeline ends with the sweep and stage 2: its method must have a threshold to tune, and stage 2 must
    not silently ignore the sweep (policy infer trains on the inference job's flips)."""
    from ..stage2.registry import method_of

    method = method_of(cfg)
    if not method.sweepable:
        why = (
            "is scored without a trained head" if method.threshold == "tuned" else "has no threshold to tune"
        )
        raise UserError(f"launch pipeline runs the threshold sweep, but stage2.method {method.name!r} {why}: "
                        "launch stage1 and stage2 one by one, or pick a method whose threshold the sweep tunes "
                        "(e.g. lnr)")  # fmt: skip
    if cfg.stage2.threshold.policy == "infer":
        raise UserError("launch pipeline runs the sweep before stage 2, but stage2.threshold.policy is infer (the "
                        "inference job's flips): set stage2.threshold.policy=tuned to train on the sweep's choice, "
                        "or fixed with stage2.threshold.value")  # fmt: skip


class JobFailed(RuntimeError):
    pass


# squeue states of a job that SLURM will still run (or is running); a requeued job passes through them
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT"}  # fmt: skip


def queue_state(job_id: str) -> str | None:
    """The job's state in squeue; None once SLURM has forgotten it, UNKNOWN when squeue did not answer (a busy
    slurmctld times out)."""
    found = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if found.returncode != 0 and "Invalid job id" not in found.stderr:
        return UNKNOWN
    return found.stdout.strip() or None


UNKNOWN = "UNKNOWN"
# how long squeue may not answer, and how many polls 2 s apart must agree a job left the active states, before the
# queue's word is taken: a requeued job can show its interrupted attempt's end state (or nothing) for a moment
# before it is pending again, and a busy slurmctld can time out
QUEUE_PATIENCE_S, GONE_POLLS = 120.0, 3


def _wait_in_queue(job: submitit.Job) -> None:
    """While a job is requeued (preemption, time limit, `scontrol requeue`), sacct briefly reports the interrupted
    attempt as FAILED and submitit would take that as the end; the queue says whether SLURM runs it again."""
    gone, unanswered_since = 0, None
    while gone < GONE_POLLS:
        state = queue_state(job.job_id)
        if state == UNKNOWN:
            unanswered_since = unanswered_since or time.monotonic()
            if time.monotonic() - unanswered_since > QUEUE_PATIENCE_S:
                break  # submitit's own polling decides
        else:
            unanswered_since = None
            gone = 0 if state in ACTIVE else gone + 1
        if gone < GONE_POLLS:
            time.sleep(2.0)
    job.watcher.clear()  # forget states read while the job was being requeued


def wait_for(item: Submitted) -> Any:
    """The job's result (task 0's); UserError (one line) when the job stopped on bad input; otherwise JobFailed
    naming the log with its last lines."""
    try:
        if isinstance(item.job, submitit.SlurmJob):
            _wait_in_queue(item.job)
        return item.job.results()[0]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
        stdout, stderr = item.log_paths
        message = user_error_file(item.job.paths.folder, item.job.job_id)
        if message.is_file():  # the traceback stays in the log
            raise UserError(
                f"{message.read_text()} ({item.name} job {item.job.job_id}; log: {stderr})"
            ) from None
        tail = _tail(stderr) or _tail(stdout) or str(exc)
        raise JobFailed(
            f"{item.name} job {item.job.job_id} failed ({item.job.state}); log: {stderr}\n--- last lines ---\n{tail}"
        ) from exc


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def describe(item: Submitted) -> str:
    stdout, stderr = item.log_paths
    return (
        f"{item.name}: job {item.job.job_id}\n  log: {stdout}\n  errors: {stderr}\n"
        f"  follow: tail -f {stdout}   (squeue -j {item.job.job_id}; sacct -j {item.job.job_id})"
    )
