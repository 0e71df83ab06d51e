"""Connecting to Ray (a local cluster started by us, or an existing one, a SLURM allocation's, by address) and
running a job's workers on it.

`run_workers` checks that the workers fit the cluster before anything starts, ends the run at once when a worker
raises a UserError (bad input fails the same way on every attempt) and restarts the worker group for any other
failure, up to `ray.max_failures` times. The workers' tracebacks go to `<job folder>/error.log`, not the screen:
the driver raises one UserError or RunFailed, which the CLI prints as one line.

Restarts are driven here rather than by Ray Train's FailureConfig(max_failures): Ray Train V2 retries every worker
error alike (its FailurePolicy is internal, with no public hook). Node preemptions stay with Ray (their own budget).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import (
    ControllerError,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
    WorkerGroupError,
)
from ray.train.torch import TorchConfig, TorchTrainer

from ..core.dist import RankContext
from ..core.errors import RunFailed, UserError
from ..core.logs import display, set_display, setup_logging
from ..core.meter import METER
from ..experiment import RayConfig
from .usage import write_workers

log = logging.getLogger(__name__)


# For every Ray process we start or join: no Ray 2.60 token auth (it would write a token under the home folder),
# graceful drain cut to 0 s (tests and short jobs end promptly), Ray Train v2.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}
ERROR_LOG = "error.log"  # in the job's folder: every worker failure with its traceback
# Ray Train V2 waits this long for a worker group to be placed, then counts a controller failure and tries again
# (without limit by default): the wait is bounded by FailureConfig(controller_failure_limit).
_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
_START_ATTEMPT_S = 60.0
# the loop config's key for the driver's Display (log level, progress bar or lines), adopted by every worker
DISPLAY_KEY = "_display"
STARTED_KEY = "_started_unix"  # the driver's time.time() at the attempt's start


def ensure_ray(cfg: RayConfig) -> None:
    """ray.init once per process, with RAY_ENV where the environment does not say otherwise."""
    if ray.is_initialized():
        return
    _check_reachable(cfg.address)
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    log.info("Ray: %s", ray.cluster_resources())


def _check_reachable(address: str | None) -> None:
    """A host:port that does not answer is a UserError now: ray.init would retry it for minutes."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return
    except (OSError, ValueError) as exc:
        raise UserError(f"ray.address={address}: no Ray cluster answers there ({exc}): start it, correct "
                        "ray.address, or remove it to start a local cluster") from exc  # fmt: skip


def use_gpu(cfg: RayConfig) -> bool:
    return torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu


def worker_resources(cfg: RayConfig) -> dict[str, float]:
    """What one Ray Train worker takes: ray.cpus_per_worker CPUs, and one GPU with GPUs."""
    return {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if use_gpu(cfg) else {})}


def _autoscales() -> bool:
    """Whether the cluster has an autoscaler that may add nodes. Ray Train checks its requests against the same
    figure (the autoscaler's maximum resources; none on a local cluster or a SLURM allocation's)."""
    try:
        from ray._private.state import state

        return bool(state.get_max_resources_from_cluster_config())
    except Exception as exc:  # a private API: without it the cluster is taken as fixed (the check refuses)
        log.debug("cannot tell whether the Ray cluster autoscales: %s", exc)
        return False


