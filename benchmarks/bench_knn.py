"""Exact k nearest neighbours at ImageNet-LT's shape: the sharded search (lnr_dist/runtime/sharded_search.py, FAISS
on the CPU) on 1 and 2 Ray workers against scikit-learn's brute force, in one run.

Run: .venv/bin/python benchmarks/bench_knn.py [--rows N] [--k 51]
The index is 115,846 x 512 float32 features, random but clustered (1,000 Gaussian clusters, long-tailed sizes from
1,280 to 5 like ImageNet-LT's classes); the queries are its first --rows rows (default all: the reliability search
of WANN, the training split against itself). Each Ray worker gets 1 CPU (its BLAS / OpenMP threads limited to 1);
scikit-learn's brute force (`NearestNeighbors(algorithm="brute")`) is limited to 1 thread too, so the ratio compares
one worker with one core. Times include putting the index into the object store and the exact float64 re-ranking
(ties by index); Ray's start and the workers' first imports (a warm-up search) are not timed. Lines: knn_rows_per_s=<x> workers=<w> for 1 and 2 workers, then
sklearn_rows_per_s=, the ratio to scikit-learn with 1 worker and the 2-vs-1 scaling (on a machine whose cores are
shared with other work, the scaling says little).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_flips import long_tail_counts  # benchmarks/ is the script's folder: on sys.path
from threadpoolctl import threadpool_limits

from lnr_dist.experiment import RayConfig
from lnr_dist.runtime.raycluster import ensure_ray
from lnr_dist.runtime.sharded_search import sharded_nearest

ROWS, DIMS, CLUSTERS = 115_846, 512, 1_000


def clustered_features(seed: int = 0) -> np.ndarray:
    """ROWS x DIMS float32: CLUSTERS Gaussian clusters with long-tailed sizes, rows shuffled."""
    rng = np.random.default_rng(seed)
    sizes = long_tail_counts(ROWS, CLUSTERS, 1_280, 5)
    members = rng.permutation(np.repeat(np.arange(CLUSTERS), sizes))
    centres = rng.normal(0.0, 1.0, (CLUSTERS, DIMS)).astype(np.float32)
    return centres[members] + rng.normal(0.0, 0.7, (ROWS, DIMS)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=ROWS, help="query rows (the index keeps all 115,846)")
    parser.add_argument("--k", type=int, default=51, help="neighbours per query")
    args = parser.parse_args()
    index = clustered_features()
    queries = index if args.rows >= ROWS else index[: args.rows]  # all rows: one object in Ray's store
    ray_cfg = RayConfig(num_workers=2, cpus_per_worker=1, use_gpu=False)
    ensure_ray(ray_cfg)
    # both worker processes import the search before the clock starts (Ray keeps them for the timed calls)
    sharded_nearest(index[:64], index[:1000], 3, 2, ray_cfg, backend="faiss")
    rates, lists = {}, {}
    for workers in (1, 2):
        start = time.perf_counter()
        found = sharded_nearest(queries, index, args.k, workers, ray_cfg, backend="faiss")
        seconds = time.perf_counter() - start
        rates[workers], lists[workers] = args.rows / seconds, found.indices
        print(f"knn_rows_per_s={rates[workers]:.1f} workers={workers} ({args.rows} x {ROWS} x {DIMS}, k={args.k}: "
              f"{seconds:.1f} s)")  # fmt: skip
    assert np.array_equal(lists[1], lists[2]), "1 and 2 workers disagree"
    from sklearn.neighbors import NearestNeighbors

    with threadpool_limits(1):
        start = time.perf_counter()
        _, theirs = NearestNeighbors(n_neighbors=args.k, algorithm="brute").fit(index).kneighbors(queries)
        seconds = time.perf_counter() - start
    sklearn_rate = args.rows / seconds
    same = float((theirs == lists[1]).all(axis=1).mean())
    print(f"sklearn_rows_per_s={sklearn_rate:.1f} (brute force, 1 thread: {seconds:.1f} s; its lists equal ours on "
          f"{100 * same:.2f}% of rows, distance ties aside)")  # fmt: skip
    print(
        f"ratio_vs_sklearn_1_worker={rates[1] / sklearn_rate:.2f} scaling_2_vs_1_workers={rates[2] / rates[1]:.2f}"
    )


if __name__ == "__main__":
    main()
