"""`lnr-dist export` on a run folder whose infer/ is written here from synthetic predictions (the real pipeline's
export is checked on the shared reproduce run, tests/reproduce/test_reproduce.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core import storage
from lnr_dist.core.errors import UserError
from lnr_dist.data.config import DataConfig
from lnr_dist.data.splits import load_split
from lnr_dist.experiment import ExperimentConfig
from lnr_dist.lnr import compute_flips
from lnr_dist.stage2.export import export_flipped_split

THRESHOLD, TUNED = 0.5, 1.0


@pytest.fixture
def run(tmp_path, long_tailed_set):
    """A split file of the synthetic set (with a leading-slash path, as Places365's lists write them) and a run
    folder holding what the inference job writes, plus a sweep's chosen threshold."""
    probs, labels = long_tailed_set
    lines = [f"{'/' if i == 0 else ''}c{y}/img {i}.jpg {y}\n" for i, y in enumerate(labels)]
    (tmp_path / "train.txt").write_text("".join(lines))
    split = str(tmp_path / "train.txt")
    data = DataConfig(root=str(tmp_path), train_split=split, val_split=split, test_split=split,
                      num_classes=probs.shape[1])  # fmt: skip
    cfg = ExperimentConfig(data=data, run_dir=str(tmp_path / "run"))
    layout = cfg.layout
    storage.write_npy(layout.infer_file("predictions.npy"), probs)
    storage.write_npy(layout.infer_file("labels.npy"), labels)
    storage.save_flip_table(
        layout.infer_file("flips.npz"), compute_flips(probs, labels, None, THRESHOLD, 3).table
    )
    storage.write_json(layout.infer_file("summary.json"), {"seed": 3, "threshold": THRESHOLD})
    return cfg, probs, labels


def _expected(probs, labels, threshold):
    table = compute_flips(probs, labels, None, threshold, 3).table
    return table.apply(np.arange(labels.size), labels), len(table)


def test_default_is_infer_threshold_then_the_sweeps_choice_and_round_trips(run, tmp_path):
    cfg, probs, labels = run
    out = tmp_path / "out" / "flipped.txt"
    done = export_flipped_split(cfg, out)
    expected, count = _expected(probs, labels, THRESHOLD)
    assert count > 0 and done.num_flips == count and done.threshold == THRESHOLD
    read = load_split(out, tmp_path, probs.shape[1])
    np.testing.assert_array_equal(read.labels, expected)
    original = load_split(tmp_path / "train.txt", tmp_path, probs.shape[1])
    assert read.paths == original.paths and read.paths[0] == "c" + str(labels[0]) + "/img 0.jpg"
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(labels.size))
    np.testing.assert_array_equal([int(r["original_label"]) for r in rows], labels)
    np.testing.assert_array_equal([int(r["new_label"]) for r in rows], expected)

    storage.write_json(cfg.layout.chosen_threshold, {"threshold": TUNED})
    done = export_flipped_split(cfg, out, force=True)
    expected, count = _expected(probs, labels, TUNED)
    assert done.threshold == TUNED and done.num_flips == count
    np.testing.assert_array_equal(load_split(out, tmp_path, probs.shape[1]).labels, expected)


def test_threshold_and_method(run, tmp_path):
    cfg, probs, labels = run
    done = export_flipped_split(cfg, tmp_path / "t.txt", threshold=0.0)
    assert done.num_flips == _expected(probs, labels, 0.0)[1]
    storage.write_json(cfg.layout.chosen_threshold, {"threshold": TUNED})
    done = export_flipped_split(cfg, tmp_path / "m.txt", method="mislas")
    assert done.num_flips == 0 and done.threshold is None
    done = export_flipped_split(cfg, tmp_path / "r.txt", method="random")
    assert done.num_flips == _expected(probs, labels, TUNED)[1] and done.threshold == TUNED


def test_cli_refuses_overwrite_and_names_what_to_do(run, tmp_path, capsys):
    cfg, _, _ = run
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": config_lib.to_dict(cfg.data)}))
    out = tmp_path / "f.txt"
    args = ["export", "--config", str(config), "--out", str(out), f"run_dir={cfg.run_dir}"]
    assert main(args) == 0
    assert "written:" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--force" in err
    assert main([*args, "--force"]) == 0
    assert main([*args[:-1], f"run_dir={tmp_path}", "--force"]) == 2
    assert "not found: run `lnr-dist infer`" in capsys.readouterr().err


def test_refusals(run, tmp_path):
    cfg, _, _ = run
    with pytest.raises(UserError, match="not both"):
        export_flipped_split(cfg, tmp_path / "x.txt", threshold=1.0, method="lnr")
    with pytest.raises(UserError, match="cannot end in .csv"):
        export_flipped_split(cfg, tmp_path / "x.csv")
    with pytest.raises(UserError, match="unknown method"):
        export_flipped_split(cfg, tmp_path / "x.txt", method="nope")
    storage.write_json(cfg.layout.root / "seed4" / "infer" / "summary.json", {"seed": 0, "threshold": 1.0})
    from dataclasses import replace

    root = replace(cfg, run_dir=str(cfg.layout.root))  # a folder holding seed folders, and its own infer/
    export_flipped_split(root, tmp_path / "y.txt")  # its own infer/ wins
    bare = tmp_path / "bare"
    storage.write_json(bare / "seed4" / "infer" / "summary.json", {"seed": 0, "threshold": 1.0})
    with pytest.raises(UserError, match=r"--seed \(4\)"):
        export_flipped_split(replace(cfg, run_dir=str(bare)), tmp_path / "z.txt")
