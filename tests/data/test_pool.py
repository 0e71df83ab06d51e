"""Unlabelled pools (issue 16): counts per profile and cap, the builders, the hidden labels and the annotator,
and the one-line refusals of a bad pool before any work."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from lnr_dist.cli import main
from lnr_dist.core import config as config_lib
from lnr_dist.core.errors import UserError
from lnr_dist.data.cifar import make_cifar_lt
from lnr_dist.data.pool import UNLABELED, draw_pool, load_pool, pool_counts
from lnr_dist.data.splits import load_split, parse_split

from ..conftest import mini_data_config, mini_experiment
from .test_cifar import write_cifar10

# The mini set (IF 0.01) by hand: ~180 digits per class, 15 val + 25 test each, train 134 down to 1 (329).
MINI_TRAIN = [134, 80, 48, 28, 17, 10, 6, 3, 2, 1]
MINI_LEFT = [4, 62, 89, 115, 124, 132, 135, 136, 132, 139]  # per-class digits minus 40 minus train


@pytest.mark.parametrize(
    ("ratio", "profile", "expected"),
    [
        # train [6, 3, 1] (N = 10), left [2, 5, 9]
        (1.0, "balanced", [2, 3, 3]),  # floor(10 / 3) = 3 each, class 0 capped at its 2
        (1.0, "same", [2, 3, 1]),  # 6 3 1, class 0 capped
        (1.0, "reversed", [1, 3, 6]),  # the head gets the tail's count and back
        (0.5, "balanced", [1, 1, 1]),  # floor(5 / 3)
        (0.5, "same", [2, 1, 0]),  # floor(3, 1.5, 0.5), class 0 capped
        (0.5, "reversed", [0, 1, 3]),  # floor(0.5, 1.5, 3)
        (0.0, "balanced", [0, 0, 0]),
    ],
)
def test_pool_counts_by_hand(ratio, profile, expected):
    assert pool_counts([6, 3, 1], [2, 5, 9], ratio, profile).tolist() == expected


def test_pool_counts_reversed_by_rank_rounding_and_bad_input():
    # Not sorted by class index: the class with most training images gets the count of the one with fewest.
    assert pool_counts([1, 6, 3], [9, 9, 9], 1.0, "reversed").tolist() == [6, 1, 3]
    assert pool_counts([100], [100], 0.29, "same").tolist() == [29]  # 0.29 * 100 = 28.999... in binary
    # The real mini set: 2 x 329 = 658 wanted, 65 per class; the head class has 4 left, class 1 has 62.
    assert pool_counts(MINI_TRAIN, MINI_LEFT, 2.0).tolist() == [4, 62] + [65] * 8
    with pytest.raises(ValueError, match="must be >= 0"):
        pool_counts([1, 2], [1, 2], -1.0)
    with pytest.raises(ValueError, match="unknown pool profile 'tail': use one of balanced, same, reversed"):
        pool_counts([1, 2], [1, 2], 1.0, "tail")


def test_draw_pool_is_seeded_disjoint_and_mixed():
    available = [np.arange(0, 40), np.arange(100, 110), np.arange(200, 260)]
    draw = draw_pool(available, [50, 10, 2], 1.0, "balanced", seed=3)
    assert draw.counts.tolist() == [20, 10, 20]  # floor(62 / 3) = 20; class 1 capped at 10
    assert np.bincount(draw.labels).tolist() == draw.counts.tolist()
    for c, ids in enumerate(available):
        picked = draw.items[draw.labels == c]
        assert set(picked) <= set(ids) and len(set(picked)) == picked.size  # only its own, no repeats
    assert not np.array_equal(draw.labels, np.sort(draw.labels))  # classes mixed, like published split files
    again = draw_pool(available, [50, 10, 2], 1.0, "balanced", seed=3)
    assert np.array_equal(again.items, draw.items) and np.array_equal(again.labels, draw.labels)
    other = draw_pool(available, [50, 10, 2], 1.0, "balanced", seed=4)
    assert not np.array_equal(other.items, draw.items)
    assert draw.to_dict()["pool_counts"] == [20, 10, 20] and draw.to_dict()["pool_size"] == 50


def test_mini_pool_counts_and_disjointness(mini_root):
    counts = json.loads((mini_root / "Mini_LT_pool_counts.json").read_text())
    assert counts["pool_counts"] == [4, 62] + [65] * 8 and counts["pool_size"] == 586
    assert counts["train_counts"] == MINI_TRAIN and counts["available"] == MINI_LEFT
    assert (counts["ratio"], counts["profile"], counts["seed"]) == (2.0, "balanced", 0)
    pool, _ = parse_split(mini_root / "Mini_LT_pool.txt", mini_root, 10)
    assert np.bincount(pool.labels, minlength=10).tolist() == counts["pool_counts"]
    others = set()
    for name in ("train", "val", "test"):
        others |= set(load_split(mini_root / f"Mini_LT_{name}.txt", mini_root, 10).paths)
    assert not set(pool.paths) & others
    assert all((mini_root / path).is_file() for path in pool.paths)
    # every digit of the set is in exactly one of the four splits when the pool takes all that is left
    assert len(others) + sum(MINI_LEFT) == 1797


def test_make_mini_same_profile_through_the_cli_caps_the_head(tmp_path, capsys):
    out = tmp_path / "same"
    assert (
        main(["data", "make-mini", "--out", str(out), "--unlabeled-ratio", "1", "--pool-profile", "same"])
        == 0
    )
    printed = capsys.readouterr().out
    expected = [4, 62, 48, 28, 17, 10, 6, 3, 2, 1]  # min(train, left): the two head classes are short
    assert json.loads((out / "Mini_LT_pool_counts.json").read_text())["pool_counts"] == expected
    assert f"pool: {out / 'Mini_LT_pool.txt'}" in printed and "pool: same, up to 1 x 329" in printed
    assert "    0    134      4      4" in printed and f"  all    329   1068 {sum(expected):>6}" in printed
    pool = load_pool(mini_data_config(out, pool=True))
    assert len(pool) == sum(expected)
    assert np.bincount(pool.annotate(np.arange(len(pool))), minlength=10).tolist() == expected


def test_make_cifar_pool_from_the_images_the_lt_split_left_out(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    plain = make_cifar_lt(tmp_path, tmp_path / "plain", 10, imb_factor=0.1, val_per_class=2)
    files = make_cifar_lt(
        tmp_path, tmp_path / "out", 10, 0.1, 2, unlabeled_ratio=1.0, pool_profile="reversed"
    )
    for name in ("train", "val", "test"):  # the labelled splits do not depend on the pool
        assert files[name].read_bytes() == plain[name].read_bytes()
    assert not (tmp_path / "plain" / "CIFAR10_LT_pool.txt").exists()
    root = tmp_path / "out"
    train, val, test, pool = (load_split(files[s], root, 10) for s in ("train", "val", "test", "pool"))
    train_counts = np.bincount(train.labels, minlength=10)  # 28 (30 - 2 for val) down to 3
    left = 30 - 2 - train_counts
    expected = np.minimum(train_counts[::-1], left)  # reversed profile, capped by what is left
    assert np.bincount(pool.labels, minlength=10).tolist() == expected.tolist()
    summary = json.loads(files["pool_counts"].read_text())
    assert summary["pool_counts"] == expected.tolist() and summary["available"] == left.tolist()
    assert not set(pool.paths) & (set(train.paths) | set(val.paths) | set(test.paths))
    assert all(path.startswith("train/") and (root / path).is_file() for path in pool.paths)
    with pytest.raises(UserError, match="--unlabeled-ratio must be >= 0"):
        make_cifar_lt(tmp_path, tmp_path / "bad", 10, 0.1, 2, unlabeled_ratio=-1)


def scrambled_copy(mini_root, folder):
    """The mini pool file under `folder` (same root) with every label moved to another class."""
    lines = (mini_root / "Mini_LT_pool.txt").read_text().splitlines()
    scrambled = [f"{path} {(int(label) + 3) % 10}" for path, label in (line.rsplit(" ", 1) for line in lines)]
    folder.mkdir(exist_ok=True)
    (folder / "pool.txt").write_text("\n".join(scrambled) + "\n")
    return folder / "pool.txt"


def test_the_training_view_carries_no_labels(mini_root, tmp_path):
    pool = load_pool(mini_data_config(mini_root, pool=True))
    truth, _ = parse_split(mini_root / "Mini_LT_pool.txt", mini_root, 10)
    assert len(pool) == len(truth) == 586 and pool.split.paths == truth.paths
    assert pool.split.labels.dtype == np.int64 and set(pool.split.labels.tolist()) == {UNLABELED}
    # Scrambled labels leave the view (what a loader or a Ray worker gets) the same, byte for byte.
    other = load_pool(mini_data_config(mini_root, unlabeled_split=str(scrambled_copy(mini_root, tmp_path))))
    view = pool.split
    assert pickle.dumps((view.paths, view.labels, view.lines, view.root)) == pickle.dumps(
        (other.split.paths, other.split.labels, other.split.lines, other.split.root)
    )


def test_annotate_returns_the_true_labels(mini_root, tmp_path):
    pool = load_pool(mini_data_config(mini_root, pool=True))
    truth, _ = parse_split(mini_root / "Mini_LT_pool.txt", mini_root, 10)
    picked = np.array([[5, 0], [585, 17]])
    labels = pool.annotate(picked)
    assert labels.shape == (2, 2) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, truth.labels[picked])
    np.testing.assert_array_equal(pool.annotate(np.arange(len(pool))), truth.labels)
    scrambled = load_pool(
        mini_data_config(mini_root, unlabeled_split=str(scrambled_copy(mini_root, tmp_path)))
    )
    np.testing.assert_array_equal(scrambled.annotate(picked), (truth.labels[picked] + 3) % 10)
    with pytest.raises(UserError, match=r"pool indices must be in \[0, 586\), got 0..586"):
        pool.annotate([0, 586])
    edited = tmp_path / "edited"
    path = scrambled_copy(mini_root, edited)
    moved = load_pool(mini_data_config(mini_root, unlabeled_split=str(path)))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))  # a line removed after loading
    with pytest.raises(UserError, match="the pool file changed since it was loaded"):
        moved.annotate([0])


def with_line(mini_root, tmp_path, extra: list[str]):
    """A copy of the mini pool file with `extra` lines appended; returns (path, first appended line number)."""
    lines = (mini_root / "Mini_LT_pool.txt").read_text().splitlines()
    path = tmp_path / "pool.txt"
    path.write_text("\n".join(lines + extra) + "\n")
    return path, len(lines) + 1


def test_a_pool_overlapping_another_split_is_one_line_naming_both(mini_root, tmp_path):
    train_file, test_file = mini_root / "Mini_LT_train.txt", mini_root / "Mini_LT_test.txt"
    train_line, test_line = train_file.read_text().splitlines()[6], test_file.read_text().splitlines()[0]
    path, first = with_line(mini_root, tmp_path, [train_line, test_line])
    with pytest.raises(UserError) as raised:
        load_pool(mini_data_config(mini_root, unlabeled_split=str(path)))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "2 image(s) of the pool (data.unlabeled_split) are also in a labelled or test split"
    )
    image = train_line.rsplit(" ", 1)[0]
    assert f"{path}:{first}: {image!r} is also in the train split ({train_file}:7)" in message
    assert (
        f"{path}:{first + 1}: {test_line.rsplit(' ', 1)[0]!r} is also in the test split ({test_file}:1)"
        in message
    )


def test_missing_pool_and_labels_out_of_range_name_the_file_and_key(mini_root, tmp_path):
    with pytest.raises(UserError, match=r"nope.txt: pool file not found \(data.unlabeled_split\)"):
        load_pool(mini_data_config(mini_root, unlabeled_split=str(tmp_path / "nope.txt")))
    path, first = with_line(mini_root, tmp_path, ["images/0/elsewhere.jpg 10"])
    with pytest.raises(UserError) as raised:
        load_pool(mini_data_config(mini_root, unlabeled_split=str(path)))
    assert f"split file {path} (data.unlabeled_split)" in str(raised.value)
    assert f"{path}:{first}: label 10 out of range [0, 10) (data.num_classes)" in str(raised.value)
    with pytest.raises(UserError, match="no unlabelled pool: set data.unlabeled_split"):
        load_pool(mini_data_config(mini_root))


@pytest.mark.parametrize("job", ["stage1", "stage2"])
def test_jobs_refuse_an_overlapping_pool_before_cluster_time(mini_root, tmp_path, capsys, job):
    val_file = mini_root / "Mini_LT_val.txt"
    val_line = val_file.read_text().splitlines()[2]
    path, first = with_line(mini_root, tmp_path, [val_line])
    cfg = mini_experiment(
        mini_root, tmp_path / "run", data=mini_data_config(mini_root, unlabeled_split=str(path))
    )
    config = config_lib.save_resolved(cfg, tmp_path, "job.yaml")
    assert main([job, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lnr-dist {job}: error: 1 image(s) of the pool (data.unlabeled_split)")
    assert f"{path}:{first}: {val_line.rsplit(' ', 1)[0]!r} is also in the val split ({val_file}:3)" in err
    assert "\n" not in err and not (tmp_path / "run").exists()  # nothing written, no Ray started
    # the same set with its own pool passes the pool check (and without data.unlabeled_split none is made)
    from lnr_dist.train.trainer import preflight

    good = mini_experiment(mini_root, tmp_path / "good", data=mini_data_config(mini_root, pool=True))
    assert set(preflight(good.with_absolute_paths(), "stage1")) == {"train", "val", "test"}


def test_data_check_checks_the_pool_only_when_set(mini_root, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(mini_root, root)
    pool = root / "Mini_LT_pool.txt"
    lines = pool.read_text().splitlines()
    train_line = (root / "Mini_LT_train.txt").read_text().splitlines()[0]
    lines[3] = train_line  # line 4: also in train
    lines[5] = "images/0/missing.jpg 0"  # line 6: missing file
    pool.write_text("\n".join(lines) + "\n")
    config = tmp_path / "data.yaml"
    config.write_text(
        f"data:\n  root: {root}\n  train_split: {root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {root / 'Mini_LT_val.txt'}\n  test_split: {root / 'Mini_LT_test.txt'}\n  num_classes: 10\n"
    )
    assert main(["data", "check", "--config", str(config)]) == 0  # no data.unlabeled_split: no pool checked
    capsys.readouterr()
    assert main(["data", "check", "--config", str(config), f"data.unlabeled_split={pool}"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{pool}:4: {train_line.rsplit(' ', 1)[0]!r} is also in the train split (line 1)",
        f"{pool}:6: missing file {root / 'images/0/missing.jpg'}",
    ]
    assert (
        main(["data", "check", "--config", str(config), f"data.unlabeled_split={tmp_path / 'no.txt'}"]) == 1
    )
    assert capsys.readouterr().out.strip() == (
        f"{tmp_path / 'no.txt'}: pool split file not found (data.unlabeled_split)"
    )


def test_mini_config_and_the_demo_use_the_pool(tmp_path, monkeypatch, mini_root):
    import lnr_dist.reproduce.runner
    from lnr_dist.demo import MINI_CONFIG, run_demo
    from lnr_dist.experiment import ExperimentConfig

    cfg = config_lib.load_config(ExperimentConfig, MINI_CONFIG)
    assert cfg.data.unlabeled_split == "runs/mini-data/Mini_LT_pool.txt"
    assert cfg.with_absolute_paths().data.unlabeled_split.endswith("/runs/mini-data/Mini_LT_pool.txt")
    seen = []
    monkeypatch.setattr(lnr_dist.reproduce.runner, "reproduce", lambda c: seen.append(c) or {})
    run_demo(tmp_path)  # a fresh clone: builds the mini set with its pool, then reproduces
    (demo,) = seen
    assert demo.data.unlabeled_split == str(tmp_path.resolve() / "mini-data" / "Mini_LT_pool.txt")
    assert len(load_pool(demo.data)) == 586  # disjoint from the demo's splits, labels in range
    # the same seed draws the same pool (the session's mini set was built like the demo's)
    assert (tmp_path / "mini-data" / "Mini_LT_pool.txt").read_bytes() == (
        mini_root / "Mini_LT_pool.txt"
    ).read_bytes()
