"""Deliberate failures for tests of restart and resume (the `fault:` config section)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ..core.dist import RankContext
from ..experiment import FaultConfig


def inject_fault(fault: FaultConfig, ctx: RankContext, step: int, out: Path) -> None:
    """Raise on rank `fault.rank` (or kill its process, with `fault.kill`) when `step` (an epoch or an inference
    pass) is `fault.raise_at_epoch`; with `once`, only the first time (a marker file in `out` remembers it across
    restarts)."""
    if fault.raise_at_epoch != step or fault.rank != ctx.rank:
        return
    marker = out / ".fault_injected"
    if fault.once and marker.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if fault.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected fault at step {step} on rank {ctx.rank} (fault.raise_at_epoch)")
