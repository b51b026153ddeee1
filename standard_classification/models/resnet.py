"""CIFAR ResNets (He et al., CVPR 2016, section 4.2) as in the CRD/RepDistiller zoo.

A 3x3 stem, three stages of basic blocks at strides 1, 2, 2 and global average pooling; depth is
6n + 2. `resnet8x4` / `resnet32x4` use four times the width (32, 64, 128, 256), so their first
stage also needs a projection shortcut.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 convolution + BN shortcut used where the block changes width or resolution."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection(in_planes, planes, stride) if stride != 1 or in_planes != planes else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """`forward(x)` -> logits [B, num_classes]; `forward(x, is_feat=True)` -> (features, logits)
    with features = [stem, stage1, stage2, stage3, pooled]."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for index, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layers = []
            for block in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor, is_feat: bool = False):
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = F.adaptive_avg_pool2d(f3, 1).flatten(1)
        logits = self.fc(pooled)
        return ([stem, f1, f2, f3, pooled], logits) if is_feat else logits


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit BN scale (the zoo's initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _factory(depth: int, widths: tuple[int, int, int, int]):
    def build(num_classes: int = 100) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes)

    build.__name__ = f"resnet{depth}"
    return build


NARROW, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
resnet8, resnet14, resnet20, resnet32 = (_factory(d, NARROW) for d in (8, 14, 20, 32))
resnet44, resnet56, resnet110 = (_factory(d, NARROW) for d in (44, 56, 110))
resnet8x4, resnet32x4 = _factory(8, WIDE), _factory(32, WIDE)
