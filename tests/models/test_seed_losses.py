"""The bias-compensation loss and the range loss against hand computations, the epoch hook and the engine's
feature path (no Ray)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lnr_dist.models.losses import (
    BiasCompensation,
    EpochScheduled,
    FeatureLoss,
    RangeLoss,
    WithRangeLoss,
    set_loss_epoch,
)
from lnr_dist.models.network import ModelConfig, build_model

COUNTS = [6, 3, 1]
LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 0.2]]
TARGETS = [0, 1, 2]


def cross_entropy(rows: list[list[float]], targets: list[int]) -> float:
    """Mean of -z_y + log sum_c exp z_c, by the formula."""
    return sum(
        -z[y] + math.log(sum(math.exp(v) for v in z)) for z, y in zip(rows, targets, strict=True)
    ) / len(rows)


def shifted(shift: list[float]) -> list[list[float]]:
    return [[z + s for z, s in zip(row, shift, strict=True)] for row in LOGITS]


def bias_loss(epoch: int, epochs: int, target_prior=None) -> float:
    loss = BiasCompensation(np.array(COUNTS), target_prior)
    loss.set_epoch(epoch, epochs)
    return loss(torch.tensor(LOGITS), torch.tensor(TARGETS)).item()


def test_bias_compensation_is_the_blend_of_adjusted_and_plain_cross_entropy():
    total = sum(COUNTS)
    # uniform target: z_c + log(n_c / N) - log(1 / 3)
    adjusted = cross_entropy(shifted([math.log(n / total) - math.log(1 / 3) for n in COUNTS]), TARGETS)
    plain = cross_entropy(LOGITS, TARGETS)
    a = (2 / 5) ** 2
    assert bias_loss(2, 5) == pytest.approx((1 - a) * adjusted + a * plain, rel=1e-6)
    # the uniform target's log(1/3) is a constant shift: the loss is Menon et al.'s logit-adjusted loss
    menon = cross_entropy(shifted([math.log(n / total) for n in COUNTS]), TARGETS)
    assert bias_loss(0, 5) == pytest.approx(menon, rel=1e-6)
    assert abs(adjusted - plain) > 0.1  # the two parts differ, so the blend is tested


def test_the_schedule_starts_adjusted_and_ends_nearly_plain():
    total = sum(COUNTS)
    adjusted = cross_entropy(shifted([math.log(n / total) for n in COUNTS]), TARGETS)
    plain = cross_entropy(LOGITS, TARGETS)
    assert bias_loss(0, 10) == pytest.approx(adjusted, rel=1e-6)
    last = bias_loss(9, 10)  # a = 0.81
    assert abs(last - plain) == pytest.approx(0.19 * abs(adjusted - plain), rel=1e-5)
    weights = []
    loss = BiasCompensation(np.array(COUNTS))
    for epoch in range(10):
        loss.set_epoch(epoch, 10)
        weights.append(loss.plain_weight)
    assert weights == pytest.approx([(e / 10) ** 2 for e in range(10)])


def test_a_target_prior_equal_to_the_training_prior_gives_plain_cross_entropy():
    assert bias_loss(0, 4, np.array(COUNTS) * 7.0) == pytest.approx(cross_entropy(LOGITS, TARGETS), rel=1e-6)


def test_bias_compensation_refuses_empty_classes_bad_priors_and_epochs_out_of_range():
    with pytest.raises(ValueError, match="every class with training images"):
        BiasCompensation(np.array([5, 0, 1]))
    with pytest.raises(ValueError, match="target_prior must hold 3 positive values"):
        BiasCompensation(np.array(COUNTS), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"epoch must lie in \[0, epochs\)"):
        BiasCompensation(np.array(COUNTS)).set_epoch(5, 5)


def test_set_loss_epoch_reaches_a_wrapped_loss_and_skips_others():
    inner = BiasCompensation(np.array(COUNTS))
    wrapped = WithRangeLoss(inner, RangeLoss(1.0, 2, False), 0.1)
    set_loss_epoch(wrapped, 3, 4)
    assert (inner.epoch, inner.epochs, inner.plain_weight) == (3, 4, 0.5625)
    set_loss_epoch(nn.CrossEntropyLoss(), 3, 4)  # no EpochScheduled part: nothing to do, no error


# a batch of 2-d features: class 0 three points, class 1 two, class 2 one
POINTS = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0), (10.0, 0.0), (10.0, 2.0), (20.0, 20.0)]
CLASSES = [0, 0, 0, 1, 1, 2]


def squared(p, q) -> float:
    return sum((a - b) ** 2 for a, b in zip(p, q, strict=True))


def hand_centres() -> dict[int, tuple[float, float]]:
    centres = {}
    for c in sorted(set(CLASSES)):
        members = [p for p, y in zip(POINTS, CLASSES, strict=True) if y == c]
        centres[c] = tuple(sum(v) / len(members) for v in zip(*members, strict=True))
    return centres


def hand_intra(k: int) -> float:
    total = 0.0
    for c in sorted(set(CLASSES)):
        members = [p for p, y in zip(POINTS, CLASSES, strict=True) if y == c]
        distances = sorted((squared(p, q) for p, q in itertools.combinations(members, 2)), reverse=True)[:k]
        if distances:
            total += len(distances) / sum(1 / d for d in distances)
    return total


def range_loss(margin: float, k: int = 2, intra: bool = False) -> float:
    return RangeLoss(margin, k, intra)(torch.tensor(POINTS), torch.tensor(CLASSES)).item()


def test_the_inter_term_is_the_margin_minus_the_closest_centres():
    closest = min(squared(p, q) for p, q in itertools.combinations(hand_centres().values(), 2))
    assert closest == pytest.approx(81 + 1 / 9)  # centres (1, 4/3) and (10, 1)
    assert range_loss(100.0) == pytest.approx(100.0 - closest, rel=1e-6)
    assert range_loss(closest - 1.0) == 0.0  # centres farther apart than the margin: no inter term


def test_the_intra_term_is_the_harmonic_mean_of_the_k_largest_distances():
    # class 0: distances 9, 16, 25 -> k=2: 2 / (1/25 + 1/16); class 1: one pair, 4 -> 4; class 2 alone: none
    assert hand_intra(2) == pytest.approx(2 / (1 / 25 + 1 / 16) + 4.0)
    assert range_loss(1.0, k=2, intra=True) == pytest.approx(hand_intra(2), rel=1e-6)
    assert range_loss(1.0, k=1, intra=True) == pytest.approx(25.0 + 4.0, rel=1e-6)
    assert range_loss(1.0, k=5, intra=True) == pytest.approx(3 / (1 / 9 + 1 / 16 + 1 / 25) + 4.0, rel=1e-6)


def test_one_class_and_identical_features_give_finite_values_and_gradients():
    features = torch.ones(3, 4, requires_grad=True)
    value = RangeLoss(100.0, 2, True)(features, torch.zeros(3, dtype=torch.int64))
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-9)  # no second centre, zero spread
    assert torch.isfinite(features.grad).all()


def test_with_range_loss_adds_beta_times_the_range_term():
    logits, targets = torch.tensor(LOGITS * 2), torch.tensor(CLASSES)
    loss = WithRangeLoss(BiasCompensation(np.array(COUNTS)), RangeLoss(100.0, 2, True), 0.01)
    expected = BiasCompensation(np.array(COUNTS))(logits, targets).item() + 0.01 * (
        range_loss(100.0, 2, True)
    )
    assert loss(logits, targets, torch.tensor(POINTS)).item() == pytest.approx(expected, rel=1e-6)


def test_the_network_returns_its_features_in_the_same_pass():
    torch.manual_seed(0)
    model = build_model(ModelConfig(), num_classes=5).eval()
    images = torch.randn(2, 3, 32, 32)
    logits, features = model(images, return_features=True)
    torch.testing.assert_close(features, model.features(images))
    torch.testing.assert_close(logits, model(images))


class Recording(FeatureLoss):
    """Cross-entropy that records the targets and feature shapes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[int], tuple[int, ...]]] = []

    def forward(self, logits, target, features):
        self.calls.append((target.tolist(), tuple(features.shape)))
        return nn.functional.cross_entropy(logits.float(), target)


