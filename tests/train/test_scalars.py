"""Per-epoch TensorBoard scalars (train/scalars.py): tags, one point per epoch across a resume, a fresh start, off."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lnr_dist.core.config import load_config
from lnr_dist.experiment import ExperimentConfig
from lnr_dist.train.scalars import EPOCH_TAGS, EVENT_FILES, EpochScalars, scalars_folder

from ..conftest import tensorboard_scalars

REPO = Path(__file__).resolve().parents[2]


def row(epoch: int, base: float = 0.0) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": base + 1.0 / (epoch + 1), "lr": 0.1, "val_balanced_acc": base + epoch,
            "val_few": math.nan, "train_images": 100}  # fmt: skip


def test_an_epoch_row_becomes_its_tags_at_the_epoch_step(tmp_path):
    with EpochScalars(tmp_path, 0) as scalars:
        for epoch in range(3):
            scalars.write(epoch, row(epoch))
    seen = tensorboard_scalars(tmp_path)
    # val_few is NaN (a group without classes): left out, as metrics.csv leaves its cell empty; train_images and
    # epoch are no tags
    assert set(seen) == {"train/loss", "train/lr", "val/balanced_acc"}
    assert seen["val/balanced_acc"] == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert [step for step, _ in seen["train/loss"]] == [0, 1, 2]
    assert all(tag.split("/")[0] in ("train", "val") for tag in EPOCH_TAGS.values())


def test_a_resumed_job_writes_only_from_its_first_epoch_and_each_epoch_is_one_point(tmp_path):
    # the first attempt wrote epochs 0-3, but its checkpoint holds epoch 1: the job resumes at epoch 2
    with EpochScalars(tmp_path, 0) as scalars:
        for epoch in range(4):
            scalars.write(epoch, row(epoch))
    with EpochScalars(tmp_path, 2) as scalars:
        for epoch in range(2, 5):
            scalars.write(epoch, row(epoch, base=100.0))
    first, second = sorted(tmp_path.glob(EVENT_FILES))
    assert [s for s, _ in tensorboard_scalars(second)["val/balanced_acc"]] == [2, 3, 4]
    assert tensorboard_scalars(tmp_path)["val/balanced_acc"] == [(0, 0.0), (1, 1.0), (2, 102.0), (3, 103.0),
                                                                 (4, 104.0)]  # fmt: skip
    assert first.is_file()  # the epochs before the resume come from the first attempt's file


def test_a_job_that_starts_at_epoch_zero_starts_its_curves_over(tmp_path):
    with EpochScalars(tmp_path, 0) as scalars:
        for epoch in range(4):
            scalars.write(epoch, row(epoch))
    with EpochScalars(tmp_path, 0) as scalars:
        scalars.write(0, row(0, base=50.0))
    assert len(list(tmp_path.glob(EVENT_FILES))) == 1
    assert tensorboard_scalars(tmp_path)["val/balanced_acc"] == [(0, 50.0)]


def test_a_failure_keeps_every_epoch_written_and_closes_the_writer(tmp_path):
    with pytest.raises(RuntimeError), EpochScalars(tmp_path, 0) as scalars:
        scalars.write(0, row(0))
        raise RuntimeError("epoch 1 failed")
    scalars.write(1, row(1))  # closed: nothing more reaches the file
    assert tensorboard_scalars(tmp_path)["val/balanced_acc"] == [(0, 0.0)]


def test_tensorboard_false_writes_nothing(tmp_path):
    cfg = load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", ["tensorboard=false"])
    assert load_config(ExperimentConfig, REPO / "configs" / "mini.yaml", []).tensorboard
    assert scalars_folder(cfg, tmp_path / "stage1") is None
    with EpochScalars(scalars_folder(cfg, tmp_path / "stage1"), 0) as scalars:
        scalars.write(0, row(0))
    assert not any(tmp_path.rglob(EVENT_FILES))