def groups_that_fit(cfg: RayConfig, job: str) -> int:
    """How many groups of ray.num_workers workers the Ray cluster holds at once (>= 1), counting every node's
    whole workers (a worker cannot span nodes), busy or not.

    Raises UserError with the arithmetic and the keys to change when not even one group fits: Ray Train would
    otherwise wait for resources that never come. On a cluster that autoscales returns 1 (it may grow; the wait
    is bounded by ray.start_timeout_s)."""
    bundle = worker_resources(cfg)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    room = sum(min(int(res.get(key, 0.0) / amount + 1e-9) for key, amount in bundle.items()) for res in nodes)
    if room >= cfg.num_workers:
        return room // cfg.num_workers
    if _autoscales():
        log.info("%s: the Ray cluster holds %d of %d workers now; it autoscales: waiting up to "
                 "ray.start_timeout_s = %g s for the rest", job, room, cfg.num_workers, cfg.start_timeout_s)  # fmt: skip
        return 1
    totals = {key: sum(res.get(key, 0.0) for res in nodes) for key in bundle}
    needs = f"ray.num_workers x ray.cpus_per_worker = {cfg.num_workers} x {cfg.cpus_per_worker:g} = " + (
        f"{cfg.num_workers * cfg.cpus_per_worker:g} CPUs"
    )
    has = f"{totals['CPU']:g} CPUs"
    keys = "lower ray.num_workers or ray.cpus_per_worker"
    if "GPU" in bundle:
        needs += f" and {cfg.num_workers} GPUs (one per worker)"
        has += f" and {totals['GPU']:g} GPUs"
        keys += ", or set ray.use_gpu=false"
    largest = max((res.get("CPU", 0.0) for res in nodes), default=0.0)
    raise UserError(
        f"{job} needs {needs}; the Ray cluster has {has} on {len(nodes)} node(s), room for {room} worker(s) (a "
        f"worker's resources must be on one node; the largest has {largest:g} CPUs): {keys}"
    )


def run_workers(
    worker: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: RayConfig,
    name: str,
    storage: Path,
    out: Path,
    callbacks: list | None = None,
) -> None:
    """Run `worker(loop_config)` on cfg.num_workers Ray Train workers (gloo on CPU, nccl on GPU).

    `name` names the run under `storage` (Ray's run folder); `out` is the job's folder, where error.log gets the
    traceback of every worker failure. Raises UserError before anything starts when the workers cannot fit the
    cluster, when they were not placed within cfg.start_timeout_s, and, at once, when a worker raised one (its
    message). Any other failure restarts the whole group (the jobs resume from their checkpoints) up to
    cfg.max_failures times, then raises RunFailed naming error.log.
    """
    ensure_ray(cfg)
    groups_that_fit(cfg, name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_attempt = min(cfg.start_timeout_s, _START_ATTEMPT_S)
    os.environ[_START_TIMEOUT_ENV] = f"{per_attempt:g}"  # the driver's value reaches Ray Train's controller
    start_retries = math.ceil(cfg.start_timeout_s / per_attempt - 1e-9) - 1
    loop_config = {
        **loop_config,
        DISPLAY_KEY: display().to_dict(),
    }  # --log-level and the bar reach the workers
    for attempt in range(1, cfg.max_failures + 2):
        # the attempt's start: its workers' start-up in workers.json is counted from here (runtime/usage.py)
        loop_config[STARTED_KEY] = time.time()
        try:
            _trainer(worker, loop_config, cfg, name, storage, out, attempt, start_retries, callbacks).fit()
            return
        except TrainingFailedError as exc:
            failure = exc
        user_error = _user_error(failure)
        if user_error is not None:  # the worker's own exception (its traceback is in error.log)
            raise user_error from None
        if isinstance(failure, ControllerError) and type(failure.controller_failure).__name__ in (
            "WorkerGroupStartupTimeoutError",
            "InsufficientClusterResourcesError",
        ):
            raise UserError(_not_placed(cfg, name, failure.controller_failure)) from None
        summary = _summary(failure)
        if attempt > cfg.max_failures:
            raise RunFailed(f"{name}: {summary}; stopped after {cfg.max_failures} restart(s) (ray.max_failures); "
                            f"worker tracebacks in {out / ERROR_LOG}") from failure  # fmt: skip
        log.warning("%s: %s; restarting the workers (%d of ray.max_failures = %d), from the last checkpoint where "
                    "the job keeps one; tracebacks in %s", name, summary, attempt, cfg.max_failures,
                    out / ERROR_LOG)  # fmt: skip


def _trainer(
    worker, loop_config, cfg: RayConfig, name: str, storage: Path, out: Path, attempt: int, start_retries: int,
    callbacks: list | None,
) -> TorchTrainer:  # fmt: skip
    gpu = use_gpu(cfg)
    return TorchTrainer(
        functools.partial(_run_recording_errors, worker, str(out), attempt, name),
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            # restarts after worker failures are decided in run_workers; the controller's own failures (a worker
            # group that could not be placed in time) are bounded, not retried forever (Ray's default)
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=start_retries),
            # Ray Train's INFO lines (each failure decision with its traceback) stay in Ray's session logs
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or None,
        ),
    )


