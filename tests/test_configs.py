"""Every shipped config file loads and carries its published recipe, read back through `lnr-dist config` (the
command users and these tests read recipes from): a typo or a wrong value in configs/ fails here, not on the
cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lnr_dist.cli import main
from lnr_dist.core.config import load_config, load_section
from lnr_dist.data.config import DataConfig
from lnr_dist.experiment import ExperimentConfig

CONFIG_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "flips_example.yaml")

# stage 1 of MiSLAS (LNR's starting point): arch, epochs, batch, lr, weight decay, mixup alpha, schedule
# (schedule, unit, warm-up epochs, milestones)
CIFAR_STAGE1 = ("resnet32", 200, 128, 0.1, 2e-4, 1.0, ("step", "epoch", 5, [160, 180]))
COSINE = ("cosine", "epoch", 0, [])
# stage 2 of LNR: smooth head, smooth tail, shift_bn, lr_factor, lr, weight decay, epochs, batch size
RECIPES = {
    "cifar10_lt.yaml": (CIFAR_STAGE1, (0.3, 0.0, False, 0.5, 0.01, 5e-4, 100, 128), 7.5),
    "cifar10_lt_if50.yaml": (CIFAR_STAGE1, (0.2, 0.0, False, 0.2, 0.1, 2e-4, 10, 128), 7.5),
    "cifar10_lt_if10.yaml": (CIFAR_STAGE1, (0.1, 0.0, False, 0.2, 0.1, 2e-4, 10, 128), 7.5),
    "cifar100_lt.yaml": (CIFAR_STAGE1, (0.4, 0.1, True, 0.2, 0.003, 5e-4, 100, 128), 14.5),
    "cifar100_lt_if50.yaml": (CIFAR_STAGE1, (0.3, 0.0, True, 0.1, 0.1, 5e-4, 10, 128), 14.5),
    "cifar100_lt_if10.yaml": (CIFAR_STAGE1, (0.2, 0.0, True, 0.1, 0.1, 5e-4, 20, 128), 14.5),
    "imagenet_lt.yaml": (
        ("resnet50", 180, 256, 0.1, 5e-4, 0.2, COSINE),
        (0.3, 0.0, True, 0.05, 0.1, 5e-4, 50, 256),
        14.5,
    ),
    "places_lt.yaml": (
        ("resnet152_places", 90, 256, 0.1, 5e-4, 0.2, COSINE),
        (0.4, 0.1, True, 0.05, 0.1, 5e-4, 10, 256),
        14.5,
    ),
    "inat2018.yaml": (
        ("resnet50", 200, 256, 0.1, 1e-4, 0.2, COSINE),
        (0.4, 0.0, True, 0.05, 0.1, 1e-4, 30, 256),
        14.5,
    ),
}
IMBALANCE = {"cifar10_lt_if50.yaml": "if50", "cifar10_lt_if10.yaml": "if10", "cifar100_lt_if50.yaml": "if50",
             "cifar100_lt_if10.yaml": "if10"}  # fmt: skip


def resolved(capsys, *args: str) -> tuple[dict, str]:
    """`lnr-dist config ...`: the printed YAML as a dict, and the text."""
    assert main(["config", *args]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out), out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_data_section_loads(path):
    cfg = load_section(DataConfig, path, "data")
    assert cfg.num_classes >= 10


def test_every_dataset_config_has_a_recipe_row():
    assert set(RECIPES) == {p.name for p in CONFIGS} - {"mini.yaml"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_carries_the_published_recipe(capsys, name):
    stage1, stage2, threshold = RECIPES[name]
    cfg, _ = resolved(capsys, "--config", str(CONFIG_DIR / name))
    s1, s2, infer, tune = cfg["stage1"], cfg["stage2"], cfg["infer"], cfg["tune"]

    arch, epochs, batch, lr, wd, mixup, schedule = stage1
    assert (cfg["model"]["arch"], s1["epochs"], s1["batch_size"], s1["lr"], s1["weight_decay"]) == (
        arch, epochs, batch, pytest.approx(lr), pytest.approx(wd),
    )  # fmt: skip
    assert s1["mixup_alpha"] == mixup
    assert (s1["schedule"], s1["schedule_unit"], s1["warmup_epochs"], s1["milestones"]) == schedule
    assert s1["gamma"] == 0.1

    head, tail, shift_bn, lr_factor, lr2, wd2, epochs2, batch2 = stage2
    assert (s2["smooth_head"], s2["smooth_tail"], s2["shift_bn"]) == (head, tail, shift_bn)
    assert s2["lr_factor"] == lr_factor
    assert (s2["lr"], s2["weight_decay"], s2["epochs"], s2["batch_size"]) == (
        pytest.approx(lr2), pytest.approx(wd2), epochs2, batch2,
    )  # fmt: skip
    # stage 2 of the reference: a per-epoch cosine without warm-up, no mixup (ImageNet's mixup with alpha null
    # crashes there), LWS, class-balanced sampling, MiSLAS's LAS
    assert (s2["schedule"], s2["schedule_unit"], s2["warmup_epochs"]) == ("cosine", "epoch", 0)
    assert s2["mixup_alpha"] == 0
    assert (
        s2["lws"]
        and s2["sampler"] == "mean"
        and s2["method"] == "lnr"
        and s2["threshold"] == {"policy": "infer", "value": None}
    )

    assert infer["threshold"] == threshold == (7.5 if cfg["data"]["num_classes"] == 10 else 14.5)
    grid = tune["thresholds"]
    assert tune["search"] == "grid" and min(grid) < threshold < max(grid) and threshold in grid
    assert tune["search_min"] == min(grid) and tune["search_max"] == max(grid)
    assert infer["candidates_t_min"] is not None and infer["candidates_t_min"] <= min(grid)


@pytest.mark.parametrize("name", sorted(IMBALANCE))
def test_imbalance_variants_have_their_own_data_and_run_folder(capsys, name):
    cfg, _ = resolved(capsys, "--config", str(CONFIG_DIR / name))
    tag = IMBALANCE[name]
    for key in ("root", "train_split", "val_split", "test_split"):
        assert f"_lt_{tag}" in cfg["data"][key], key
    assert cfg["run_dir"].endswith(f"_lt_{tag}")
    assert cfg["reproduce"]["published"] is None  # the published numbers are for IF 100


def test_mini_keeps_its_recipe_and_covers_its_sweep(capsys):
    cfg, _ = resolved(capsys, "--config", str(CONFIG_DIR / "mini.yaml"))
    assert cfg["model"]["arch"] == "small_cnn" and cfg["infer"]["threshold"] == 2.0
    assert cfg["infer"]["candidates_t_min"] <= min(cfg["tune"]["thresholds"])
    assert (cfg["stage1"]["schedule"], cfg["stage1"]["schedule_unit"]) == ("cosine", "step")  # the default


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_printed_config_round_trips_as_a_config(capsys, tmp_path, path):
    """Every key, defaults filled in, same sections as the file: saved and used as --config it gives the same
    config; tuples come out as YAML lists."""
    data, text = resolved(capsys, "--config", str(path))
    original = load_config(ExperimentConfig, path)
    assert list(data) == [
        "data", "model", "run_dir", "seed", "tensorboard", "stage1", "infer", "stage2", "tune", "ray", "fault",
        "reproduce", "mining", "logging", "neighbours",
    ]  # fmt: skip
    assert "!!python" not in text and isinstance(data["tune"]["thresholds"], list)
    assert "warmup_epochs" in data["stage2"] and "dali_precheck" in data["data"]  # defaults are there
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    assert load_config(ExperimentConfig, saved) == original
    again, _ = resolved(capsys, "--config", str(saved))
    assert again == data


def test_overrides_apply_and_the_data_need_not_exist(capsys, tmp_path):
    """Resolving reads only the config: data paths that do not exist are printed, not opened or created."""
    absent = tmp_path / "absent"
    cfg, _ = resolved(
        capsys, "--config", str(CONFIG_DIR / "places_lt.yaml"), f"data.root={absent}",
        f"data.train_split={absent}/t.txt", f"model.pretrained_path={absent}/w.pth", "stage2.epochs=3",
    )  # fmt: skip
    assert cfg["data"]["root"] == str(absent) and cfg["model"]["pretrained_path"] == f"{absent}/w.pth"
    assert cfg["stage2"]["epochs"] == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stage1.nope=1"], "unknown key 'stage1.nope'"),
        (["stage1.milestones=[180, 160]"], "stage1: milestones must be strictly increasing"),
        (["stage1.epochs=100"], r"milestones must lie in \(warmup_epochs, epochs\] = \(5, 100\]"),
        (["infer.candidates_t_min=9"], r"candidates_t_min \(9.0\) must be <= threshold \(7.5\)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(["config", "--config", str(CONFIG_DIR / "cifar10_lt.yaml"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lnr-dist config: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]


def test_missing_config_file_is_one_line(capsys, tmp_path):
    assert main(["config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_sweep_epochs_shorter_than_the_stage2_step_schedule_is_a_config_error(tmp_path):
    from lnr_dist.core.config import ConfigError

    overrides = ["stage2.schedule=step", "stage2.epochs=20", "stage2.milestones=[10, 15]", "tune.epochs=12"]
    with pytest.raises(
        ConfigError, match=r"tune.epochs \(12\) is shorter than the last of stage2.milestones \(15\)"
    ):
        load_config(ExperimentConfig, "configs/mini.yaml", overrides)
    load_config(ExperimentConfig, "configs/mini.yaml", overrides[:-1] + ["tune.epochs=16"])
