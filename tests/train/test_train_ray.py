"""Stage 1 on a real local Ray cluster with 2 CPU workers, on the mini set."""

from __future__ import annotations

import csv

import pytest
import ray
import torch
from PIL import Image

from lnr_dist.cli import main
from lnr_dist.core.dist import RankContext
from lnr_dist.core.layout import RunLayout
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.manifest import Manifest
from lnr_dist.models.checkpoint import load_checkpoint
from lnr_dist.models.network import build_model
from lnr_dist.train.engine import evaluate, lr_multiplier
from lnr_dist.train.metrics import compute_metrics
from lnr_dist.train.scalars import EPOCH_TAGS, EVENT_FILES
from lnr_dist.train.trainer import fit, load_splits

from ..conftest import mini_experiment, tensorboard_scalars

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(mini_root, tmp_path_factory, ray_session):
    cfg = mini_experiment(
        mini_root, tmp_path_factory.mktemp("run"), stage1={"epochs": 12}
    ).with_absolute_paths()
    return cfg, fit(cfg, "stage1")


def test_training_lowers_loss_beats_chance_and_writes_the_run_folder(trained):
    cfg, results = trained
    out = cfg.layout.stage("stage1")
    rows = read_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert results["test"]["top1"] > 25.0  # chance is 10% on the balanced test set
    assert results["test"]["num_samples"] == 250 and results["world_size"] == 2
    assert 0 <= results["best_epoch"] < 12
    assert results["val"]["balanced_acc"] == max(float(r["val_balanced_acc"]) for r in rows)
    for name in ("config.yaml", "results.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    with Image.open(out / "training_curves.png") as image:
        assert image.size[0] > 300 and len(set(image.convert("L").getdata())) > 10
    state = load_checkpoint(out / "checkpoints/last.pt")
    assert state["epoch"] == 11 and {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "torch_rng",
        "config",
    } <= set(state)


def test_tensorboard_has_every_epoch_of_metrics_csv_under_its_tag(trained):
    cfg, _ = trained
    out = cfg.layout.stage("stage1")
    scalars = tensorboard_scalars(RunLayout.tensorboard(out))
    assert {"train/loss", "train/acc", "train/lr", "train/images_per_second", "val/top1", "val/balanced_acc",
            "val/few", "val/ece", "val/nll"} <= set(scalars)  # fmt: skip
    rows = read_rows(out / "metrics.csv")
    # one point per epoch, equal to metrics.csv's (float32 in the event file)
    for column, tag in EPOCH_TAGS.items():
        expected = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column)]
        assert [s for s, _ in scalars.get(tag, [])] == [s for s, _ in expected], tag
        assert [v for _, v in scalars.get(tag, [])] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert len(list(RunLayout.tensorboard(out).glob(EVENT_FILES))) == 1  # rank 0 alone wrote


def test_two_worker_metrics_equal_one_process_on_the_same_model(trained):
    cfg, results = trained
    splits = load_splits(cfg)
    manifest = Manifest.from_labels(splits["train"].labels, 10)
    model = build_model(cfg.model, 10)
    model.load_state_dict(load_checkpoint(cfg.layout.stage("stage1") / "checkpoints/best.pt")["model"])
    loader = build_loader(cfg.data, splits["test"], LoaderSpec.evaluate(64), RankContext())
    single = compute_metrics(evaluate(model, loader, torch.device("cpu"), 10), manifest)
    for key in ("top1", "balanced_acc", "many", "medium", "few", "ece", "nll"):
        assert single[key] == pytest.approx(results["test"][key], rel=1e-6, abs=1e-6), key


