"""Connecting to Ray: a local cluster started by us, or an existing one (a SLURM allocation's) by address."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from .dist import RankContext
from .experiment import RayConfig
from .logs import setup_logging

log = logging.getLogger(__name__)


# For every Ray process we start or join: no Ray 2.60 token auth (it would write a token under the home folder),
# graceful drain cut to 0 s (tests and short jobs end promptly), Ray Train v2.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
}


def ensure_ray(cfg: RayConfig) -> None:
    """ray.init once per process, with RAY_ENV where the environment does not say otherwise."""
    if ray.is_initialized():
        return
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    log.info("Ray: %s", ray.cluster_resources())


def use_gpu(cfg: RayConfig) -> bool:
    return torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu


def run_workers(
    worker: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: RayConfig,
    name: str,
    storage: Path,
    callbacks: list | None = None,
) -> None:
    """Run `worker` on cfg.num_workers Ray Train workers (gloo on CPU, nccl on GPU), restarting the whole group
    up to cfg.max_failures times when a worker dies. Raises when the run finally fails."""
    ensure_ray(cfg)
    gpu = use_gpu(cfg)
    TorchTrainer(
        worker,
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
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=callbacks or None,
        ),
    ).fit()


def worker_setup(cfg: RayConfig) -> tuple[RankContext, torch.device]:
    """Inside a Ray Train worker: rank context, logging, threads and the device."""
    context = ray.train.get_context()
    ctx = RankContext(context.get_world_rank(), context.get_world_size(), context.get_local_rank())
    setup_logging(rank=ctx.rank)
    torch.set_num_threads(cfg.torch_threads)
    return ctx, ray.train.torch.get_device()
