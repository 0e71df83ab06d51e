"""The CUDA paths of the trainer's engine (AMP, channels_last, GradScaler) on the real mini set; skipped without a
GPU (CI has none: run on a GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lnr_dist.core.dist import RankContext
from lnr_dist.data.loader import LoaderSpec, build_loader
from lnr_dist.data.manifest import Manifest
from lnr_dist.data.splits import load_split
from lnr_dist.experiment import TrainConfig
from lnr_dist.models.checkpoint import load_model, save_checkpoint
from lnr_dist.models.losses import CrossEntropy
from lnr_dist.models.network import ModelConfig, build_model
from lnr_dist.train.engine import build_lr_scheduler, collect_logits, evaluate, train_one_epoch
from lnr_dist.train.metrics import compute_metrics
from tests.conftest import mini_data_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("arch", ["small_cnn", "resnet32"])
def test_amp_channels_last_training_and_evaluation_on_cuda(mini_root, tmp_path, arch):
    torch.manual_seed(0)
    cfg = mini_data_config(mini_root, train_crop="padded")
    ctx, device = RankContext(0, 1, 0), torch.device("cuda")
    train = load_split(cfg.train_split, cfg.root, 10, "train")
    val = load_split(cfg.val_split, cfg.root, 10, "val")
    train_loader = build_loader(cfg, train, LoaderSpec.train(32, seed=0), ctx)
    val_loader = build_loader(cfg, val, LoaderSpec.evaluate(128), ctx)
    model = build_model(ModelConfig(arch=arch), 10).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    epochs = 8
    scheduler = build_lr_scheduler(optimizer, TrainConfig(epochs=epochs), len(train_loader))
    scaler = torch.amp.GradScaler("cuda")
    rng = np.random.default_rng(0)
    losses = []
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, CrossEntropy(), device, epoch,
                                mixup_alpha=0.2, rng=rng, amp=True, channels_last=True)  # fmt: skip
        losses.append(stats["train_loss"])
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses
    assert scaler.get_scale() > 0

    manifest = Manifest.from_labels(train.labels, 10)
    metrics = compute_metrics(evaluate(model, val_loader, device, 10, amp=True, channels_last=True), manifest)
    assert metrics["top1"] > 25.0  # chance is 10
    amp_logits, labels, _ = collect_logits(model, val_loader, device, amp=True, channels_last=True)
    fp32_logits, same_labels, _ = collect_logits(model, val_loader, device)
    assert amp_logits.dtype == torch.float32 and amp_logits.device.type == "cpu"
    assert torch.equal(labels, same_labels)
    scale = fp32_logits.abs().max().item()
    assert (amp_logits - fp32_logits).abs().max().item() < 0.02 * scale + 0.05  # fp16 autocast vs fp32
    assert (amp_logits.argmax(1) == fp32_logits.argmax(1)).float().mean() > 0.97

    # a checkpoint written from the GPU loads on the CPU with the same outputs (up to TF32: cuDNN's fp32
    # convolutions on Ampere and later round inputs to 10-bit mantissas by default, ~1e-3 relative)
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "config": {}})
    cpu_model = load_model(ModelConfig(arch=arch), 10, tmp_path / "best.pt").eval()
    cpu_logits, _, _ = collect_logits(cpu_model, val_loader, torch.device("cpu"))
    assert torch.allclose(cpu_logits, fp32_logits, atol=1e-2, rtol=1e-2)
