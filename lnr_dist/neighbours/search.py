"""Exact k nearest neighbours under one distance and one tie rule, whichever library searches.

A backend proposes k' = k + margin candidates per query in float32:

- `faiss`: FAISS's exact flat kernels (`faiss.knn`, what `IndexFlatL2.search` / `IndexFlatIP.search` run) on the
  index array itself, so the array is searched where it lies (e.g. read-only in Ray's object store) instead of
  being copied into a FAISS index;
- `torch`: one matmul + topk per block of queries (on a GPU: FAISS's GPU wheels target another CUDA than our
  torch), in IEEE float32 (TF32 off for the call);
- `sklearn`: scikit-learn's brute-force `NearestNeighbors`, the fallback.

Every candidate's distance is then recomputed in float64 from the float32 rows, d(q, x) = sum_d (q_d - x_d)^2,
and the candidates are ordered by (d, dataset index). A query row is certified when its k-th distance lies below
the smallest d a non-candidate can have given the backend's rounding: a float32 dot product of length D is off by
at most gamma_D |q| |x| (gamma_D = D u / (1 - D u), u = 2^-24; Higham, "Accuracy and Stability of Numerical
Algorithms", 2002, eq. 3.5), taken twice over with two more roundings for |q|^2 + |x|^2 - 2 q.x. A row that is
not certified (many points at one distance, e.g. duplicated images) is searched again against the whole index in
float64. So every backend returns the same lists: the k nearest under the float64 distance, a distance tie broken
by the smaller dataset index.

`metric="cosine"` expects unit rows (the caller normalises them): the FAISS and torch kernels then rank by inner
product (IndexFlatIP's kernel) and the lists are the same as Euclidean on those rows (|q - x|^2 = 2 - 2 q.x).

Memory: the index is read in place (torch on a GPU: copied to the device once per call). Beyond it and the
(n, k) results (16 bytes a neighbour), a call allocates about `block_bytes` at a time (256 MiB by default): query
blocks are sized so that the float64 re-ranking (B x k' x D x 8 bytes, three temporaries) and torch's distance
tile (B x N x 4 bytes, three temporaries) fit; FAISS and scikit-learn propose for 4,096 queries at a time
(4,096 x k' x 16 bytes of candidates, plus their own distance tiles, FAISS's 4,096 x 1,024 x 4 bytes).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import numpy as np

Backend = Literal["auto", "faiss", "torch", "sklearn"]
Metric = Literal["euclidean", "cosine"]
BACKENDS: tuple[str, ...] = ("faiss", "torch", "sklearn")
BLOCK_BYTES = 256 * 2**20
PROPOSE_ROWS = 4096  # queries per FAISS / scikit-learn call
_U32 = 2.0**-24  # unit roundoff of float32
_SAFETY = 2.0  # the bound is a worst case already; twice it leaves room for kernels that round differently


class Neighbours(NamedTuple):
    """distances (n, k) float64, squared Euclidean, ascending; indices (n, k) int64, rows of the index, ties in
    ascending index order; backend: the library that proposed the candidates."""

    distances: np.ndarray
    indices: np.ndarray
    backend: str


def resolve_backend(backend: Backend, device: str | None = None) -> str:
    """`auto`: torch on a CUDA device (given, or present), else FAISS when it imports, else scikit-learn."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown nearest-neighbour backend {backend!r}; valid: auto, {', '.join(BACKENDS)}"
            )
        return backend
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "sklearn"
    return "faiss"


