"""The bundled mini set, split parsing, the manifest and `data check`."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

from lnr_dist.cli import main
from lnr_dist.core.errors import UserError
from lnr_dist.data.check import check_data
from lnr_dist.data.cifar import exponential_profile
from lnr_dist.data.manifest import Manifest
from lnr_dist.data.mini import make_mini
from lnr_dist.data.splits import load_split

from ..conftest import mini_data_config


def digest(folder, leave_out=frozenset()) -> str:
    """sha256 over every file's relative path and bytes, but those in `leave_out` (relative paths)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and str(path.relative_to(folder)) not in leave_out:
            h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def pool_files(root) -> set[str]:
    """The files a pool adds to a mini set: its split file, its counts and its images."""
    images = {line.rsplit(" ", 1)[0] for line in (root / "Mini_LT_pool.txt").read_text().splitlines()}
    return {"Mini_LT_pool.txt", "Mini_LT_pool_counts.json", *images}


# sha256 of the split files make_mini(seed=0) wrote before pools existed (commit 7d321d0): without a pool it
# still writes exactly these, and a pool leaves them unchanged.
SPLITS_BEFORE_POOLS = {
    "Mini_LT_train.txt": "955beb56a223f60fbae7a45ee5356c3c6ebe4914e580807023bdff0e9017ce65",
    "Mini_LT_val.txt": "8ecbdfeafc66bdcfc6f7a0f2d723b67005db510ead6fa9f01032f2c3ddb36b00",
    "Mini_LT_test.txt": "e53ccb808b15764ee3c30a5bffc01fcd845a98ebccb19d1369ff27c16bc7b04c",
}


def test_mini_is_long_tailed_balanced_where_it_should_be_and_disjoint(mini_root):
    train, val, test = (
        load_split(mini_root / f"Mini_LT_{s}.txt", mini_root, 10) for s in ("train", "val", "test")
    )
    counts = np.bincount(train.labels, minlength=10)
    np.testing.assert_array_equal(counts, exponential_profile(int(counts[0]), 0.01, 10))
    assert counts[0] > 100 and counts[-1] >= 1
    assert set(np.bincount(val.labels, minlength=10)) == {15}
    assert set(np.bincount(test.labels, minlength=10)) == {25}
    assert not set(train.paths) & set(val.paths) and not set(train.paths) & set(test.paths)
    assert not set(val.paths) & set(test.paths)
    with Image.open(train.full_path(0)) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_mini_is_deterministic_for_a_seed_and_without_a_pool_writes_exactly_the_labelled_set(
    tmp_path, mini_root
):
    # mini_root has a pool (seed 0); ratio 0 (the default) writes the same set without the pool's files, nothing
    # else: the pool draws from a stream of its own.
    files = make_mini(tmp_path / "again", seed=0)
    assert set(files) == {"train", "val", "test"}
    again = {str(p.relative_to(tmp_path / "again")) for p in (tmp_path / "again").rglob("*") if p.is_file()}
    everything = {str(p.relative_to(mini_root)) for p in mini_root.rglob("*") if p.is_file()}
    assert again == everything - pool_files(mini_root)
    assert digest(tmp_path / "again") == digest(mini_root, pool_files(mini_root))
    for name, expected in SPLITS_BEFORE_POOLS.items():
        assert hashlib.sha256((tmp_path / "again" / name).read_bytes()).hexdigest() == expected, name
    make_mini(tmp_path / "other", seed=1, unlabeled_ratio=2)
    assert digest(tmp_path / "other") != digest(mini_root)


def test_manifest_groups(mini_root):
    train = load_split(mini_root / "Mini_LT_train.txt", mini_root, 10)
    manifest = Manifest.from_labels(train.labels, 10)
    counts = manifest.class_counts
    assert manifest.num_samples == len(train)
    assert set(manifest.group_classes("many")) == set(np.flatnonzero(counts > 100))
    assert set(manifest.group_classes("few")) == set(np.flatnonzero(counts < 20))
    assert set(manifest.group_classes("medium")) == set(np.flatnonzero((counts >= 20) & (counts <= 100)))
    assert all(len(manifest.group_classes(g)) for g in ("many", "medium", "few"))
    assert Manifest.from_dict(manifest.to_dict()).group.tolist() == manifest.group.tolist()


