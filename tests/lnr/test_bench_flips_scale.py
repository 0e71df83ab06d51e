"""benchmarks/bench_flips_scale.py --quick runs end to end and prints its keys (timings are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "flips_scale_exponent",
    "flips_scale_cpu_exponent",
    "flips_scale_cpu_exponent_large",
    "largest_worker_s",
    "largest_peak_mib",
}


def test_quick_mode_prints_every_point_and_the_keys():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_flips_scale.py"), "--quick"],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    points = [line for line in lines if line.startswith("N=") and "worker" in line]
    assert len(points) == 4, done.stdout  # 2 sizes x W in (2, 8), none skipped
    assert all("peak RSS" in line and "candidates" in line for line in points)
    values = dict(item.split("=") for item in lines[-1].split())
    assert set(values) == KEYS
    assert all(
        float(v) == float(v) for k, v in values.items() if k != "flips_scale_cpu_exponent_large"
    )  # not nan
    assert float(values["largest_worker_s"]) > 0
