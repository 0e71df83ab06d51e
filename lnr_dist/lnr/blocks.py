"""Blocks of rows processed on a few threads: NumPy releases the GIL inside its loops, and every block's result
is exact (integer sums) or per-sample, so the thread count changes the speed, never the result."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")
MAX_THREADS = 8
# A block of rows is sized so its float64 working arrays stay near this many bytes (see default_chunk_rows):
# small enough to stay in cache, large enough that NumPy's per-call overhead does not matter.
CHUNK_BYTES = 2 * 2**20


def default_chunk_rows(num_classes: int) -> int:
    """Rows per block: about CHUNK_BYTES of float64 per working array, whatever C is."""
    return max(1, CHUNK_BYTES // (8 * max(num_classes, 1)))


def default_threads() -> int:
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def map_blocks(
    func: Callable[[slice], R], num_rows: int, block_rows: int, threads: int | None = None
) -> Iterator[R]:
    """func(rows) for consecutive row slices of `block_rows`, results in order."""
    slices = [slice(start, start + block_rows) for start in range(0, num_rows, block_rows)]
    threads = min(threads or default_threads(), max(len(slices), 1))
    if threads == 1:
        yield from map(func, slices)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="lnr-block") as pool:
        yield from pool.map(func, slices)
