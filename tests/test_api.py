"""The Python API (lnr_dist/api.py, re-exported by lnr_dist/__init__.py): each function against the code it wraps,
its errors, and an `import lnr_dist` that stays free of torch and Ray. No Ray cluster starts here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import lnr_dist
from lnr_dist import api
from lnr_dist.core.synthetic import exponential_counts, long_tailed_predictions
from lnr_dist.lnr import compute_flips as engine_flips

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 softmax and (N,) labels, 20 classes from 300 down to 4 samples."""
    return long_tailed_predictions(exponential_counts(20, 300, 4), seed=3)


def test_compute_flips_is_the_engines_table(predictions):
    probs, labels = predictions
    indices = np.random.default_rng(0).permutation(labels.size) + 1000  # not the default arange
    for kwargs in ({}, {"indices": indices}):
        table = lnr_dist.compute_flips(probs, labels, 1.0, seed=5, **kwargs)
        expected = engine_flips(probs, labels, kwargs.get("indices"), 1.0, 5).table
        assert len(table) > 20  # a table worth comparing
        for field in ("index", "source", "target"):
            assert getattr(table, field).dtype == np.int64
            np.testing.assert_array_equal(getattr(table, field), getattr(expected, field))
    other_seed = lnr_dist.compute_flips(probs, labels, 1.0, seed=6)
    assert not np.array_equal(other_seed.index, table.index)  # the seed reaches the draws


@pytest.mark.parametrize(
    ("change", "name", "words"),
    [
        (lambda p, y: (np.log(p), y), "probs", "not logits"),  # log-probabilities: negative values
        (lambda p, y: (p, y.astype(np.float32)), "labels", "integers"),
        (lambda p, y: (p, np.where(y == 0, 20, y)), "labels", "out of range"),
        (lambda p, y: (p, np.where(y == 19, 18, y)), "labels", "have no sample"),  # class 19 empty
        (lambda p, y: (p[:, :, None], y), "probs", "2-D"),
    ],
)
def test_compute_flips_refuses_bad_arrays_naming_them(predictions, change, name, words):
    probs, labels = change(*predictions)
    with pytest.raises(lnr_dist.InputError, match=words) as raised:
        lnr_dist.compute_flips(probs, labels, 1.0)
    assert raised.value.name == name and isinstance(raised.value, ValueError)


def test_compute_flips_refuses_a_bad_threshold_or_seed_and_runs_empty_classes_on_request(predictions):
    probs, labels = predictions
    with pytest.raises(ValueError, match="threshold must be finite"):
        lnr_dist.compute_flips(probs, labels, float("nan"))
    with pytest.raises(ValueError, match="seed must be an integer"):
        lnr_dist.compute_flips(probs, labels, 1.0, seed=-1)
    merged = np.where(labels == 19, 18, labels)
    table = lnr_dist.compute_flips(probs, merged, 1.0, allow_empty_classes=True)
    assert 19 in table.target  # the empty class is the rarest: samples move into it, as the rule is written


def test_load_config_reads_the_yaml_then_the_overrides():
    cfg = lnr_dist.load_config(REPO / "configs" / "mini.yaml", ["stage2.lr=0.01", "run_dir=runs/elsewhere"])
    assert cfg.data.num_classes == 10 and cfg.model.arch == "small_cnn"  # from the file
    assert cfg.stage2.lr == 0.01 and cfg.run_dir == "runs/elsewhere"  # from the overrides
    # one string is one override
    assert lnr_dist.load_config(REPO / "configs" / "mini.yaml", "seed=4").seed == 4


def test_load_config_names_an_unknown_key_and_where_it_was_set(tmp_path):
    with pytest.raises(lnr_dist.ConfigError, match=r"command line 'stage2\.lrr'.*unknown key 'stage2\.lrr'"):
        lnr_dist.load_config(REPO / "configs" / "mini.yaml", ["stage2.lrr=0.01"])
    config = tmp_path / "bad.yaml"
    data = "".join(f"  {key}: x\n" for key in ("root", "train_split", "val_split", "test_split"))
    config.write_text(f"data:\n{data}  num_classes: 10\nstage1:\n  epochz: 3\n")
    where = re.escape(f"{config}:8")
    with pytest.raises(lnr_dist.UserError, match=rf"{where}: unknown key 'stage1\.epochz'"):
        lnr_dist.load_config(config)


def test_run_job_refuses_an_unknown_job_listing_the_valid_ones():
    cfg = lnr_dist.load_config(REPO / "configs" / "mini.yaml")
    with pytest.raises(lnr_dist.UserError, match="unknown job 'stage3'") as raised:
        lnr_dist.run_job("stage3", cfg)
    for name in ("stage1", "infer", "tune", "stage2", "features"):
        assert name in str(raised.value)


def test_run_job_runs_the_registered_job_with_out(monkeypatch, tmp_path):
    import lnr_dist.jobs

    calls = []
    stub = replace(lnr_dist.jobs.JOBS["stage2"], run=lambda cfg, out: calls.append(out) or {"out": out})
    monkeypatch.setitem(lnr_dist.jobs.JOBS, "stage2", stub)
    cfg = lnr_dist.load_config(REPO / "configs" / "mini.yaml")
    assert lnr_dist.run_job("stage2", cfg, tmp_path) == {"out": str(tmp_path)}
    assert lnr_dist.run_job("stage2", cfg) == {"out": None}
    assert calls == [str(tmp_path), None]


