"""write_shared_rows in one process (several ranks' rows: tests/infer/test_infer_ray.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lnr_dist.core.dist import RankContext
from lnr_dist.core.meter import peak_rss_mib, rss_mib
from lnr_dist.runtime import shared_rows
from lnr_dist.runtime.shared_rows import partial_path, write_shared_rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_rows_land_at_their_offset_and_the_file_appears_whole(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(shared_rows, "WRITE_ROWS", 7)  # several writes per rank
    rows = np.random.default_rng(0).random((50, 9)).astype(dtype)
    path = tmp_path / "predictions.npy"
    write_shared_rows(path, (50, 9), rows.dtype, 0, rows, RankContext())
    np.testing.assert_array_equal(np.load(path), rows)
    assert not partial_path(path).exists()


def test_writing_rows_does_not_raise_the_writers_peak_memory(tmp_path):
    rows = np.ones((4096, 4096), dtype=np.float32)  # 64 MiB, resident before the write
    try:  # Linux: "5" resets this process's RSS high-water mark (VmHWM) to its RSS now
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs /proc/self/clear_refs")
    before = rss_mib()
    write_shared_rows(tmp_path / "p.npy", rows.shape, rows.dtype, 0, rows, RankContext())
    assert peak_rss_mib() - before < 16  # through a memory map, its 64 MiB of written pages were resident


def test_an_empty_shard_writes_nothing_and_rows_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "p.npy"
    write_shared_rows(path, (0, 4), np.dtype(np.float32), 0, np.zeros((0, 4), np.float32), RankContext())
    assert np.load(path).shape == (0, 4)  # more ranks than samples: a rank's shard is empty
    with pytest.raises(ValueError, match="do not fit"):
        write_shared_rows(path, (3, 4), np.dtype(np.float32), 2, np.zeros((2, 4), np.float32), RankContext())
    with pytest.raises(ValueError, match="do not fit"):
        write_shared_rows(path, (3, 4), np.dtype(np.float32), 0, np.zeros((3, 5), np.float32), RankContext())