class ScheduledCE(EpochScheduled):
    def forward(self, logits, target):
        return nn.functional.cross_entropy(logits.float(), target)


@pytest.mark.parametrize("mixup_alpha", [0.0, 0.4])
def test_the_engine_hands_a_feature_loss_the_features_and_both_mixup_targets(mixup_alpha):
    from lnr_dist.data.loader import Batch
    from lnr_dist.train.engine import train_one_epoch

    torch.manual_seed(0)
    model = build_model(ModelConfig(), num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    loader = [Batch(torch.randn(4, 3, 32, 32), labels, torch.arange(4))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = Recording()
    train_one_epoch(model, loader, optimizer, scheduler, scaler, loss, torch.device("cpu"), 0,
                    mixup_alpha=mixup_alpha, rng=np.random.default_rng(0))  # fmt: skip
    assert [shape for _, shape in loss.calls] == [(4, model.feature_dim)] * (2 if mixup_alpha else 1)
    assert loss.calls[0][0] == labels.tolist()
    if mixup_alpha:
        assert sorted(loss.calls[1][0]) == sorted(labels.tolist())  # the permuted partners


def test_the_cached_features_head_tells_its_loss_each_epoch():
    from lnr_dist.data.manifest import Manifest
    from lnr_dist.experiment import Stage2Config
    from lnr_dist.features.heads import train_head
    from lnr_dist.stage2.registry import Stage2Method

    seen: list[tuple[int, int]] = []

    class Watched(ScheduledCE):
        def set_epoch(self, epoch, epochs):
            super().set_epoch(epoch, epochs)
            seen.append((epoch, epochs))

    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 3, 12) for s in ("train", "val")}
    features = {s: rng.standard_normal((12, 4)).astype(np.float32) for s in ("train", "val")}
    method = Stage2Method("watched_xyz", "test", loss=lambda s2, m: Watched(), sampler="random")
    s2 = Stage2Config(epochs=3, batch_size=4, lr=0.01)
    classifier = {"classifier.weight": torch.zeros(3, 4), "classifier.bias": torch.zeros(3)}
    manifest = Manifest.from_labels(labels["train"], 3)
    train_head(s2, method, 3, manifest, features, labels, classifier, None, 0, "top1")
    assert seen == [(0, 3), (1, 3), (2, 3)]
