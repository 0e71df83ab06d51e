"""One .npy array written by every worker, each into its own rows, made visible atomically by rank 0.

Rank 0 creates a temp file of the final shape, every rank writes its contiguous rows through a memory map, and
once all have written, rank 0 renames it into place: readers never see a partly written array, and no worker
has to hold (or send) more than its own rows. The folder must be shared by the workers (one host, or a shared
filesystem on a cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dist import RankContext, barrier


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def write_shared_rows(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, start: int, rows: np.ndarray, ctx: RankContext
) -> None:
    """Collective: every rank calls it with its rows [start, start + len(rows)); `path` exists afterwards."""
    temp = partial_path(path)
    if ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)
    barrier()
    target = np.lib.format.open_memmap(temp, mode="r+")
    target[start : start + len(rows)] = rows
    target.flush()
    del target
    barrier()
    if ctx.is_main:
        temp.replace(path)
    barrier()
