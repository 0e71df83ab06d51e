"""One .npy array written by every worker, each into its own rows, made visible atomically by rank 0.

Rank 0 creates a temp file of the final shape, every rank writes its contiguous rows at their offset, and
once all have written, rank 0 renames it into place: readers never see a partly written array, and no worker
has to hold (or send) more than its own rows. The folder must be shared by the workers (one host, or a shared
filesystem on a cluster).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dist import RankContext, barrier

WRITE_ROWS = 8192  # rows per write call


def _data_offset(handle) -> int:
    """Byte offset of a .npy file's data (after its magic and header)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(handle)
    else:
        np.lib.format.read_array_header_2_0(handle)
    return handle.tell()


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
    rows = np.ascontiguousarray(rows, dtype=dtype)
    fits = rows.shape[1:] == tuple(shape[1:]) and start >= 0 and start + len(rows) <= shape[0]
    barrier()
    if not fits:  # a plain write would run into other ranks' rows or past the array's end
        raise ValueError(f"rows of shape {rows.shape} at {start} do not fit the array's {tuple(shape)}")
    row_bytes = rows.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    # plain writes, not a memory map: pages written through a map count in this worker's RSS until it is unmapped
    # (R x C x itemsize more at the job's peak), while written file pages stay in the page cache, nobody's RSS
    with open(temp, "r+b") as handle:
        handle.seek(_data_offset(handle) + start * row_bytes)
        flat = rows.reshape(len(rows), row_bytes // rows.itemsize)  # an empty shard too
        for first in range(0, len(rows), WRITE_ROWS):
            handle.write(memoryview(flat[first : first + WRITE_ROWS]).cast("B"))
    barrier()
    if ctx.is_main:
        temp.replace(path)
    barrier()
