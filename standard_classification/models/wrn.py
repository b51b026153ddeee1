"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016): WRN-depth-k with pre-activation
basic blocks, (depth - 4) / 6 blocks per stage and widths 16k, 32k, 64k."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        # A projection shortcut sees the activated input, an identity shortcut the raw one.
        return out + (x if self.equal_in_out else self.convShortcut(activated))


class NetworkBlock(nn.Module):
    def __init__(self, blocks: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(PreActBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """`forward(x, is_feat=True)` -> ([stem, block1, block2, block3, pooled], logits)."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor, is_feat: bool = False):
        stem = self.conv1(x)
        f1 = self.block1(stem)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn1(f3)), 1).flatten(1)
        logits = self.fc(pooled)
        return ([stem, f1, f2, f3, pooled], logits) if is_feat else logits


def _factory(depth: int, widen_factor: int):
    def build(num_classes: int = 100) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes)

    build.__name__ = f"wrn_{depth}_{widen_factor}"
    return build


wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 = _factory(16, 1), _factory(16, 2), _factory(40, 1), _factory(40, 2)