@pytest.fixture()
def broken_root(tmp_path, mini_root):
    """A copy of the mini set with one planted defect per kind, at known lines of the train split."""
    root = tmp_path / "broken"
    shutil.copytree(mini_root, root)
    lines = (root / "Mini_LT_train.txt").read_text().splitlines()
    lines[2] = "images/only-one-field.jpg"  # line 3: malformed
    lines[4] = lines[4].rsplit(" ", 1)[0] + " x"  # line 5: label not an integer
    lines[6] = lines[6].rsplit(" ", 1)[0] + " 10"  # line 7: label out of range
    lines[8] = lines[9]  # line 10: duplicate of line 9
    lines[11] = "images/0/missing.jpg 0"  # line 12: missing file
    corrupt = root / lines[13].rsplit(" ", 1)[0]  # line 14: truncated JPEG
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    hollow = root / lines[16].rsplit(" ", 1)[0]  # line 17: start and end intact, the middle cut out
    hollow.write_bytes(hollow.read_bytes()[:400] + b"\xff\xd9")
    lines[15] = (root / "Mini_LT_val.txt").read_text().splitlines()[0]  # line 16: also in val
    (root / "Mini_LT_train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_check_finds_every_planted_defect_with_its_line(broken_root):
    cfg = mini_data_config(broken_root)
    problems = check_data(cfg, decode=True)
    found = {(p.line, p.reason.split()[0]) for p in problems if p.file.endswith("train.txt")}
    reasons = dict(found)
    assert reasons[3] == "expected"
    assert reasons[5] == "label" and reasons[7] == "label"
    assert reasons[10] == "duplicate"
    assert reasons[12] == "missing"
    assert reasons[14] == "cannot" and reasons[17] == "cannot"
    assert len(found) == 7
    leaks = [str(p) for p in problems if p.file.endswith("val.txt")]
    assert len(leaks) == 1 and leaks[0].endswith("is also in the train split (line 16)")
    # Without --decode only files whose first/last bytes look wrong are decoded: the truncated one, not the hollow.
    quick = {p.line for p in check_data(cfg, decode=False) if p.file.endswith("train.txt")}
    assert 14 in quick and 17 not in quick


def test_check_cli_reports_file_line_reason_and_fails(broken_root, tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(
        "data:\n"
        f"  root: {broken_root}\n"
        f"  train_split: {broken_root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {broken_root / 'Mini_LT_val.txt'}\n"
        f"  test_split: {broken_root / 'Mini_LT_test.txt'}\n"
        "  num_classes: 10\n"
        "stage1: {ignored: here}\n"
    )
    assert main(["data", "check", "--config", str(config), "--decode"]) == 1
    out = capsys.readouterr().out
    assert f"{broken_root / 'Mini_LT_train.txt'}:7: label 10 out of range [0, 10)" in out
    assert f"{broken_root / 'Mini_LT_train.txt'}:14: cannot decode image" in out


def test_check_cli_clean_set_and_bad_config(mini_root, tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text(
        f"data:\n  root: {mini_root}\n  train_split: {mini_root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {mini_root / 'Mini_LT_val.txt'}\n  test_split: {mini_root / 'Mini_LT_test.txt'}\n"
        "  num_classes: 10\n"
    )
    assert main(["data", "check", "--config", str(config)]) == 0
    assert main(["data", "check", "--config", str(config), "data.loader=spark"]) == 2
    assert "key 'data.loader': expected one of 'dali', 'torch'" in capsys.readouterr().err


def test_load_split_refuses_a_broken_file(broken_root):
    with pytest.raises(UserError, match=r"Mini_LT_train.txt:3: expected '<path> <label>'"):
        load_split(broken_root / "Mini_LT_train.txt", broken_root, 10)
    with pytest.raises(UserError, match="split file not found"):
        load_split(broken_root / "nope.txt", broken_root, 10)