def test_register_method_adds_a_method_from_python():
    from lnr_dist.stage2.registry import STAGE2_METHODS, get_method

    method = lnr_dist.Stage2Method("api_test_method", "plain CE on the original labels", stage1="ce")
    try:
        assert lnr_dist.register_method(method) is method
        assert get_method("api_test_method") is method
        with pytest.raises(ValueError, match="registered already"):
            lnr_dist.register_method(replace(method, description="another"))
    finally:
        STAGE2_METHODS.pop("api_test_method", None)


@pytest.fixture
def reproduce_root(tmp_path) -> Path:
    """A finished reproduce run, synthetic (no training): results.json per method and seed, then the report."""
    from lnr_dist.core.config import save_resolved
    from lnr_dist.reproduce.report import write_report
    from tests.reproduce.conftest import synthetic_run

    root = tmp_path / "run"
    cfg, outcomes = synthetic_run(root, num_classes=20, n_max=200, test_per_class=10, methods=("ce", "lnr"))
    cfg = replace(cfg, reproduce=replace(cfg.reproduce, bootstrap=20))
    save_resolved(cfg, root, "reproduce_config.yaml")
    write_report(cfg, outcomes)
    return root


def test_read_results_of_a_reproduce_root(reproduce_root, tmp_path):
    found = lnr_dist.read_results(reproduce_root)
    assert set(found["methods"]) == {"ce", "lnr"}
    for method in ("ce", "lnr"):
        assert set(found["methods"][method]) == {0, 1}
        for seed in (0, 1):
            written = reproduce_root / f"seed{seed}" / "methods" / method / "results.json"
            assert found["methods"][method][seed] == json.loads(written.read_text())
    assert [row["method"] for row in found["summary"]] == ["ce", "lnr"]
    assert all(row["seeds"] == 2 and isinstance(row["top1_mean"], float) for row in found["summary"])
    assert {(row["method"], row["baseline"]) for row in found["comparisons"]} == {("lnr", "ce")}
    assert found["tune"][1]["chosen_threshold"]["threshold"] == 14.5 and len(found["tune"][1]["sweep"]) == 5
    assert found["config"]["reproduce"]["seeds"] == 2

    # a root moved elsewhere reads its own files, not the paths the report recorded
    copy = tmp_path / "moved"
    shutil.copytree(reproduce_root, copy)
    shutil.rmtree(reproduce_root)
    moved = lnr_dist.read_results(copy)
    assert moved["methods"] == found["methods"] and moved["summary"] == found["summary"]


def test_read_results_of_a_job_a_tune_and_a_run_folder(reproduce_root):
    seed = reproduce_root / "seed0"
    job = lnr_dist.read_results(seed / "methods" / "lnr")
    assert job == json.loads((seed / "methods" / "lnr" / "results.json").read_text())
    assert lnr_dist.read_results(seed / "infer") == {"seed": 0, "threshold": 14.5}  # summary.json
    tune = lnr_dist.read_results(seed / "tune")
    assert tune["chosen_threshold"]["objective"] == "val_balanced_acc"
    assert [row["threshold"] for row in tune["sweep"]] == [10.5, 12.5, 14.5, 16.5, 18.5]
    run = lnr_dist.read_results(seed)
    assert set(run) == {"infer", "tune", "methods"} and set(run["methods"]) == {"ce", "lnr"}
    assert run["tune"] == tune and run["methods"]["lnr"] == job


def test_read_results_refuses_a_folder_without_results(tmp_path):
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "metrics.csv").write_text("epoch\n0\n")  # a run that never finished
    with pytest.raises(lnr_dist.UserError, match=rf"^{re.escape(str(tmp_path))}: no results here"):
        lnr_dist.read_results(tmp_path)
    with pytest.raises(lnr_dist.UserError, match="no such folder"):
        lnr_dist.read_results(tmp_path / "missing")
    (tmp_path / "stage1" / "results.json").write_text('{"test": ')  # interrupted mid-write
    with pytest.raises(lnr_dist.UserError, match="results.json: not valid JSON"):
        lnr_dist.read_results(tmp_path)


def test_csv_cells_become_numbers_none_or_text():
    cells = ("", "3", "2.5", "lnr", "nan", "1e3")
    assert [api._cell(text) for text in cells] == [None, 3, 2.5, "lnr", "nan", 1000.0]


def test_import_lnr_dist_loads_neither_torch_nor_ray():
    script = """
import sys
import lnr_dist
loaded = lambda: sorted({m.split(".")[0] for m in sys.modules} & {"torch", "ray"}) + sorted(
    m for m in sys.modules if m == "lnr_dist.api")
print(loaded())
lnr_dist.compute_flips, lnr_dist.read_results, lnr_dist.run_job  # the API module, still without torch and Ray
print(loaded())
"""
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "['lnr_dist.api']"]


def test_every_exported_name_is_documented():
    for name in lnr_dist.__all__:
        value = getattr(lnr_dist, name)
        assert value is getattr(api, name) and value.__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lnr_dist.nothing  # noqa: B018
