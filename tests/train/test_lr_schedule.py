"""The LR schedule of both trainers (lnr_dist.train.engine.lr_multiplier) against the reference rules, its checks, and
its state across a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lnr_dist.core.config import ConfigError, load_config
from lnr_dist.experiment import Stage2Config, TrainConfig
from lnr_dist.models.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from lnr_dist.train.engine import build_lr_scheduler, lr_multiplier

CIFAR_STAGE1 = TrainConfig(
    epochs=200, warmup_epochs=5, schedule="step", milestones=(160, 180), gamma=0.1, schedule_unit="epoch"
)


def mislas_cifar_stage1(epoch: int) -> float:
    """MiSLAS train_stage1.py adjust_learning_rate with cos: False, over lr, for the 0-based `epoch`."""
    k = epoch + 1
    if k <= 5:
        return k / 5
    if k > 180:
        return 0.01
    if k > 160:
        return 0.1
    return 1.0


@pytest.mark.parametrize("steps_per_epoch", [1, 7])
def test_cifar_step_schedule_per_epoch_is_the_reference_rule(steps_per_epoch):
    factor = lr_multiplier(CIFAR_STAGE1, steps_per_epoch)
    for epoch in range(200):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert factor(step) == pytest.approx(mislas_cifar_stage1(epoch), rel=1e-12), (epoch, step)
    # spot values: warm-up 1/5 .. 5/5, then 1 through epoch 160, x0.1 from 161, x0.01 from 181 (1-based)
    assert [factor(e * steps_per_epoch) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == pytest.approx(
        [0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_cosine_per_epoch_is_the_stage2_reference_rule():
    """MiSLAS train_stage2.py / LNR train_stage2_lnr.py: lr * 0.5 * (1 + cos(pi * epoch / num_epochs)), held
    for the epoch."""
    cfg = Stage2Config(epochs=10, schedule_unit="epoch")
    factor = lr_multiplier(cfg, 5)
    for epoch in range(10):
        expected = 0.5 * (1 + math.cos(math.pi * epoch / 10))
        assert [factor(epoch * 5 + i) for i in range(5)] == pytest.approx([expected] * 5, rel=1e-12)
    assert factor(0) == 1.0 and factor(9 * 5) > 0.02


def test_cosine_per_epoch_after_warmup():
    factor = lr_multiplier(TrainConfig(epochs=12, warmup_epochs=2, schedule_unit="epoch"), 3)
    assert [factor(3 * e) for e in range(3)] == pytest.approx([0.5, 1.0, 1.0])
    assert factor(3 * 7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))


def test_per_step_default_is_the_former_cosine_with_warmup():
    """The default (cosine per optimizer step, linear warm-up per step) is what the trainer did before."""
    steps, epochs, warmup = 9, 6, 1
    factor = lr_multiplier(TrainConfig(epochs=epochs, warmup_epochs=warmup), steps)
    total, warm = steps * epochs, steps * warmup
    for step in range(total + 1):
        if step < warm:
            expected = (step + 1) / warm
        else:
            expected = 0.5 * (1.0 + math.cos(math.pi * min((step - warm) / max(1, total - warm), 1.0)))
        assert factor(step) == expected, step
    assert len({factor(s) for s in range(warm, 2 * warm)}) == steps  # changes every step, not every epoch


def test_step_schedule_per_step_drops_at_the_milestone_epoch_boundary():
    cfg = TrainConfig(epochs=6, warmup_epochs=1, schedule="step", milestones=(3, 5), gamma=0.5)
    factor = lr_multiplier(cfg, 4)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up per step
    assert factor(3 * 4 - 1) == 1.0 and factor(3 * 4) == 0.5
    assert factor(5 * 4 - 1) == 0.5 and factor(5 * 4) == 0.25


def test_every_parameter_group_follows_the_multiplier():
    """Stage 2: classifier at lr_factor x lr, LWS at lr, both scaled by the same multiplier (as in MiSLAS)."""
    s2 = Stage2Config(lr=0.1, lr_factor=0.05, epochs=4, schedule_unit="epoch")
    classifier, lws = nn.Linear(3, 2), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD(
        [{"params": classifier.parameters(), "lr": s2.lr * s2.lr_factor}, {"params": [lws], "lr": s2.lr}],
        lr=s2.lr,
    )
    scheduler = build_lr_scheduler(optimizer, s2, steps_per_epoch=2)
    for step in range(8):
        factor = 0.5 * (1 + math.cos(math.pi * (step // 2) / 4))
        assert scheduler.get_last_lr() == pytest.approx([0.005 * factor, 0.1 * factor])
        optimizer.step()
        scheduler.step()


def _run(cfg: TrainConfig, steps_per_epoch: int, steps: range, state=None, path=None) -> list[float]:
    """Train a tiny model for `steps` optimizer steps (from a checkpoint `state` when given) and return the LR
    of each step; with `path`, checkpoint after the last step as the trainer does."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = build_lr_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    if state is not None:
        restore_training_state(state, model, optimizer, scheduler, scaler)
    lrs = []
    for _ in steps:
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = model(torch.ones(2, 4)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    if path is not None:
        save_checkpoint(path, training_state(model, optimizer, scheduler, scaler, 0, {}, {}))
    return lrs


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(epochs=8, warmup_epochs=2, schedule="step", milestones=(4, 6), schedule_unit="epoch"),
        TrainConfig(epochs=8, warmup_epochs=1),
    ],
    ids=["step-per-epoch", "cosine-per-step"],
)
def test_resuming_mid_run_continues_the_same_lr(tmp_path, cfg):
    steps_per_epoch, total, stop = 3, 24, 11  # stop inside epoch 3, before a milestone and a boundary
    uninterrupted = _run(cfg, steps_per_epoch, range(total))
    first = _run(cfg, steps_per_epoch, range(stop), path=tmp_path / "last.pt")
    rest = _run(cfg, steps_per_epoch, range(stop, total), state=load_checkpoint(tmp_path / "last.pt"))
    assert first + rest == uninterrupted
    assert len(set(uninterrupted)) > 3  # the schedule moved across the checkpoint


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage1.schedule=step"], "schedule: step needs milestones"),
        (["stage1.schedule=step", "stage1.milestones=[6, 4]"], "milestones must be strictly increasing"),
        (
            ["stage1.schedule=step", "stage1.milestones=[4, 12]"],
            r"must lie in \(warmup_epochs, epochs\] = \(2, 10\]",
        ),
        (["stage1.schedule=step", "stage1.milestones=[2, 8]"], r"must lie in \(warmup_epochs, epochs\]"),
        (["stage1.milestones=[4]"], "milestones apply to schedule: step only"),
        (["stage1.gamma=0"], r"gamma must be in \(0, 1\]"),
        (["stage2.gamma=1.5"], r"stage2: gamma must be in \(0, 1\]"),
        (["stage1.schedule=linear"], "expected one of 'cosine', 'step'"),
        (["stage1.schedule_unit=batch"], "expected one of 'epoch', 'step'"),
    ],
)
def test_bad_schedules_are_config_errors_naming_the_key(tmp_path, overrides, message):
    from lnr_dist.experiment import ExperimentConfig

    path = tmp_path / "c.yaml"
    path.write_text(
        "data: {root: r, train_split: a, val_split: b, test_split: c, num_classes: 10}\n"
        "stage1:\n  epochs: 10\n  warmup_epochs: 2\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_config(ExperimentConfig, path, overrides)


def test_steps_per_epoch_must_be_positive():
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        lr_multiplier(TrainConfig(), 0)
