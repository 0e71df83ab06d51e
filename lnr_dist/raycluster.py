"""Connecting to Ray: a local cluster started by us, or an existing one (a SLURM allocation's) by address."""

from __future__ import annotations

import logging
import os

import ray
import torch

from .experiment import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
    """ray.init once per process. Local clusters run without Ray 2.60's token auth, which would otherwise write a
    token under the home folder; graceful drain is cut to 0 s so that tests and short jobs end promptly."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    log.info("Ray: %s", ray.cluster_resources())


def use_gpu(cfg: RayConfig) -> bool:
    return torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