def candidate_count(k: int, n_index: int) -> int:
    """k' = k plus a margin (a quarter of k, at least 16) of candidates per query, at most the index size."""
    return min(n_index, k + max(16, k // 4))


def _rows(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.float32:
        raise ValueError(f"{name} must be a 2-D float32 array (rows x dims), got {array.dtype} {array.shape}")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def exact_distances(queries: np.ndarray, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The one distance every backend's lists are ordered by: sum_d (q_d - x_d)^2 in float64 from float32 rows.
    queries (B, D) float32, rows (B, M) int64 into index (N, D) float32 -> (B, M) float64. Each pair is summed
    over a contiguous length-D axis, so a pair gets the same value whichever block it is computed in."""
    diff = index[rows].astype(np.float64)
    diff -= queries.astype(np.float64)[:, None, :]
    np.multiply(diff, diff, out=diff)
    return diff.sum(axis=2)


def _by_distance_then_index(
    distances: np.ndarray, indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row ordered by (distance, index). distances, indices: (B, M) -> (B, k) each."""
    order = np.lexsort((indices, distances), axis=-1)[:, :k]
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def _full_scan(
    query: np.ndarray, index: np.ndarray, k: int, block_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One query against every index row in float64 (the uncertified rows). query (D,) -> (k,), (k,)."""
    n, dim = index.shape
    step = max(1, block_bytes // (3 * 8 * dim))
    distances = np.concatenate(
        [
            exact_distances(query[None], index, np.arange(s, min(s + step, n))[None])[0]
            for s in range(0, n, step)
        ]
    )
    found_d, found_i = _by_distance_then_index(distances[None], np.arange(n, dtype=np.int64)[None], k)
    return found_d[0], found_i[0]


# A proposer: (query block (B, D) float32) -> (its score per candidate (B, k') float64, candidates (B, k') int64,
# "l2" (scores are approximate squared distances, smallest first) or "ip" (inner products, largest first)).
Proposer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, str]]


def _faiss(index: np.ndarray, kc: int, kernel: str, device: str | None) -> Proposer:
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if kernel == "ip" else faiss.METRIC_L2

    def propose(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        scores, found = faiss.knn(queries, index, kc, metric=metric)
        return scores.astype(np.float64), found.astype(np.int64), kernel

    return propose


@contextlib.contextmanager
def _ieee_float32() -> Iterator[None]:
    """Matmuls in full float32 for the call (TF32 would break the rounding bound the certification assumes)."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _torch(index: np.ndarray, kc: int, kernel: str, device: str | None) -> Proposer:
    import torch

    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with warnings.catch_warnings():  # a read-only index (Ray's object store) is only ever read here
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(index).to(target)
    x_sq = (x * x).sum(dim=1)

    def propose(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        with torch.no_grad(), _ieee_float32():
            q = torch.from_numpy(queries).to(target)
            products = q @ x.T
            if kernel == "ip":
                scores, found = torch.topk(products, kc, dim=1, largest=True)
            else:
                distances = (q * q).sum(dim=1, keepdim=True) + x_sq[None, :] - 2.0 * products
                scores, found = torch.topk(distances, kc, dim=1, largest=False)
        return scores.double().cpu().numpy(), found.cpu().numpy().astype(np.int64), kernel

    return propose


def _sklearn(index: np.ndarray, kc: int, kernel: str, device: str | None) -> Proposer:
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    # Euclidean on the rows as given: on unit rows (cosine) it ranks as the inner product does
    searcher = NearestNeighbors(n_neighbors=kc, algorithm="brute", metric="euclidean").fit(index)

    def propose(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        with sklearn.config_context(working_memory=max(1, BLOCK_BYTES // 2**20)):
            distances, found = searcher.kneighbors(queries)
        return distances.astype(np.float64) ** 2, found.astype(np.int64), "l2"

    return propose


PROPOSERS: dict[str, Callable[[np.ndarray, int, str, str | None], Proposer]] = {
    "faiss": _faiss,
    "torch": _torch,
    "sklearn": _sklearn,
}


def _lower_bounds(
    scores: np.ndarray, kernel: str, q_sq: np.ndarray, x_sq_min: float, x_norm_max: float, dim: int
) -> np.ndarray:
    """Per query row, a value no non-candidate's float64 distance can reach below: from the last candidate's
    approximate score and the rounding bound (module docstring). scores (B, k'), q_sq (B,) -> (B,) float64."""
    gamma = dim * _U32 / (1.0 - dim * _U32)
    q_norm = np.sqrt(q_sq)
    scale = (q_norm + x_norm_max) ** 2
    # float64 re-ranking rounds too: a relative 1e-12 covers it for any D below 10^3 x 2^52 / 2^40
    tiny = 1e-12 * scale
    if kernel == "ip":
        ip_error = _SAFETY * gamma * q_norm * x_norm_max
        return q_sq + x_sq_min - 2.0 * (scores[:, -1] + ip_error) - tiny
    return scores[:, -1] - _SAFETY * (gamma + 2.0 * _U32) * scale - tiny


def block_rows(
    n_index: int, dim: int, kc: int, backend: str, block_bytes: int = BLOCK_BYTES
) -> tuple[int, int]:
    """(query rows per proposal, per re-ranking): the float64 re-ranking of a block (B x k' x D x 8 bytes, three
    temporaries) and torch's distance tile (B x N x 4 bytes, three temporaries) fit in block_bytes; FAISS and
    scikit-learn propose for PROPOSE_ROWS queries at a time (their results are B x k' x 16 bytes; they tile the
    distances themselves), as BLAS is faster on more rows at once."""
    rerank = max(1, block_bytes // (3 * 8 * kc * dim))
    propose = max(1, block_bytes // (3 * 4 * n_index)) if backend == "torch" else PROPOSE_ROWS
    return propose, rerank


def check_search(
    queries: np.ndarray, index: np.ndarray, k: int, backend: str, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The arguments of `nearest`, checked (ValueError naming what is wrong); the arrays C-contiguous."""
    queries, index = _rows(queries, "queries"), _rows(index, "index")
    if queries.shape[1] != index.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dims, the index {index.shape[1]}")
    if not 1 <= k <= index.shape[0]:
        raise ValueError(f"k must lie in [1, {index.shape[0]}] (the index rows), got {k}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown nearest-neighbour backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; valid: euclidean, cosine")
    return queries, index


def nearest(
    queries: np.ndarray,
    index: np.ndarray,
    k: int,
    backend: Backend = "auto",
    metric: Metric = "euclidean",
    device: str | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Neighbours:
    """The k nearest index rows of each query (module docstring: exact, ties by index, the same for every
    backend). queries (n, D) float32, index (N, D) float32, 1 <= k <= N; metric cosine: rows of unit length.
    device: the torch device (None: CUDA when present). Raises ValueError for arrays of another shape or dtype,
    a k out of range or an unknown backend."""
    queries, index = check_search(queries, index, k, backend, metric)
    n_index, dim = index.shape
    name = resolve_backend(backend, device)
    kc = candidate_count(k, n_index)
    x_sq = np.einsum("ij,ij->i", index, index, dtype=np.float64)
    x_sq_min, x_norm_max = float(x_sq.min()), float(np.sqrt(x_sq.max()))
    propose = (
        PROPOSERS[name](index, kc, "ip" if metric == "cosine" else "l2", device) if kc < n_index else None
    )
    n = queries.shape[0]
    out_d, out_i = np.empty((n, k), np.float64), np.empty((n, k), np.int64)
    propose_rows, rerank_rows = block_rows(n_index, dim, kc, name, block_bytes)
    for start in range(0, n, propose_rows):
        block = queries[start : start + propose_rows]
        if propose is None:  # every index row is a candidate: nothing to certify
            every = np.broadcast_to(np.arange(n_index, dtype=np.int64), (block.shape[0], n_index))
            proposed = (every, np.full(block.shape[0], np.inf))
        else:
            scores, candidates, kernel = propose(block)
            q_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
            proposed = (candidates, _lower_bounds(scores, kernel, q_sq, x_sq_min, x_norm_max, dim))
        for sub in range(0, block.shape[0], rerank_rows):
            q = block[sub : sub + rerank_rows]
            candidates, bound = (part[sub : sub + rerank_rows] for part in proposed)
            found_d, found_i = _by_distance_then_index(exact_distances(q, index, candidates), candidates, k)
            for row in np.flatnonzero(~(found_d[:, -1] < bound)):
                found_d[row], found_i[row] = _full_scan(q[row], index, k, block_bytes)
            rows = slice(start + sub, start + sub + q.shape[0])
            out_d[rows], out_i[rows] = found_d, found_i
    return Neighbours(out_d, out_i, name)


def search_rows(
    index: np.ndarray, queries: np.ndarray, start: int, stop: int, k: int, backend: Backend, metric: Metric,
    threads: int, block_bytes: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray, str]:  # fmt: skip
    """One worker's share of a sharded search (runtime/sharded_search.py runs it as a Ray task): rows
    [start, stop) of queries against the whole index, its BLAS / OpenMP / torch threads limited to `threads`
    (the process is the worker's). Returns (distances, indices, backend) as `nearest`. It lives here, in a module
    that imports nothing heavy, so a worker imports only what the search needs."""
    from threadpoolctl import threadpool_limits

    if backend in ("auto", "torch"):
        import torch

        torch.set_num_threads(threads)
    if backend in ("auto", "faiss"):
        with contextlib.suppress(ImportError):  # auto falls back to scikit-learn without FAISS
            import faiss

            faiss.omp_set_num_threads(threads)
    with threadpool_limits(threads):
        found = nearest(queries[start:stop], index, k, backend, metric, block_bytes=block_bytes)
    return found.distances, found.indices, found.backend
