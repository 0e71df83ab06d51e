"""`<job folder>/workers.json`: what each Ray Train worker of a job cost, written by rank 0 when the job's
workers return (runtime/raycluster.run_workers). Read by benchmarks/bench_scale.py and by anyone sizing
`ray.num_workers` and a node's memory.

    {"job": "infer", "started_unix": 1796198466.1,
     "workers": [{"rank": 0, "node": "host", "pid": 123, "entry_s": 4.2, "first_batch_s": 6.8,
                  "rss_entry_mib": 610.0, "rss_first_batch_mib": 820.0, "peak_rss_mib": 1050.0, "images": 57923},
                 ...]}

`entry_s` and `first_batch_s` are seconds from the driver's start of the attempt that succeeded (before Ray places
the workers; run_workers restarts a failed group, and each attempt starts the clock again) to
the worker function's entry and to its first batch: the job's Ray start-up is the largest `first_batch_s`.
Memory in MiB (core/meter.py): the growth a job's own arrays cause is `peak_rss_mib - rss_first_batch_mib`.
Clocks: the driver's and the worker's `time.time()`; across nodes the figures are as good as their clock sync.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from ..core import storage
from ..core.dist import all_gather_objects
from ..core.meter import METER, peak_rss_mib

log = logging.getLogger(__name__)

WORKERS_FILE = "workers.json"
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
RETURN_ABOVE_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """Have glibc give freed blocks above 128 KiB back to the system at once (Linux; a no-op returning False
    elsewhere). By default glibc raises its mmap threshold after a large block is freed (up to 32 MiB), so the
    next temporaries of that size come from the heap, and the heap's free memory stays resident: a worker's RSS
    then carries its batches' freed activations and the flip engine's freed blocks on top of what it holds.
    Fixed thresholds turn that adjustment off; at most two arenas keep the threads' heaps from multiplying it.
    The inference job calls it: at ImageNet-LT's shape over 2 workers (benchmarks/bench_scale.py) its workers'
    growth over the first batch went from 363-401 to 300-302 MiB for a 221 MiB shard matrix. Not the training
    jobs: called in every worker, stage 1 ran 114 -> 161 s in the same benchmark (each mid-sized temporary
    mapped and faulted in anew)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_THRESHOLD, RETURN_ABOVE_BYTES),
                                                              (_M_TRIM_THRESHOLD, RETURN_ABOVE_BYTES),
                                                              (_M_ARENA_MAX, 2)))  # fmt: skip


def _seconds_since(started_unix: float, at: float | None) -> float | None:
    return None if at is None else round(at - started_unix, 3)


def this_worker(rank: int, started_unix: float) -> dict[str, Any]:
    """This process's record (see the module docstring)."""

    def mib(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "rank": rank,
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "entry_s": _seconds_since(started_unix, METER.entry_unix),
        "first_batch_s": _seconds_since(started_unix, METER.first_batch_unix),
        "rss_entry_mib": mib(METER.rss_entry_mib),
        "rss_first_batch_mib": mib(METER.rss_first_batch_mib),
        "peak_rss_mib": mib(peak_rss_mib()),
        "images": METER.images,
    }


def write_workers(out: Path, job: str, started_unix: float, rank: int) -> None:
    """Gather every rank's record (all ranks call this, once, after the job's function returned); rank 0
    writes <out>/workers.json atomically."""
    records = all_gather_objects(this_worker(rank, started_unix))
    if rank == 0:
        try:
            storage.write_json(Path(out) / WORKERS_FILE, {"job": job, "started_unix": started_unix,
                                                           "workers": records})  # fmt: skip
        except OSError as exc:  # a measurement: the job it describes has succeeded, and must not run again
            log.warning("%s: could not write %s: %s", job, Path(out) / WORKERS_FILE, exc)


def read_workers(path: Path) -> dict[str, Any]:
    """A workers.json as written, with `startup_s` (largest first_batch_s, None without batches) and, per worker,
    `growth_mib` (peak over RSS at the first batch, None without a first batch) added."""
    data = json.loads(Path(path).read_text())
    firsts = [w["first_batch_s"] for w in data["workers"] if w.get("first_batch_s") is not None]
    data["startup_s"] = max(firsts) if firsts else None
    for worker in data["workers"]:
        base = worker.get("rss_first_batch_mib")
        worker["growth_mib"] = None if base is None else max(0.0, worker["peak_rss_mib"] - base)
    return data
