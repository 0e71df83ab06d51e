"""Metrics from mergeable sums, label-aware smoothing, mixup and the model zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lnr_dist.data.manifest import Manifest
from lnr_dist.models.losses import LabelAwareSmoothing, mixup, smoothing_per_class
from lnr_dist.models.network import ModelConfig, build_model
from lnr_dist.train.metrics import ECE_BINS, MetricSums, compute_metrics


def random_predictions(n=400, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(0, c, (n,), generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits, labels


def test_metrics_match_direct_computation():
    logits, labels = random_predictions()
    manifest = Manifest.from_labels(np.repeat(np.arange(6), [300, 150, 60, 30, 10, 5]), 6)
    sums = MetricSums.zeros(6)
    sums.update(logits, labels)
    m = compute_metrics(sums, manifest)
    probs = torch.softmax(logits.double(), 1)
    conf, pred = probs.max(1)
    hit = (pred == labels).double()
    per_class = np.array([hit[labels == k].mean().item() for k in range(6)])
    assert m["top1"] == pytest.approx(100 * hit.mean().item())
    assert m["balanced_acc"] == pytest.approx(100 * per_class.mean())
    assert m["many"] == pytest.approx(100 * per_class[[0, 1]].mean())
    assert m["medium"] == pytest.approx(100 * per_class[[2, 3]].mean())
    assert m["few"] == pytest.approx(100 * per_class[[4, 5]].mean())
    assert m["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits.double(), labels).item())
    edges = np.linspace(0, 1, ECE_BINS + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.double().mean().item() * abs(hit[inside].mean().item() - conf[inside].mean().item())
    assert m["ece"] == pytest.approx(100 * ece)


def test_sums_over_shards_equal_one_pass():
    logits, labels = random_predictions(n=301)
    manifest = Manifest.from_labels(np.repeat(np.arange(6), [300, 150, 60, 30, 10, 5]), 6)
    whole = MetricSums.zeros(6)
    whole.update(logits, labels)
    parts = [MetricSums.zeros(6) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(301), 3), strict=True):
        part.update(logits[rows], labels[rows])
    merged = parts[0].merged(parts[1]).merged(parts[2])
    a, b = compute_metrics(whole, manifest), compute_metrics(merged, manifest)
    for key in ("top1", "balanced_acc", "many", "medium", "few", "ece", "nll"):
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("profile", ["concave", "linear", "convex"])
def test_label_aware_smoothing_values_follow_the_formula(profile):
    counts = np.array([500, 200, 50, 5])
    eps = smoothing_per_class(counts, head=0.4, tail=0.1, profile=profile)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.1)
    x = (counts - 5) / 495
    expected = {
        "concave": 0.1 + 0.3 * np.sin(np.pi * x / 2),
        "linear": 0.1 + 0.3 * x,
        "convex": 0.1 + 0.3 * (1 - np.cos(np.pi * x / 2)),
    }[profile]
    np.testing.assert_allclose(eps, expected)


def test_label_aware_smoothing_loss():
    logits, labels = random_predictions(n=50, c=4)
    eps = np.array([0.3, 0.2, 0.1, 0.0])
    loss = LabelAwareSmoothing(eps)(logits, labels)
    log_p = torch.log_softmax(logits, 1)
    e = torch.tensor(eps, dtype=torch.float32)[labels]
    expected = ((1 - e) * -log_p[torch.arange(50), labels] + e * -log_p.mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_mixes_pairs():
    images = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, a, b, lam = mixup(images, labels, 1.0, np.random.default_rng(0))
    assert 0 < lam < 1
    perm = torch.as_tensor([int((labels == v).nonzero()) for v in b])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])


@pytest.mark.parametrize(
    ("arch", "size", "dim"), [("small_cnn", 32, 64), ("resnet32", 32, 64), ("resnet10", 64, 512)]
)
def test_models_split_into_features_and_classifier(arch, size, dim):
    model = build_model(ModelConfig(arch=arch), num_classes=7)
    features = model.features(torch.randn(2, 3, size, size))
    assert features.shape == (2, dim)
    assert model.head(features).shape == (2, 7)
    model.enable_weight_scaling()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_resnet32_has_the_published_size():
    params = sum(p.numel() for p in build_model(ModelConfig(arch="resnet32"), 10).parameters())
    assert 0.45e6 < params < 0.48e6  # He et al. 2016: 0.46M


def test_places_recipe_needs_weights_file(tmp_path):
    with pytest.raises(ValueError, match="pretrained_path"):
        ModelConfig(arch="resnet152_places")
    from lnr_dist.core.errors import UserError

    with pytest.raises(UserError, match="not found"):
        build_model(ModelConfig(arch="resnet152_places", pretrained_path=str(tmp_path / "nope.pth")), 365)
