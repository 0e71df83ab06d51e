"""Damaged checkpoints (issue 14, case 6): a run falls back to the previous complete checkpoint, or refuses with
one line naming the file; a damaged stage-1 best.pt is one line for every job that reads it."""

from __future__ import annotations

import logging
import re
import shutil

import pytest
import torch

from lnr_dist.cli import main
from lnr_dist.models.checkpoint import (
    CheckpointError,
    find_resume_point,
    load_checkpoint,
    load_model,
    previous_path,
    save_checkpoint,
)
from lnr_dist.models.network import ModelConfig

from ..conftest import mini_experiment


def training_checkpoint(epoch: int) -> dict:
    return {"model": {"w": torch.full((4,), float(epoch))}, "optimizer": {}, "scheduler": {}, "scaler": {},
            "epoch": epoch, "best": {"metric": "top1", "value": 1.0, "epoch": epoch}, "torch_rng": torch.get_rng_state(),
            "config": {}}  # fmt: skip


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: len(data) // 2])


def write_config(tmp_path, mini_root, run_dir) -> str:
    config = tmp_path / "job.yaml"
    config.write_text(
        f"data:\n  root: {mini_root}\n  train_split: {mini_root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {mini_root / 'Mini_LT_val.txt'}\n  test_split: {mini_root / 'Mini_LT_test.txt'}\n"
        f"  num_classes: 10\n  image_size: 32\n  resize_size: 32\n  num_threads: 0\nmodel:\n  arch: small_cnn\n"
        f"run_dir: {run_dir}\nstage1:\n  epochs: 2\n  batch_size: 32\n  eval_batch_size: 128\n"
        "ray:\n  num_workers: 2\n  use_gpu: false\n"
    )
    return str(config)


def test_each_save_keeps_the_file_it_replaces(tmp_path):
    last = tmp_path / "last.pt"
    save_checkpoint(last, training_checkpoint(0), keep_previous=True)
    assert not previous_path(last).exists()
    save_checkpoint(last, training_checkpoint(1), keep_previous=True)
    assert previous_path(last) == tmp_path / "last.prev.pt"
    assert load_checkpoint(last)["epoch"] == 1 and load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 0


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_a_damaged_last_falls_back_to_the_previous_complete_checkpoint(tmp_path, how):
    for epoch in (0, 1):
        save_checkpoint(tmp_path / "last.pt", training_checkpoint(epoch), keep_previous=True)
    damage(tmp_path / "last.pt", how)
    found = find_resume_point(tmp_path, "stage1")
    assert found.path == tmp_path / "last.prev.pt" and found.state["epoch"] == 0
    expected = "empty file (0 bytes)" if how == "empty" else "truncated or damaged"
    assert expected in found.damaged


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_a_damaged_last_without_a_previous_one_is_refused_never_a_fresh_start(tmp_path, how):
    save_checkpoint(tmp_path / "last.pt", training_checkpoint(0), keep_previous=True)
    damage(tmp_path / "last.pt", how)
    with pytest.raises(CheckpointError) as raised:
        find_resume_point(tmp_path, "stage1")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'last.pt'}: checkpoint is ")
    assert "no previous complete checkpoint (last.prev.pt)" in message
    assert message.endswith("delete it to start stage1 over, or restore it from a copy")
    assert "\n" not in message
    # both damaged: named together
    save_checkpoint(tmp_path / "last.prev.pt", training_checkpoint(0))
    damage(tmp_path / "last.prev.pt", "empty")
    with pytest.raises(
        CheckpointError, match=r"and the previous checkpoint last.prev.pt too \(checkpoint is an empty"
    ):
        find_resume_point(tmp_path, "stage1")


def test_a_checkpoint_missing_between_rotate_and_write_resumes_from_the_previous_one(tmp_path):
    save_checkpoint(tmp_path / "last.prev.pt", training_checkpoint(3))
    found = find_resume_point(tmp_path, "stage1")
    assert found.state["epoch"] == 3 and "stopped while saving" in found.damaged
    assert find_resume_point(tmp_path / "nothing", "stage1") is None


