"""The experiment config: one YAML per dataset with a section per concern; every job validates all of it, so a
typo anywhere fails before any cluster time is spent."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .data.config import DataConfig
from .models import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """`stage1:` — the one trainer's recipe (stage 2 extends it).

    batch_size and eval_batch_size are GLOBAL (as papers state them); each of W workers takes batch_size / W,
    so the recipe means the same for any worker count.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 0
    mixup_alpha: float = 0.0
    eval_batch_size: int = 256
    select_metric: Literal["balanced_acc", "top1"] = "balanced_acc"
    amp: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and momentum in [0, 1)")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0 = off), got {self.mixup_alpha}")


@dataclass(frozen=True)
class RayConfig:
    """`ray:` — workers of each Ray Train job. use_gpu null = use GPUs when CUDA is present."""

    num_workers: int = 2
    cpus_per_worker: int = 1
    use_gpu: bool | None = None
    max_failures: int = 2
    address: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker < 1 or self.max_failures < 0:
            raise ValueError("need num_workers >= 1, cpus_per_worker >= 1, max_failures >= 0")


@dataclass(frozen=True)
class FaultConfig:
    """`fault:` — deliberate failure for tests of restart and resume: rank `rank` raises at the start of
    epoch `raise_at_epoch` (the first time only when `once`)."""

    raise_at_epoch: int | None = None
    rank: int = 0
    once: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    run_dir: str = "runs/experiment"
    seed: int = 0
    stage1: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")

        for name in ("stage1",):
            section = getattr(self, name)
            for key in ("batch_size", "eval_batch_size"):
                if getattr(section, key) % self.ray.num_workers:
                    raise ValueError(
                        f"{name}.{key} ({getattr(section, key)}) must be divisible by ray.num_workers "
                        f"({self.ray.num_workers}): batch sizes are global"
                    )

    def with_absolute_paths(self) -> ExperimentConfig:
        """Paths resolved against the current folder: Ray workers and SLURM tasks run elsewhere."""

        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        data = replace(
            self.data,
            root=absolute(self.data.root),
            train_split=absolute(self.data.train_split),
            val_split=absolute(self.data.val_split),
            test_split=absolute(self.data.test_split),
        )
        model = replace(self.model, pretrained_path=absolute(self.model.pretrained_path))
        return replace(self, data=data, model=model, run_dir=absolute(self.run_dir))

    def stage_dir(self, stage: str) -> Path:
        return Path(self.run_dir) / stage
