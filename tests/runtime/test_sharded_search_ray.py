"""Nearest neighbours with the queries sharded over Ray workers (runtime/sharded_search.py) on a real local Ray
cluster: two workers give the one-process lists row for row, the index goes into the object store once, and the
neighbour methods give the same scores with neighbours.workers 2 as in-process."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import ray

from lnr_dist.experiment import RayConfig
from lnr_dist.features.backend import run_on_features
from lnr_dist.neighbours import nearest
from lnr_dist.runtime import sharded_search
from tests.neighbours.test_search import clustered, with_duplicates
from tests.stage2.test_neighbours import synthetic_run, with_method

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CPU = RayConfig(num_workers=2, cpus_per_worker=1, use_gpu=False)


def test_two_workers_give_the_one_process_lists(ray_session, monkeypatch):
    index, twins = with_duplicates(0)  # rows whose ties go past the candidates too
    queries = np.concatenate([clustered(301, 16, 8, 1), index[twins[:5]]])
    puts = []
    put = ray.put
    monkeypatch.setattr(sharded_search.ray, "put", lambda value: puts.append(value.shape) or put(value))
    for backend in ("faiss", "sklearn"):
        alone = nearest(queries, index, 12, backend=backend)
        sharded = sharded_search.sharded_nearest(queries, index, 12, 2, CPU, backend=backend)
        assert np.array_equal(sharded.indices, alone.indices) and np.array_equal(
            sharded.distances, alone.distances
        )
        assert sharded.backend == backend
    # the training split against itself: one object for index and queries
    itself = sharded_search.sharded_nearest(index, index, 52, 2, CPU, backend="faiss")
    assert np.array_equal(itself.indices, nearest(index, index, 52, backend="faiss").indices)
    assert puts == [index.shape, queries.shape, index.shape, queries.shape, index.shape]


def test_more_workers_than_rows_and_bad_arguments(ray_session):
    index = clustered(40, 4, 2, 2)
    found = sharded_search.sharded_nearest(index[:2], index, 3, 5, CPU, backend="faiss")
    assert np.array_equal(found.indices, nearest(index[:2], index, 3).indices)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 40\]"):
        sharded_search.sharded_nearest(index, index, 41, 2, CPU)


@pytest.mark.parametrize("name", ["knn", "wann"])
def test_a_method_on_two_workers_writes_the_in_process_scores(ray_session, tmp_path, name):
    cfg = synthetic_run(tmp_path)
    cfg = replace(cfg, ray=CPU)
    alone = run_on_features(with_method(cfg, name), tmp_path / "alone")
    sharded = run_on_features(with_method(cfg, name, workers=2, projection="flda"), tmp_path / "sharded")
    flda_alone = run_on_features(with_method(cfg, name, projection="flda"), tmp_path / "flda")
    assert sharded["test"]["top1"] == flda_alone["test"]["top1"] and alone["neighbours"]["workers"] == 0
    assert (
        sharded["neighbours"]["reliability" if name == "wann" else "k"]
        == flda_alone["neighbours"]["reliability" if name == "wann" else "k"]
    )
    logits = {f: np.load(tmp_path / f / "test_logits.npz")["logits"] for f in ("sharded", "flda")}
    assert np.array_equal(logits["sharded"], logits["flda"])