def _not_placed(cfg: RayConfig, job: str, error: Exception) -> str:
    """The one line for workers Ray Train could not place: in time, or ever on an autoscaling cluster."""
    keys = "lower ray.num_workers or ray.cpus_per_worker" + (
        ", or set ray.use_gpu=false" if use_gpu(cfg) else ""
    )
    if type(error).__name__ == "InsufficientClusterResourcesError":  # above the autoscaler's maximum
        reason = " ".join(line.strip() for line in str(error).splitlines()[:2])
        return f"{job}: {reason}: {keys}"
    return (
        f"{job}: the Ray cluster did not place ray.num_workers = {cfg.num_workers} workers x "
        f"{worker_resources(cfg)} within ray.start_timeout_s = {cfg.start_timeout_s:g} s (it has "
        f"{ray.cluster_resources().get('CPU', 0.0):g} CPUs in all: other jobs hold them, or it did not grow in "
        f"time): {keys}, free the cluster, or raise ray.start_timeout_s"
    )


def _summary(failure: TrainingFailedError) -> str:
    """One line per failing rank: the exception's last line (or first, for errors without a traceback)."""

    def line(error: BaseException) -> str:
        lines = [text.strip() for text in str(error).splitlines() if text.strip()] or [""]
        if "Traceback (most recent call last)" in str(error):
            return lines[-1][:300]
        return f"{type(error).__name__}: {lines[0]}"[:300]

    if isinstance(failure, WorkerGroupError):
        return "; ".join(f"rank {rank}: {line(e)}" for rank, e in sorted(failure.worker_failures.items()))
    if isinstance(failure, ControllerError):
        return f"Ray Train controller: {line(failure.controller_failure)}"
    return line(failure)


def _user_error(failure: TrainingFailedError) -> UserError | None:
    """The UserError a worker raised (WorkerGroupError.worker_failures holds each rank's own exception)."""
    if not isinstance(failure, WorkerGroupError):
        return None
    return next((e for _, e in sorted(failure.worker_failures.items()) if isinstance(e, UserError)), None)


def _drop_training_function_errors(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Error in training function")


def _run_recording_errors(
    worker: Callable[[dict[str, Any]], None], out: str, attempt: int, name: str, loop_config: dict[str, Any]
) -> None:
    """The function each Ray Train worker runs: `worker`, with the driver's Display adopted first and any
    exception's traceback appended to <out>/error.log before it reaches Ray (which hands the exception itself to
    the driver); when it returns, every rank's start-up and memory go to <out>/workers.json."""
    METER.enter()
    if DISPLAY_KEY in loop_config:
        set_display(loop_config[DISPLAY_KEY])
    # Ray Train logs each training-function exception with its traceback to the console; it is in error.log.
    logging.getLogger("ray.train.v2._internal.util").addFilter(_drop_training_function_errors)
    try:
        worker(loop_config)
        if STARTED_KEY in loop_config:
            write_workers(Path(out), name, loop_config[STARTED_KEY], ray.train.get_context().get_world_rank())
    except Exception as exc:
        folder = Path(out)
        rank = ray.train.get_context().get_world_rank()
        header = (f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt}, rank {rank} on "
                  f"{socket.gethostname()}: {type(exc).__name__}: {exc}")  # fmt: skip
        with open(folder / ERROR_LOG, "a") as handle:  # one write per failure: ranks append concurrently
            handle.write(f"{header}\n{traceback.format_exc()}\n")
        raise


def worker_setup(cfg: RayConfig) -> tuple[RankContext, torch.device]:
    """Inside a Ray Train worker: rank context, logging (at the driver's level), threads and the device."""
    context = ray.train.get_context()
    ctx = RankContext(context.get_world_rank(), context.get_world_size(), context.get_local_rank())
    setup_logging(rank=ctx.rank)
    torch.set_num_threads(cfg.torch_threads)
    return ctx, ray.train.torch.get_device()
