"""The worker meter and workers.json, in one process (the Ray jobs' records: tests/infer/test_infer_ray.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lnr_dist.core.meter import Meter, peak_rss_mib, rss_mib
from lnr_dist.runtime import usage


@pytest.mark.skipif(rss_mib() is None, reason="needs /proc/self/status")
def test_rss_grows_with_an_array_held_and_peak_is_above_it():
    before = rss_mib()
    held = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = rss_mib()
    assert after - before > 60
    assert peak_rss_mib() >= after
    del held


def test_the_first_batch_is_marked_once_and_images_counted():
    times = iter([10.0, 12.5, 99.0])
    meter = Meter(_clock=lambda: next(times))
    meter.enter()
    meter.batch(32)
    meter.batch(16)
    assert (meter.entry_unix, meter.first_batch_unix, meter.images) == (10.0, 12.5, 48)
    assert meter.rss_first_batch_mib is not None
    meter.enter()  # a new job in the same process starts over
    assert meter.first_batch_unix is None and meter.images == 0


def test_workers_json_is_written_and_read_with_start_up_and_growth(tmp_path, monkeypatch):
    meter = Meter(_clock=lambda: 1000.0)
    meter.enter()
    meter.batch(8)
    monkeypatch.setattr(usage, "METER", meter)
    usage.write_workers(tmp_path, "infer", 990.0, rank=0)
    written = json.loads((tmp_path / usage.WORKERS_FILE).read_text())
    assert written["job"] == "infer" and written["started_unix"] == 990.0
    [record] = written["workers"]
    assert record["entry_s"] == 10.0 and record["first_batch_s"] == 10.0 and record["images"] == 8

    record.update(first_batch_s=7.5, rss_first_batch_mib=500.0, peak_rss_mib=740.0)
    written["workers"].append({**record, "rank": 1, "first_batch_s": 9.0, "rss_first_batch_mib": None})
    (tmp_path / usage.WORKERS_FILE).write_text(json.dumps(written))
    read = usage.read_workers(tmp_path / usage.WORKERS_FILE)
    assert read["startup_s"] == 9.0  # the slowest worker's first batch
    assert [w["growth_mib"] for w in read["workers"]] == [240.0, None]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc")
def test_freed_blocks_go_back_to_the_system_once_thresholds_are_fixed():
    # in a child process: the settings would stay with this one (and slow the training tests after it)
    script = """
import numpy as np
from lnr_dist.core.meter import rss_mib
from lnr_dist.runtime.usage import return_freed_memory

def churn(): # glibc's default serves these from the heap after the first free and keeps them resident
    for _ in range(3):
        block = np.ones(24 * 2**20 // 8)
        del block

before = rss_mib(); churn(); kept_by_default = rss_mib() - before
assert return_freed_memory()
before = rss_mib(); churn(); kept_after = rss_mib() - before
print(kept_by_default, kept_after)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    kept_by_default, kept_after = map(float, done.stdout.split())
    assert kept_by_default > 16 and kept_after < 8
