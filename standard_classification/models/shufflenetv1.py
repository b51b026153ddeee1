"""ShuffleNet V1 (Zhang et al., CVPR 2018) with 3 groups for CIFAR: a 1x1 stem, stages of
[4, 8, 4] units with outputs 240, 480, 960, each starting with a stride-2 unit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across groups: [B, g*c, H, W] -> view [B, g, c] -> transpose."""
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1. A stride-2 unit concatenates an
    average-pooled shortcut (so its branch outputs out - in channels); a stride-1 unit adds it.
    Unlike the paper's Fig. 2, the depthwise convolution is followed by a ReLU, as in the CIFAR
    zoo whose students the published results use."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        mid = out_channels // 4
        # The first unit sees the 24-channel stem, too few channels to split into groups.
        first_groups = 1 if in_channels == 24 else groups
        self.stride, self.groups = stride, first_groups
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """`forward(x, is_feat=True)` -> ([stem, stage1, stage2, stage3, pooled], logits)."""

    def __init__(self, out_channels=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for index, (channels, count) in enumerate(zip(out_channels, blocks), start=1):
            units = [ShuffleUnit(in_channels, channels - in_channels, 2, groups)]
            units += [ShuffleUnit(channels, channels, 1, groups) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*units))
            in_channels = channels
        self.linear = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor, is_feat: bool = False):
        feats = [F.relu(self.bn1(self.conv1(x)))]
        for stage in (self.layer1, self.layer2, self.layer3):
            feats.append(stage(feats[-1]))
        feats.append(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1))
        logits = self.linear(feats[-1])
        return (feats, logits) if is_feat else logits


def shufflev1(num_classes: int = 100) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes)
