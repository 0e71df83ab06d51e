"""Split files as people's tools write them, classes with no training image, and `data check`'s overrides
(issue 14, cases 1, 2, 3 and 5)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core.errors import UserError
from lnr_dist.data.check import check_data
from lnr_dist.data.splits import load_split, load_train_split
from lnr_dist.launch.submit import check_before_submit
from lnr_dist.reproduce.runner import reproduce

from ..conftest import mini_data_config, mini_experiment


def write_data_yaml(path: Path, root: Path, num_classes: int = 10) -> Path:
    path.write_text(
        f"data:\n  root: {root}\n  train_split: {root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {root / 'Mini_LT_val.txt'}\n  test_split: {root / 'Mini_LT_test.txt'}\n"
        f"  num_classes: {num_classes}\n"
    )
    return path


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_split_with_byte_order_mark_and_crlf_resolves_every_line(tmp_path, mini_root, encoding):
    # Case 1: what Windows editors save (a byte-order mark, CRLF); the mark used to stick to line 1's path.
    plain = load_split(mini_root / "Mini_LT_train.txt", mini_root, 10)
    lines = (mini_root / "Mini_LT_train.txt").read_text().splitlines()
    windows = tmp_path / "train.txt"
    windows.write_bytes("".join(f"{line}\r\n" for line in lines).encode(encoding))
    assert windows.read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe")
    split = load_split(windows, mini_root, 10)
    assert split.paths == plain.paths and split.labels.tolist() == plain.labels.tolist()
    assert all(Path(split.full_path(i)).is_file() for i in range(len(split)))
    assert split.lines.tolist() == list(range(1, len(lines) + 1))


def test_a_line_that_is_not_utf8_is_named(tmp_path, mini_root):
    lines = (mini_root / "Mini_LT_train.txt").read_bytes().splitlines()
    lines[3] = b"images/0/caf\xe9.jpg 0"  # Latin-1, as an old tool might write it
    (tmp_path / "train.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"train.txt:4: not UTF-8 text; save the split file as UTF-8"):
        load_split(tmp_path / "train.txt", mini_root, 10)


def test_leading_slash_is_read_relative_to_root_with_one_notice(tmp_path, mini_root, caplog):
    # Case 2: the Places365 lists' style, `/a/airfield/00000001.jpg 0`.
    plain = load_split(mini_root / "Mini_LT_train.txt", mini_root, 10)
    lines = (mini_root / "Mini_LT_train.txt").read_text().splitlines()
    slashed = tmp_path / "train.txt"
    slashed.write_text("".join(f"/{line}\n" for line in lines))
    with caplog.at_level(logging.WARNING, logger="lnr_dist"):
        first = load_split(slashed, mini_root, 10)
        again = load_split(slashed, mini_root, 10)
    assert first.paths == again.paths == plain.paths
    assert all(Path(first.full_path(i)).is_file() for i in range(len(first)))
    notices = [r.getMessage() for r in caplog.records if "start with '/'" in r.getMessage()]
    assert len(notices) == 1
    assert (
        f"{slashed}: paths start with '/' (first on line 1); split paths are relative to data.root"
        in notices[0]
    )


def test_full_paths_inside_the_root_are_read_as_the_path_below_it(tmp_path, mini_root):
    plain = load_split(mini_root / "Mini_LT_train.txt", mini_root, 10)
    lines = (mini_root / "Mini_LT_train.txt").read_text().splitlines()
    absolute = tmp_path / "train_abs.txt"
    absolute.write_text("".join(f"{mini_root.absolute()}/{line}\n" for line in lines))
    assert load_split(absolute, mini_root, 10).paths == plain.paths


@pytest.fixture()
def no_class_5(tmp_path, mini_root):
    """The mini set whose train split lost class 5's lines (val and test keep class 5)."""
    root = tmp_path / "no5"
    shutil.copytree(mini_root, root)
    train = root / "Mini_LT_train.txt"
    kept = [line for line in train.read_text().splitlines() if not line.endswith(" 5")]
    train.write_text("\n".join(kept) + "\n")
    return root


def test_data_check_names_every_class_without_training_images_and_fails(no_class_5, tmp_path, capsys):
    # Case 3: class 5 dropped from train, and data.num_classes = 12 for labels 0..9.
    config = write_data_yaml(tmp_path / "data.yaml", no_class_5)
    assert main(["data", "check", "--config", str(config), "data.num_classes=12"]) == 1
    out = capsys.readouterr().out.splitlines()
    train = no_class_5 / "Mini_LT_train.txt"
    assert out == [
        f"{train}: class(es) 5, 10-11 of data.num_classes = 12 have no images in this split: add images of "
        "those classes to the split, or renumber the labels 0..C-1 without gaps"
    ]
    reasons = [p.reason.split(":")[0] for p in check_data(mini_data_config(no_class_5))]
    assert reasons == ["class(es) 5 of data.num_classes = 10 have no images in this split"]


def test_num_classes_above_the_labels_used_says_which_value_to_set(mini_root):
    cfg = mini_data_config(mini_root, num_classes=13)
    (problem,) = check_data(cfg)
    assert problem.reason.endswith(
        "have no images in this split: set data.num_classes to 10 (the labels use 0..9)"
    )
    assert problem.reason.startswith("class(es) 10-12 ")


@pytest.mark.parametrize("job", ["stage1", "stage2", "infer", "tune"])
def test_every_job_refuses_a_class_without_training_images_before_cluster_time(
    no_class_5, tmp_path, capsys, job
):
    cfg = mini_experiment(no_class_5, tmp_path / "run")
    path = config_lib.save_resolved(cfg, tmp_path, "job.yaml")
    assert main([job, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lnr-dist {job}: error: {no_class_5 / 'Mini_LT_train.txt'}: class(es) 5 of data.num_classes = 10 have "
        "no images in this split: add images of those classes to the split, or renumber the labels 0..C-1 "
        "without gaps"
    )
    assert not (tmp_path / "run").exists()  # nothing written, no Ray started for it
    with pytest.raises(UserError, match="class\\(es\\) 5 of data.num_classes = 10 have no images"):
        check_before_submit(job, cfg)


def test_reproduce_refuses_a_class_without_training_images(no_class_5, tmp_path):
    with pytest.raises(UserError, match="class\\(es\\) 5 of data.num_classes = 10 have no images"):
        reproduce(mini_experiment(no_class_5, tmp_path / "run"))
    with pytest.raises(UserError, match="class\\(es\\) 5 of"):
        load_train_split(mini_data_config(no_class_5))


def test_data_check_overrides_follow_the_rule_of_every_job(mini_root, tmp_path, capsys):
    # Case 5: keys without the `data.` prefix used to be dropped silently (exit 0).
    config = write_data_yaml(tmp_path / "data.yaml", mini_root)
    assert main(["data", "check", "--config", str(config), "num_classes=3", "root=/nonexistent"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lnr-dist data: error: command line 'num_classes': unknown key 'num_classes' (valid keys here: data; "
        "this command reads only the 'data' section: did you mean data.num_classes?)"
    )
    assert main(["data", "check", "--config", str(config), "model.arch=resnet50"]) == 2
    assert "unknown key 'model.arch'" in capsys.readouterr().err
    assert main(["data", "check", "--config", str(config), "data.num_classes=3"]) == 1
    assert "label 9 out of range [0, 3) (data.num_classes)" in capsys.readouterr().out
