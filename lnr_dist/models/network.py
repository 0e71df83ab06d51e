"""Networks, each split into `features` (image -> vector) and `classifier` (vector -> logits).

Stage 2 retrains the classifier (plus learnable weight scaling) on frozen features, so every network exposes
the split. No weights are downloaded: torchvision constructors are called with weights=None; the Places-LT
recipe loads an ImageNet-pretrained ResNet-152 from a local file named in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError

if TYPE_CHECKING:
    from torchvision.models.resnet import ResNet

# torchvision is imported where a ResNet is built, not here: importing it imports torch._dynamo (through
# torchvision.ops), about 1 s and 200 MiB in every Ray worker, and the small_cnn / resnet32 recipes never use it

Arch = Literal["small_cnn", "resnet32", "resnet10", "resnet50", "resnet152", "resnet152_places"]


@dataclass(frozen=True)
class ModelConfig:
    """`model:` section. `pretrained_path` is required by resnet152_places (a torchvision state dict file)."""

    arch: Arch = "small_cnn"
    pretrained_path: str | None = None

    def __post_init__(self) -> None:
        if self.arch == "resnet152_places" and not self.pretrained_path:
            raise ValueError(
                "arch resnet152_places needs model.pretrained_path (ImageNet ResNet-152 weights file)"
            )


class LearnableWeightScaling(nn.Module):
    """Per-class scale of the logits (LWS, Kang et al. 2020), used in stage 2; starts at 1."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.scales = nn.Parameter(torch.ones(num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scales


class Network(nn.Module):
    """features -> classifier -> optional LWS."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.scaling: nn.Module = nn.Identity()
        self.feature_dim = feature_dim
        self.features_frozen = False
        self.shift_bn = False
        # a tuple, not a submodule attribute: the block is registered once already, inside `features`
        self.trained_blocks: tuple[nn.Module, ...] = ()

    def freeze_features(self, shift_bn: bool = False, train_last_block: bool = False) -> None:
        """Stage 2: features stop learning (no gradients, no_grad forward). Their BatchNorm layers stay in eval
        mode, or with `shift_bn` follow train mode so that their statistics are re-estimated on stage 2's
        class-balanced stream (MiSLAS's shift learning). With `train_last_block`, the trunk's last block
        (`last_block()`) keeps learning, its BatchNorm in train mode (FixMatch fine-tuning's option)."""
        self.features_frozen, self.shift_bn = True, shift_bn
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.trained_blocks = (self.features.last_block(),) if train_last_block else ()
        for block in self.trained_blocks:
            for p in block.parameters():
                p.requires_grad_(True)

    def train(self, mode: bool = True) -> Network:
        super().train(mode)
        if self.features_frozen:
            self.features.train(mode and self.shift_bn)
            for block in self.trained_blocks:
                block.train(mode)
        return self

    def enable_weight_scaling(self) -> None:
        if isinstance(self.scaling, nn.Identity):
            self.scaling = LearnableWeightScaling(self.classifier.out_features).to(
                self.classifier.weight.device
            )

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.scaling(self.classifier(features))

    def forward(
        self, images: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> logits (B, C); with `return_features`, (logits, features (B, feature_dim)) in
        one pass, so that a loss on the features (range loss) trains through the DDP wrapper's forward."""
        # a trained last block needs the graph; frozen layers before it build none (nothing there requires grad)
        if self.features_frozen and not self.trained_blocks:
            with torch.no_grad():
                features = self.features(images)
        else:
            features = self.features(images)
        logits = self.head(features)
        return (logits, features) if return_features else logits


class SmallCNN(nn.Module):
    """Three conv blocks for the 32x32 mini set: 64-d features, trains in seconds on a CPU."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 2 * width):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            layers.append(nn.MaxPool2d(2))
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def last_block(self) -> nn.Module:
        """The third conv block (conv, BN, ReLU, pool)."""
        return nn.Sequential(*list(self.body)[8:12])


class _CifarBlock(nn.Module):
    """Basic block of the CIFAR ResNets (He et al. 2016, Sec. 4.2); option-A shortcut (zero-padded identity)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = F.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.extra // 2, self.extra // 2)
            )
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; n = 5 gives ResNet-32 (64-d features)."""

    def __init__(self, blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                stages.append(_CifarBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.out_dim = 64
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def last_block(self) -> nn.Module:
        """The last basic block of the last stage."""
        return self.stages[-1]


class TorchvisionTrunk(nn.Module):
    """A torchvision ResNet without its fc: image -> pooled feature vector."""

    def __init__(self, net: ResNet) -> None:
        super().__init__()
        self.net = net
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def last_block(self) -> nn.Module:
        """The last residual block of layer4."""
        return self.net.layer4[-1]


class PlacesTrunk(nn.Module):
    """The Places-LT recipe (OLTR/MiSLAS): a frozen ImageNet ResNet-152 to layer4, one extra trainable
    bottleneck block on top, then global pooling. The frozen part stays in eval mode (its BN statistics kept)."""

    def __init__(self, pretrained: ResNet) -> None:
        super().__init__()
        pretrained.fc = nn.Identity()
        pretrained.avgpool = nn.Identity()
        self.frozen = nn.Sequential(*(list(pretrained.children())[:-2]))
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        from torchvision.models.resnet import Bottleneck

        self.extra = Bottleneck(2048, 512, downsample=None)
        self.out_dim = 2048

    def train(self, mode: bool = True) -> PlacesTrunk:
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.frozen(x)
        return F.adaptive_avg_pool2d(self.extra(x), 1).flatten(1)

    def last_block(self) -> nn.Module:
        """The extra bottleneck block on top of the frozen ResNet-152."""
        return self.extra


def _load_pretrained_resnet152(path: str) -> ResNet:
    file = Path(path)
    if not file.is_file():
        raise UserError(
            f"model.pretrained_path: {path} not found (an ImageNet ResNet-152 torchvision state dict)"
        )
    from torchvision.models import resnet152

    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = resnet152(weights=None)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"model.pretrained_path: {path} is not a torchvision ResNet-152 state dict: {exc}"
        ) from exc
    return net


def build_model(cfg: ModelConfig, num_classes: int) -> Network:
    """The network of `cfg.arch` with a fresh `num_classes`-way classifier."""
    trunk: nn.Module
    if cfg.arch == "small_cnn":
        trunk = SmallCNN()
    elif cfg.arch == "resnet32":
        trunk = CifarResNet(5)
    elif cfg.arch in ("resnet10", "resnet50", "resnet152"):
        from torchvision.models import resnet50, resnet152
        from torchvision.models.resnet import BasicBlock, ResNet

        net = {"resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1]), "resnet50": lambda: resnet50(weights=None),
               "resnet152": lambda: resnet152(weights=None)}[cfg.arch]()  # fmt: skip
        trunk = TorchvisionTrunk(net)
    else:
        trunk = PlacesTrunk(_load_pretrained_resnet152(cfg.pretrained_path or ""))
    return Network(trunk, trunk.out_dim, num_classes)
