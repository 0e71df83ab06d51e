"""core/dist's collectives on a real 2-process gloo group (torch.distributed, no Ray)."""

from __future__ import annotations

import numpy as np
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from lnr_dist.core.dist import all_gather_arrays, gather_arrays


def _rank(rank: int, world: int, store_file: str, results: dict) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        mine = np.arange(rank + 2, dtype=np.float32) + 10 * rank  # lengths 2 and 3
        results[rank] = {"gather": gather_arrays(mine), "all": all_gather_arrays(mine)}
    finally:
        torch_dist.destroy_process_group()


def test_gather_arrays_reaches_rank_zero_only_in_rank_order(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(2, str(tmp_path / "store"), results), nprocs=2, join=True)
        results = dict(results)
    expected = [np.array([0.0, 1.0], np.float32), np.array([10.0, 11.0, 12.0], np.float32)]
    assert results[1]["gather"] is None
    for got in (results[0]["gather"], results[0]["all"], results[1]["all"]):
        assert [a.tolist() for a in got] == [a.tolist() for a in expected]
        assert all(a.dtype == np.float32 for a in got)


def test_gather_arrays_in_one_process_returns_a_copy():
    array = np.arange(3)
    (got,) = gather_arrays(array)
    got[0] = 7
    assert array[0] == 0
