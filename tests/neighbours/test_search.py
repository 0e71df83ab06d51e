"""Exact nearest neighbours (neighbours/search.py): FAISS, torch and scikit-learn give the same lists, ties by
index, equal to a float64 brute force; rows with ties past the candidates are searched again in full."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnr_dist.neighbours import nearest, unit_rows
from lnr_dist.neighbours import search as search_module

BACKENDS = ("faiss", "torch", "sklearn")


def clustered(rows: int, dims: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, (clusters, dims))
    return (centres[rng.integers(0, clusters, rows)] + rng.normal(0.0, 1.0, (rows, dims))).astype(np.float32)


def brute(queries: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 distances to every point, ordered by (distance, index)."""
    d = ((queries.astype(np.float64)[:, None, :] - index.astype(np.float64)[None]) ** 2).sum(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(len(index)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


def with_duplicates(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered rows with one point repeated at 40 scattered rows (returned sorted): a query on it has 40
    neighbours at distance 0, more than the candidates of k = 10, so the tie by index is decided past the
    candidate list."""
    x = clustered(400, 16, 8, seed)
    rows = np.sort(np.random.default_rng(seed).choice(400, 40, replace=False))
    x[rows] = x[rows[0]]
    return x, rows


@pytest.mark.parametrize("k", [1, 10, 52])
def test_every_backend_gives_the_brute_force_lists(k):
    index, queries = clustered(600, 32, 12, 0), clustered(150, 32, 12, 1)
    expected_d, expected_i = brute(queries, index, k)
    for backend in BACKENDS:
        found = nearest(queries, index, k, backend=backend)
        assert found.backend == backend
        assert np.array_equal(found.indices, expected_i), backend
        assert np.array_equal(found.distances, expected_d), backend


def test_ties_past_the_candidates_are_searched_again_and_broken_by_index(monkeypatch):
    index, twins = with_duplicates(2)
    queries = index[twins[[5, 20, 39]]]
    scans = []
    full_scan = search_module._full_scan
    monkeypatch.setattr(search_module, "_full_scan", lambda *a: scans.append(1) or full_scan(*a))
    for backend in BACKENDS:
        found = nearest(queries, index, 10, backend=backend)
        assert found.indices.tolist() == [twins[:10].tolist()] * 3  # the 10 smallest indices of the 40 twins
        assert (found.distances == 0).all()
    assert len(scans) == 3 * len(BACKENDS)  # every such row needed the full search


def test_cosine_ranks_by_inner_product_on_unit_rows_alike_everywhere():
    index, queries = unit_rows(clustered(500, 24, 10, 3)), unit_rows(clustered(80, 24, 10, 4))
    expected_d, expected_i = brute(queries, index, 15)
    for backend in BACKENDS:
        found = nearest(queries, index, 15, backend=backend, metric="cosine")
        assert np.array_equal(found.indices, expected_i) and np.array_equal(found.distances, expected_d), (
            backend
        )


def test_small_blocks_and_a_whole_index_of_candidates_change_nothing():
    index, queries = clustered(60, 8, 3, 5), clustered(50, 8, 3, 6)
    expected = nearest(queries, index, 7, backend="faiss")
    tiny = nearest(queries, index, 7, backend="faiss", block_bytes=1)  # one query row per block
    everything = nearest(queries, index, 50, backend="faiss")  # k' = the whole index: no proposer
    assert np.array_equal(tiny.indices, expected.indices)
    assert np.array_equal(everything.indices[:, :7], expected.indices)


def test_the_faiss_kernel_is_index_flat_l2s():
    import faiss

    index, queries = clustered(300, 16, 5, 7), clustered(40, 16, 5, 8)
    flat = faiss.IndexFlatL2(16)
    flat.add(index)
    scores, found, _ = search_module._faiss(index, 20, "l2", None)(queries)
    flat_scores, flat_found = flat.search(queries, 20)
    assert np.array_equal(found, flat_found) and np.array_equal(scores, flat_scores.astype(np.float64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_on_the_gpu_gives_the_cpu_lists():
    index, queries = clustered(5000, 64, 50, 9), clustered(700, 64, 50, 10)
    on_gpu = nearest(queries, index, 52, backend="torch", device="cuda")
    assert np.array_equal(on_gpu.indices, nearest(queries, index, 52, backend="faiss").indices)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: nearest(x, x, 0), r"k must lie in \[1, 20\]"),
        (lambda x: nearest(x, x, 21), r"k must lie in \[1, 20\]"),
        (lambda x: nearest(x.astype(np.float64), x, 3), "float32"),
        (lambda x: nearest(x[:, :3], x, 3), "dims"),
        (lambda x: nearest(x, x, 3, backend="annoy"), "unknown nearest-neighbour backend 'annoy'"),
        (lambda x: nearest(x, x, 3, metric="manhattan"), "unknown metric"),
    ],
)
def test_bad_arguments_are_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call(clustered(20, 4, 2, 0))
