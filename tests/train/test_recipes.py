"""The stage-1 recipe builds the configured loss (cross-entropy, bias compensation, + range loss), the loss
backbones configure it, and bad loss settings are one-line config errors (no Ray)."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.data.manifest import Manifest
from lnr_dist.experiment import ExperimentConfig, TrainConfig
from lnr_dist.models.losses import BiasCompensation, CrossEntropy, WithRangeLoss
from lnr_dist.stage2.registry import backbone_config
from lnr_dist.train.recipes import STAGE1_LOSSES, build_recipe

MINI = Path(__file__).resolve().parents[2] / "configs" / "mini.yaml"
LABELS = np.repeat(np.arange(10), [40, 30, 20, 12, 8, 6, 4, 3, 2, 1])


def mini(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, MINI, list(overrides))


def stage1_loss(cfg: ExperimentConfig) -> torch.nn.Module:
    return build_recipe(cfg, "stage1", Manifest.from_labels(LABELS, 10), LABELS).loss


def test_every_configurable_loss_has_a_factory():
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["loss"])) == set(STAGE1_LOSSES)


def test_the_stage1_recipe_builds_the_configured_loss():
    assert type(stage1_loss(mini())) is CrossEntropy
    loss = stage1_loss(mini("stage1.loss=bias_compensation"))
    assert isinstance(loss, BiasCompensation)
    counts = np.bincount(LABELS, minlength=10)
    np.testing.assert_allclose(loss.shift.numpy(), np.log(counts / counts.sum()) + np.log(10), rtol=1e-6)
    ranged = stage1_loss(mini("stage1.range_loss.enabled=true", "stage1.range_loss.beta=0.5",
                              "stage1.range_loss.k=3", "stage1.range_loss.intra=true"))  # fmt: skip
    assert isinstance(ranged, WithRangeLoss) and type(ranged.base) is CrossEntropy and ranged.beta == 0.5
    assert (ranged.range_loss.margin, ranged.range_loss.k, ranged.range_loss.intra) == (100.0, 3, True)


@pytest.mark.parametrize(
    "backbone, loss, ranged",
    [("ce", "ce", False), ("bias_compensation", "bias_compensation", False), ("range_loss", "ce", True)],
)
def test_each_loss_backbone_is_what_its_name_says_whatever_stage1_configures(backbone, loss, ranged):
    for configured in (mini(), mini("stage1.loss=bias_compensation", "stage1.range_loss.enabled=true")):
        stage1 = backbone_config(configured, backbone).stage1
        assert (stage1.loss, stage1.range_loss.enabled, stage1.mixup_alpha) == (loss, ranged, 0.0)
    cfg = backbone_config(mini("stage1.range_loss.margin=7"), backbone)
    assert cfg.stage1.range_loss.margin == 7.0  # the range-loss settings stay the configured ones
    assert Path(cfg.run_dir).name == backbone
    built = stage1_loss(cfg)
    assert isinstance(built, WithRangeLoss) == ranged
    assert isinstance(built.base if ranged else built, BiasCompensation) == (loss == "bias_compensation")


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage1.range_loss.beta=-0.1", "stage1.range_loss: need beta >= 0"),
        ("stage1.range_loss.margin=0", "stage1.range_loss: need beta >= 0, margin > 0"),
        ("stage1.range_loss.k=0", "stage1.range_loss: need .*k >= 1"),
        ("stage1.loss=focal", "key 'stage1.loss': expected one of 'ce', 'bias_compensation'"),
        ("stage2.loss=bias_compensation", "stage2: loss and range_loss are stage-1 settings"),
        ("stage2.range_loss.enabled=true", "stage2: loss and range_loss are stage-1 settings"),
    ],
)
def test_bad_loss_settings_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        mini(override)
    assert "\n" not in str(error.value)