def test_interrupted_run_resumes_with_its_optimizer_state(mini_root, tmp_path, ray_session):
    cfg = mini_experiment(
        mini_root, tmp_path, stage1={"epochs": 4}, ray={"max_failures": 0}, fault={"raise_at_epoch": 2}
    ).with_absolute_paths()
    with pytest.raises(Exception, match="injected fault"):
        fit(cfg, "stage1")
    out = cfg.layout.stage("stage1")
    before = load_checkpoint(out / "checkpoints/last.pt")
    first_rows = read_rows(out / "metrics.csv")
    assert before["epoch"] == 1 and len(first_rows) == 2
    assert any("momentum_buffer" in s for s in before["optimizer"]["state"].values())
    tensorboard = RunLayout.tensorboard(out)
    assert [s for s, _ in tensorboard_scalars(tensorboard)["val/balanced_acc"]] == [0, 1]

    results = fit(cfg, "stage1")  # the fault fires once; the same command picks up at epoch 2
    after = load_checkpoint(out / "checkpoints/last.pt")
    rows = read_rows(out / "metrics.csv")
    assert after["epoch"] == 3 and [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert rows[:2] == first_rows  # epochs 0-1 were not trained again
    # the resumed run wrote its own event file, with the epochs after the resumed one only; one point per epoch
    first_file, resumed_file = sorted(tensorboard.glob(EVENT_FILES))
    assert {s for points in tensorboard_scalars(resumed_file).values() for s, _ in points} == {2, 3}
    curve = tensorboard_scalars(tensorboard)["val/balanced_acc"]
    assert curve == [(int(r["epoch"]), pytest.approx(float(r["val_balanced_acc"]))) for r in rows]
    steps = before["scheduler"]["last_epoch"] // 2
    assert after["scheduler"]["last_epoch"] == 4 * steps  # the schedule continued, it did not restart
    factor = lr_multiplier(cfg.stage1, steps)  # the LR each epoch ended at, before and after the restart
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [cfg.stage1.lr * factor(steps * (e + 1)) for e in range(4)]
    )
    assert results["epochs"] == 4


def test_the_seed_decides_the_run(mini_root, tmp_path, ray_session):
    """Same seed, same training to the bit (initial weights, order, augmentation, mixup); another seed differs."""

    def weights(run: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = mini_experiment(mini_root, tmp_path / run, seed=seed, stage1={"epochs": 1, "warmup_epochs": 0})
        fit(cfg.with_absolute_paths(), "stage1")
        return load_checkpoint(tmp_path / run / "stage1" / "checkpoints" / "last.pt")["model"]

    first, again, other = weights("a", 0), weights("b", 0), weights("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_worker_that_raises_is_restarted_by_ray(mini_root, tmp_path, ray_session):
    cfg = mini_experiment(
        mini_root,
        tmp_path,
        stage1={"epochs": 3},
        ray={"max_failures": 1},
        fault={"raise_at_epoch": 1, "rank": 1},
    )
    results = fit(cfg, "stage1")
    out = cfg.with_absolute_paths().layout.stage("stage1")
    assert (out / ".fault_injected").exists()
    assert [int(r["epoch"]) for r in read_rows(out / "metrics.csv")] == [0, 1, 2]
    assert results["epochs"] == 3


def test_config_errors_stop_before_ray_starts(mini_root, tmp_path, capsys):
    if ray.is_initialized():
        ray.shutdown()
    config = tmp_path / "bad.yaml"
    base = (
        f"data:\n  root: {mini_root}\n  train_split: {mini_root / 'Mini_LT_train.txt'}\n"
        f"  val_split: {mini_root / 'Mini_LT_val.txt'}\n  test_split: {mini_root / 'Mini_LT_test.txt'}\n"
        f"  num_classes: 10\nrun_dir: {tmp_path / 'run'}\n"
    )
    config.write_text(base + "stage1:\n  mixup_alpha: null\n")
    assert main(["stage1", "--config", str(config)]) == 2
    assert "bad.yaml:9: key 'stage1.mixup_alpha': expected a number, got None" in capsys.readouterr().err
    config.write_text(base + "stage1:\n  epochs: 2\n")
    assert main(["stage1", "--config", str(config), "data.train_split=/nope/train.txt"]) == 2
    assert "/nope/train.txt: split file not found" in capsys.readouterr().err
    assert main(["stage1", "--config", str(config), "stage1.batch_size=33"]) == 2
    assert "must be divisible by ray.num_workers" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "run").exists()
