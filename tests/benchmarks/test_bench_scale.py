"""benchmarks/bench_scale.py: the ImageNet-LT profile, the cached set's layout, workers.json's reading, and one
reduced real run (timings are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_scale.py"
_spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_scale"] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)

LAST_LINE = re.compile(
    r"^scale_wall_s=(\S+) infer_extra_mib_per_worker=(\S+) infer_extra_vs_shard_matrix=(\S+)$"
)


@pytest.mark.parametrize(
    ("classes", "train", "n_max", "n_min"),
    [(1000, 115_846, 1280, 5), (8142, 437_513, 1000, 2), (50, 3000, None, 5), (20, 300, None, 5)],
)
def test_profile_sums_to_train_within_bounds_and_descends(classes, train, n_max, n_min):
    counts = bench.lt_profile(classes, train, n_max, n_min)
    assert counts.shape == (classes,) and counts.dtype == np.int64
    assert counts.sum() == train
    assert np.all(np.diff(counts) <= 0)
    assert counts[-1] == n_min and counts.min() == n_min
    assert counts[0] == (n_max or bench.default_max_per_class(classes, train, n_min)) == counts.max()


def test_profile_at_imagenet_lt_has_its_many_medium_few_split_and_max():
    counts = bench.lt_profile(1000, 115_846)
    assert counts[0] == 1280 and counts[-1] == 5
    many, medium, few = bench.group_split(counts)
    assert abs(many - 385) <= 5 and abs(medium - 479) <= 5 and abs(few - 136) <= 5
    assert bench.default_max_per_class(1000, 115_846) == 1280


def test_profile_refuses_a_sum_it_cannot_hold():
    with pytest.raises(ValueError, match="do not fit"):
        bench.lt_profile(100, 100 * 1280, 1280, 5)  # every class at the maximum
    with pytest.raises(ValueError, match="cannot fill"):
        bench.default_max_per_class(100, 400, 5)  # fewer than 5 per class


def test_cached_set_has_imagenet_lt_layout_and_is_reused(tmp_path):
    spec = bench.SetSpec(20, 300, bench.default_max_per_class(20, 300), 5, 2, 3, image_size=16)
    built = bench.build_set(tmp_path / "set", spec, processes=1, log=lambda _: None)
    assert not built.reused
    counts = bench.lt_profile(20, 300, spec.max_per_class, 5)
    np.testing.assert_array_equal(built.counts, counts)
    lines = {name: path.read_text().splitlines() for name, path in built.splits.items()}
    assert [len(lines[s]) for s in ("train", "val", "test")] == [300, 40, 60]
    per_class = np.zeros(20, dtype=np.int64)
    for line in lines["train"]:
        path, label = line.split()
        match = re.fullmatch(r"train/(n\d{8})/(n\d{8})_(\d+)\.JPEG", path)
        assert match and match[1] == match[2] == bench.synset(int(label)), path
        assert (built.root / path).is_file()
        per_class[int(label)] += 1
    np.testing.assert_array_equal(per_class, counts)
    assert all(re.fullmatch(r"val/ILSVRC2012_val_\d{8}\.JPEG \d+", line) for line in lines["test"])
    assert not set(lines["val"]) & set(lines["train"])
    assert not list(built.root.rglob(".*.tmp"))

    (built.root / lines["train"][0].split()[0]).unlink()  # a cache with its marker is trusted as it is
    again = bench.build_set(tmp_path / "set", spec, processes=1, log=lambda _: None)
    assert again.reused and again.seconds == 0.0
    np.testing.assert_array_equal(again.counts, counts)


def test_a_half_built_set_is_resumed(tmp_path):
    spec = bench.SetSpec(20, 300, bench.default_max_per_class(20, 300), 5, 2, 3, image_size=16)
    built = bench.build_set(tmp_path / "set", spec, processes=1, log=lambda _: None)
    (built.root / bench.MARKER).unlink()  # as if stopped before the end
    missing = built.root / built.splits["train"].read_text().split()[0]
    missing.unlink()
    messages = []
    again = bench.build_set(tmp_path / "set", spec, processes=1, log=messages.append)
    assert not again.reused and missing.is_file() and (built.root / bench.MARKER).is_file()
    assert "1 images written, 399 resumed" in messages[-1]


def _workers_json(folder: Path, started: float, workers: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workers.json").write_text(
        json.dumps({"job": "infer", "started_unix": started, "workers": workers})
    )


def test_workers_json_gives_growth_ratio_and_startup(tmp_path):
    from lnr_dist.runtime.usage import read_workers

    num_samples, num_classes = 1001, 50  # shards of 500 and 501 rows
    workers = [
        {"rank": 0, "node": "a", "pid": 1, "entry_s": 1.0, "first_batch_s": 2.5, "rss_entry_mib": 300.0,
         "rss_first_batch_mib": 400.0, "peak_rss_mib": 400.0 + 500 * 50 * 4 / 2**20, "images": 1000},
        {"rank": 1, "node": "a", "pid": 2, "entry_s": 1.2, "first_batch_s": 3.0, "rss_entry_mib": 300.0,
         "rss_first_batch_mib": 410.0, "peak_rss_mib": 410.0 + 2 * 501 * 50 * 4 / 2**20, "images": 1002},
    ]  # fmt: skip
    _workers_json(tmp_path / "infer", 100.0, workers)
    doc = read_workers(tmp_path / "infer" / "workers.json")
    extra, ratio = bench.infer_extra(doc, num_samples, num_classes)
    assert ratio == pytest.approx(2.0) and extra == pytest.approx(2 * 501 * 50 * 4 / 2**20, abs=0.01)
    # the step began 1 s before run_workers; the last worker's first batch came 3 s after it
    assert bench.ray_startup_s(doc, step_start_unix=99.0) == pytest.approx(4.0)
    # 1 s in the driver, 1.2 s to the last entry, the rest after it
    assert bench.startup_parts(doc, 99.0) == pytest.approx({"driver": 1.0, "ray_train": 1.2, "ours": 1.8})

    workers[1]["first_batch_s"] = workers[1]["rss_first_batch_mib"] = None  # a worker that saw no batch
    _workers_json(tmp_path / "infer", 100.0, workers)
    doc = read_workers(tmp_path / "infer" / "workers.json")
    assert bench.ray_startup_s(doc, 99.0) == pytest.approx(3.5)
    # its later entry is not the batch's: the parts are rank 0's
    assert bench.startup_parts(doc, 99.0) == pytest.approx({"driver": 1.0, "ray_train": 1.0, "ours": 1.5})
    assert bench.infer_extra(doc, num_samples, num_classes)[1] == pytest.approx(1.0)
    workers[0]["first_batch_s"] = workers[0]["rss_first_batch_mib"] = None
    _workers_json(tmp_path / "infer", 100.0, workers)
    doc = read_workers(tmp_path / "infer" / "workers.json")
    assert bench.ray_startup_s(doc, 99.0) is None and bench.startup_parts(doc, 99.0) is None
    assert math.isnan(bench.infer_extra(doc, num_samples, num_classes)[1])


def test_step_rows_join_step_records_calls_and_workers(tmp_path):
    from dataclasses import replace

    from lnr_dist.experiment import ExperimentConfig

    from ..conftest import mini_data_config

    cfg = ExperimentConfig(data=mini_data_config(tmp_path), run_dir=str(tmp_path / "seed0"))
    cfg = replace(cfg, run_dir=str(cfg.layout.root))
    steps = cfg.layout.root / "steps"
    steps.mkdir(parents=True)
    records = (("stage1", 20.0), ("infer", 8.0), ("tune", 6.0), ("features", 0.1), ("method-mislas", 5.0),
               ("method-smote", 1.0))  # fmt: skip
    for name, seconds in records:
        (steps / f"{name}.json").write_text(json.dumps({"config_hash": "x", "seconds": seconds, "result": {},
                                                        "finished_at": "2030-01-01T00:00:00"}))  # fmt: skip
    calls = [
        bench.JobCall("stage1", cfg.layout.stage("stage1"), 10.0, 30.0),
        bench.JobCall("infer", cfg.layout.infer, 30.0, 38.0),
        bench.JobCall("tune", cfg.layout.tune, 38.0, 44.0),
        bench.JobCall("features", cfg.layout.features, 44.0, 44.1),
        bench.JobCall("stage2", cfg.layout.method("mislas"), 44.1, 49.0),
    ]
    worker = {"rank": 0, "first_batch_s": 1.0, "rss_first_batch_mib": 100.0, "peak_rss_mib": 101.0,
              "images": 800}  # fmt: skip
    _workers_json(
        cfg.layout.infer, 31.0, [{**worker, "entry_s": 0.5}, {**worker, "rank": 1, "entry_s": 0.25}]
    )
    # the sweep extracted the features (a Ray Train job in features/); the features step then found them cached
    _workers_json(cfg.layout.features, 40.0, [worker, {**worker, "rank": 1}])
    rows = bench.step_rows(cfg, calls, num_samples=400, num_classes=10)
    assert [r["step"] for r in rows] == [
        "stage1",
        "infer",
        "tune",
        "features",
        "method-mislas",
        "method-smote",
    ]
    infer = rows[1]
    assert infer["images_per_s"] == pytest.approx(1600 / 8.0) and infer["ray_startup_s"] == pytest.approx(2.0)
    assert [w["growth_mib"] for w in infer["workers"]] == [1.0, 1.0]
    assert infer["infer_extra_vs_shard"] == pytest.approx(2**20 / (200 * 10 * 4))
    assert rows[2]["ray_startup_s"] == pytest.approx(3.0) and "infer_extra_vs_shard" not in rows[2]
    assert rows[3]["workers"] == [] and rows[3]["ray_startup_s"] is None
    assert rows[0]["ray_startup_s"] is None and rows[5]["job"] is None
    table = bench.format_table(rows)
    assert "method-smote" in table and "101/101" in table
    # no entry_s in the sweep's record: its total stands, its parts are not given
    assert rows[2]["startup_parts"] is None
    # inference's workers entered at 0.5 s and 0.25 s: 1 s in the driver + 0.5 s to the last entry + 0.5 s ours
    assert infer["startup_parts"] == pytest.approx({"driver": 1.0, "ray_train": 0.5, "ours": 0.5})
    assert " 2.0 1.0+0.5+0.5 " in table


@pytest.mark.ray
@pytest.mark.dali
@pytest.mark.slow
def test_reduced_real_run_prints_every_step_and_the_last_line(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        # a short folder of its own: Ray's socket paths under pytest's tmp_path exceed AF_UNIX's 107 bytes
        "RAY_TMPDIR": os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
    }
    command = [
        sys.executable, str(SCRIPT), "--classes", "10", "--train", "400", "--val-per-class", "2",
        "--test-per-class", "2", "--image-size", "16", "--workers", "2", "--loader", "dali", "--methods", "lnr",
        "--build-processes", "1", "--cache", str(tmp_path / "set"), "--out", str(tmp_path / "run"),
        "--json", str(tmp_path / "scale.json"), "--batch-size", "64", "stage2.backend=features",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert float(LAST_LINE.match(lines[-1])[1]) > 0
    numbers = json.loads((tmp_path / "scale.json").read_text())
    steps = {row["step"]: row for row in numbers["steps"]}
    assert {"stage1", "infer", "tune", "features", "method-lnr"} <= set(steps)
    for row in steps.values():
        assert row["wall_s"] > 0
        assert any(line.split()[:1] == [row["step"]] for line in lines)
    for name in ("stage1", "infer"):  # Ray Train jobs: every number is there
        assert steps[name]["images_per_s"] > 0 and steps[name]["ray_startup_s"] > 0
        parts = steps[name]["startup_parts"]
        assert parts["driver"] >= 0 and parts["ray_train"] > 0 and parts["ours"] > 0
        assert parts["driver"] + parts["ray_train"] < steps[name]["ray_startup_s"]
        assert len(steps[name]["workers"]) == 2
        assert all(w["peak_rss_mib"] > 0 and w["growth_mib"] is not None for w in steps[name]["workers"])
    extra, ratio = (float(v) for v in LAST_LINE.match(lines[-1]).groups()[1:])
    assert extra >= 0 and ratio >= 0
