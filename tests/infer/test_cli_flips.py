"""`lnr-dist flips` end to end: outputs, summary keys, and bad input that writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lnr_dist.cli import main
from lnr_dist.core.storage import load_flip_table
from lnr_dist.lnr import compute_flips


@pytest.fixture()
def inputs(tmp_path, long_tailed_set):
    probs, labels = long_tailed_set
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path


def run(args):
    return main(["flips", *map(str, args)])


def test_writes_flips_summary_and_config(inputs, long_tailed_set):
    out = inputs / "out"
    code = run(
        [
            "--probs",
            inputs / "probs.npy",
            "--labels",
            inputs / "labels.npy",
            "--threshold",
            "1.5",
            "--seed",
            "4",
            "--out",
            out,
        ]
    )
    assert code == 0
    table = load_flip_table(out / "flips.npz")
    expected = compute_flips(*long_tailed_set, None, 1.5, 4).table
    np.testing.assert_array_equal(table.index, expected.index)
    np.testing.assert_array_equal(table.target, expected.target)
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "num_classes",
        "num_samples",
        "threshold",
        "seed",
        "counts",
        "prior",
        "mean",
        "std",
        "num_flips",
        "flip_pairs",
        "counts_after",
        "inputs_sha256",
    ):
        assert key in summary, key
    num_classes = summary["num_classes"]
    assert all(len(summary[k]) == num_classes for k in ("counts", "prior", "mean", "std", "counts_after"))
    pairs = np.asarray(summary["flip_pairs"])
    np.testing.assert_array_equal(np.bincount(pairs[:, 0] * num_classes + pairs[:, 1], weights=pairs[:, 2],
                                              minlength=num_classes**2).reshape(num_classes, num_classes),
                                  table.flip_matrix(num_classes))  # fmt: skip
    assert (np.diff(pairs[:, 2]) <= 0).all()  # most flips first
    assert summary["num_flips"] == len(table) > 0
    assert (out / "config.yaml").is_file()


def test_config_file_and_override(inputs):
    cfg = inputs / "flips.yaml"
    cfg.write_text(
        f"probs: {inputs / 'probs.npy'}\nlabels: {inputs / 'labels.npy'}\nout: {inputs / 'o'}\n"
        "threshold: 9.0\n"
    )
    assert main(["flips", "--config", str(cfg), "threshold=1.0"]) == 0
    assert json.loads((inputs / "o" / "summary.json").read_text())["threshold"] == 1.0


def test_binary_mode(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, np.int64), np.ones(20, np.int64)]
    q = rng.beta(np.where(labels == 1, 5, 1), 4).astype(np.float32)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "l.npy", labels)
    assert (
        run(
            [
                "--probs",
                tmp_path / "q.npy",
                "--labels",
                tmp_path / "l.npy",
                "--threshold",
                "0.5",
                "--out",
                tmp_path / "o",
                "--binary",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["num_classes"] == 2 and summary["num_flips"] > 0 and summary["binary"] is True


def bad(inputs, name, array):
    np.save(inputs / name, array)
    return inputs / name


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("shape", "labels must have shape"),
        ("range", "labels out of range"),
        ("nan", "NaN"),
        ("rowsum", "rows must sum to 1"),
        ("logits", "pass softmax probabilities, not logits"),
        ("threshold", "expected a number, got 'abc'"),
        ("missing", "file not found"),
        ("onedim", "must be 2-D"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(inputs, long_tailed_set, capsys, case, message):
    probs, labels = long_tailed_set
    probs_path, labels_path, threshold = inputs / "probs.npy", inputs / "labels.npy", "1.0"
    if case == "shape":
        labels_path = bad(inputs, "l.npy", labels[:-1])
    elif case == "range":
        labels_path = bad(inputs, "l.npy", np.where(np.arange(labels.size) == 5, 99, labels))
    elif case == "nan":
        broken = probs.copy()
        broken[3, 1] = np.nan
        probs_path = bad(inputs, "p.npy", broken)
    elif case == "rowsum":
        probs_path = bad(inputs, "p.npy", probs * 0.5)
    elif case == "logits":
        probs_path = bad(inputs, "p.npy", np.log(probs))
    elif case == "threshold":
        threshold = "abc"
    elif case == "missing":
        probs_path = inputs / "nope.npy"
    elif case == "onedim":
        probs_path = bad(inputs, "p.npy", probs[:, 0])
    out = inputs / "out"
    code = run(["--probs", probs_path, "--labels", labels_path, "--threshold", threshold, "--out", out])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_console_script_is_installed(inputs):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "lnr_dist.cli",
            "flips",
            "--probs",
            str(inputs / "probs.npy"),
            "--labels",
            str(inputs / "labels.npy"),
            "--threshold",
            "nan",
            "--out",
            str(inputs / "x"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "threshold" in completed.stderr


def test_labels_with_an_empty_class_are_refused_unless_allowed(inputs, long_tailed_set, capsys):
    # Issue 14 case 3: the paper's prior makes an empty class the rarest (prior 1) and moves samples into it.
    probs, labels = long_tailed_set
    keep = (labels != 5) & (labels != 7)
    probs_path, labels_path = bad(inputs, "p.npy", probs[keep]), bad(inputs, "l.npy", labels[keep])
    args = ["--probs", probs_path, "--labels", labels_path, "--threshold", "1.0", "--out", inputs / "out"]
    assert run(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"lnr-dist flips: error: {labels_path}: class(es) 5, 7 of the 12 in {probs_path} have no sample: LNR's "
        "prior would make an empty class the rarest and move samples into it. Fix the labels (or drop those "
        "probs columns), or pass --allow-empty-classes (allow_empty_classes: true)"
    )
    assert not (inputs / "out").exists()
    assert run([*args, "--allow-empty-classes"]) == 0
    summary = json.loads((inputs / "out" / "summary.json").read_text())
    assert summary["counts"][5] == summary["counts"][7] == 0 and summary["prior"][5] == 1.0


@pytest.mark.parametrize("labels_of", [lambda x: x[:, None], lambda x: x.astype(np.float32)])
def test_labels_of_the_wrong_shape_or_dtype_name_the_labels_file(inputs, long_tailed_set, capsys, labels_of):
    # Issue 14 case 9: the message used to blame the probabilities file.
    probs, labels = long_tailed_set
    labels_path = bad(inputs, "L.npy", labels_of(labels))
    args = [
        "--probs",
        inputs / "probs.npy",
        "--labels",
        labels_path,
        "--threshold",
        "1.0",
        "--out",
        inputs / "o",
    ]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    expected = (
        f"labels must have shape ({labels.size},) to match probs, got ({labels.size}, 1) (flatten it: "
        "labels.reshape(-1))"
        if labels_of(labels).ndim == 2
        else "labels must be integers, got float32 (save them with labels.astype(np.int64))"
    )
    assert err == f"lnr-dist flips: error: {labels_path}: {expected}"
