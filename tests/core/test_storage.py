"""Atomic writes leave either the old complete file or the new one."""

from __future__ import annotations

import numpy as np
import pytest

from lnr_dist.core import storage
from lnr_dist.lnr import FlipTable


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    storage.write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), storage.atomic_open(path, "w") as handle:
        handle.write("partial")
        raise RuntimeError("killed")
    assert path.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_flip_table_round_trip_without_pickle(tmp_path):
    table = FlipTable(np.array([1, 4]), np.array([0, 0]), np.array([2, 3]))
    storage.save_flip_table(tmp_path / "flips.npz", table)
    with np.load(tmp_path / "flips.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["from", "index", "to"]
    loaded = storage.load_flip_table(tmp_path / "flips.npz")
    assert storage.flip_table_sha256(loaded) == storage.flip_table_sha256(table)
    assert (tmp_path / "flips.npz").stat().st_mode & 0o044  # readable like any other result


def test_sha256_arrays_sees_content_dtype_and_shape():
    a = np.arange(6, dtype=np.int64)
    assert storage.sha256_arrays(a) == storage.sha256_arrays(a.copy())
    assert storage.sha256_arrays(a) != storage.sha256_arrays(a.astype(np.int32))
    assert storage.sha256_arrays(a) != storage.sha256_arrays(a.reshape(2, 3))


def test_json_is_standard_missing_numbers_are_null_and_csv_cells_empty(tmp_path):
    import json

    storage.write_json(tmp_path / "r.json", {"many": float("nan"), "x": np.float32(1.5), "inf": [np.inf, 2]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    assert json.loads(text, parse_constant=reject) == {"many": None, "x": 1.5, "inf": [None, 2]}
    storage.write_csv(tmp_path / "r.csv", [{"a": float("nan"), "b": None, "c": 2.5}], ["a", "b", "c"])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b,c", ",,2.5"]


def test_sha256_of_a_memory_map_equals_the_arrays_and_a_slice_is_its_own(tmp_path):
    from lnr_dist.core.storage import sha256_arrays

    array = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "a.npy", array)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert sha256_arrays(mapped) == sha256_arrays(array)  # the whole map: read from its file
    assert sha256_arrays(mapped[5:7]) == sha256_arrays(
        array[5:7]
    )  # a slice keeps its parent's file and offset
    copied = np.load(tmp_path / "a.npy", mmap_mode="c")
    copied[0, 0] = -1.0  # copy-on-write: differs from its file
    assert sha256_arrays(copied) == sha256_arrays(np.array(copied)) != sha256_arrays(array)
