"""Exact nearest neighbours with the queries sharded across Ray workers (neighbours/search.py does the search).

The index (N, D) float32 is put into Ray's object store once and every worker reads it there, without a copy
(numpy arrays in the object store are shared by the processes of a node: one copy per node, not per worker); the
queries likewise. Worker r of W searches the contiguous rows [N_q r / W, N_q (r + 1) / W) of the queries
(data/sampling.py shard_bounds) against the whole index, and the driver writes each worker's lists into the rows of
those dataset indices, so the result is the one-process result row for row (the search has one tie rule whatever
the backend, and a row's neighbours do not depend on the other rows of its block).

Each worker is a Ray task of ray.cpus_per_worker CPUs (its BLAS / OpenMP / torch threads limited to as many), and
of one GPU when the backend may be torch and ray.use_gpu resolves true (torch on that GPU: the index is then
copied to its memory, N x D x 4 bytes). Memory of one worker beside the shared index and queries: its lists,
n_w x k x 16 bytes (int64 index + float64 distance, n_w = its query rows), and one block of the search at a time,
about `block_bytes` (256 MiB by default), plus FAISS's own tiles (tens of MiB). At ImageNet-LT's shape
(115,846 x 512 float32, k = 52) that is 237 MiB shared, and per worker of two about 48 MiB of lists + 256 MiB.
The driver holds the gathered lists (n x k x 16 bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from ..data.sampling import shard_bounds
from ..experiment import RayConfig
from ..neighbours.search import BLOCK_BYTES, Backend, Metric, Neighbours, check_search, search_rows
from .raycluster import ensure_ray, use_gpu

# the worker's function lives in neighbours/search.py: a worker process imports that light module only
_search_rows = ray.remote(search_rows)


def sharded_nearest(
    queries: np.ndarray,
    index: np.ndarray,
    k: int,
    workers: int,
    ray_cfg: RayConfig,
    backend: Backend = "auto",
    metric: Metric = "euclidean",
    block_bytes: int = BLOCK_BYTES,
) -> Neighbours:
    """neighbours.search.nearest with the query rows split over `workers` Ray tasks (module docstring); the
    same lists, gathered by dataset index. Checks its arguments (ValueError) before Ray starts; Ray is started
    (ensure_ray: ray.address, or a local cluster) when it is not running."""
    same = queries is index  # the training split searched against itself: one object in the store
    queries, index = check_search(queries, index, k, backend, metric)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ensure_ray(ray_cfg)
    index_ref = ray.put(index)
    query_ref = index_ref if same else ray.put(queries)
    gpus = 1.0 if backend in ("auto", "torch") and use_gpu(ray_cfg) else 0.0
    task = _search_rows.options(num_cpus=ray_cfg.cpus_per_worker, num_gpus=gpus)
    n = queries.shape[0]
    shards = [shard_bounds(n, rank, workers) for rank in range(workers)]
    refs = [task.remote(index_ref, query_ref, start, stop, k, backend, metric, ray_cfg.torch_threads, block_bytes)
            for start, stop in shards]  # fmt: skip
    distances, indices = np.empty((n, k), np.float64), np.empty((n, k), np.int64)
    used: set[Any] = set()
    for (start, stop), ref in zip(shards, refs, strict=True):
        d, i, name = ray.get(ref)
        distances[start:stop], indices[start:stop] = d, i
        used.add(name)
    return Neighbours(distances, indices, "+".join(sorted(used)))