def test_stage1_on_a_damaged_last_pt_is_one_line_before_ray(tmp_path, mini_root, capsys):
    run_dir = tmp_path / "run"
    last = run_dir / "stage1" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert main(["stage1", "--config", write_config(tmp_path, mini_root, run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"lnr-dist stage1: error: {last}: checkpoint is an empty file (0 bytes), and there is no previous complete "
        "checkpoint (last.prev.pt) to fall back to: delete it to start stage1 over, or restore it from a copy"
    ]
    assert last.stat().st_size == 0  # nothing was overwritten


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_a_damaged_stage1_best_pt_is_one_line_for_the_jobs_that_read_it(tmp_path, mini_root, capsys, how):
    best = tmp_path / "best.pt"
    save_checkpoint(best, training_checkpoint(0))
    damage(best, how)
    config = write_config(tmp_path, mini_root, tmp_path / "run")
    assert main(["infer", "--config", config, f"infer.checkpoint={best}", "infer.batch_size=96"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    problem = "an empty file (0 bytes)" if how == "empty" else "truncated or damaged"
    assert line.startswith(f"lnr-dist infer: error: {best}: checkpoint is {problem}")
    assert line.endswith("or set infer.checkpoint")
    # stage 2 and the cached features read the same file through load_model, naming their own key
    with pytest.raises(
        CheckpointError, match=f"checkpoint is {re.escape(problem)}.*or set stage2.checkpoint$"
    ):
        load_model(ModelConfig(arch="small_cnn"), 10, best, "stage2.checkpoint")


@pytest.mark.ray
@pytest.mark.slow
def test_training_resumes_from_the_previous_checkpoint_when_last_pt_is_damaged(
    mini_root, tmp_path, stage1_checkpoint, caplog
):
    from lnr_dist.train.trainer import fit

    # a copy of the session's 3-epoch stage-1 run: last.pt (epoch 2) damaged, last.prev.pt (epoch 1) complete
    shutil.copytree(stage1_checkpoint.parents[1], tmp_path / "stage1")
    checkpoints = tmp_path / "stage1" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.prev.pt")["epoch"] == 1
    damage(checkpoints / "last.pt", "truncated")

    cfg = mini_experiment(mini_root, tmp_path, stage1={"epochs": 4}).with_absolute_paths()
    with caplog.at_level(logging.WARNING, logger="lnr_dist"):
        results = fit(cfg, "stage1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        str(checkpoints / "last.pt") in w and "resuming from the previous complete checkpoint" in w
        and str(checkpoints / "last.prev.pt") in w and "(epoch 1 done)" in w for w in warnings
    ), warnings  # fmt: skip
    rows = (tmp_path / "stage1" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [0, 1, 2, 3]  # epoch 2 trained again, then 3
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 3
    assert load_checkpoint(checkpoints / "last.prev.pt")["epoch"] == 2
    best = load_checkpoint(checkpoints / "best.pt")
    assert results["best_epoch"] == best["epoch"] == best["best"]["epoch"]


def test_a_checkpoint_from_before_a_recipe_key_existed_resumes_when_the_key_is_at_its_default(
    tmp_path, mini_root
):
    from lnr_dist.core import config as config_lib
    from lnr_dist.core.errors import UserError
    from lnr_dist.train.trainer import _check_resumable

    cfg = mini_experiment(mini_root, tmp_path / "run")
    state = training_checkpoint(0)
    state["config"] = config_lib.to_dict(cfg)
    del (
        state["config"]["stage1"]["loss"],
        state["config"]["stage1"]["range_loss"],
    )  # an older version's recipe
    out = tmp_path / "run" / "stage1"
    save_checkpoint(out / "checkpoints" / "last.pt", state)
    _check_resumable(cfg, "stage1", out, None)  # read as the defaults that run used: resumed
    changed = mini_experiment(mini_root, tmp_path / "run", stage1={"loss": "bias_compensation"})
    with pytest.raises(UserError, match=r"another stage1 setup \(stage1.loss differ"):
        _check_resumable(changed, "stage1", out, None)
