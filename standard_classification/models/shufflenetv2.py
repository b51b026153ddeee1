"""ShuffleNet V2 1x (Ma et al., ECCV 2018) for CIFAR: a 1x1 stem, stages of [3, 7, 3] basic
units after a stride-2 down-sampling unit, widths 116, 232, 464, and a 1024-channel 1x1 head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights
from .shufflenetv1 import channel_shuffle


class BasicUnit(nn.Module):
    """Channel split: half passes through, half goes 1x1 -> depthwise 3x3 -> 1x1; concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        kept, branch = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], dim=1), 2)


class DownUnit(nn.Module):
    """Both branches see the whole input at stride 2: (dw 3x3 -> 1x1) and (1x1 -> dw 3x3 -> 1x1)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """`forward(x, is_feat=True)` -> ([stem, stage1, stage2, stage3, head, pooled], logits)."""

    def __init__(self, widths=(116, 232, 464), blocks=(3, 7, 3), head: int = 1024, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for index, (channels, count) in enumerate(zip(widths, blocks), start=1):
            setattr(self, f"layer{index}", nn.Sequential(DownUnit(in_channels, channels), *(BasicUnit(channels) for _ in range(count))))
            in_channels = channels
        self.conv2 = nn.Conv2d(in_channels, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x: Tensor, is_feat: bool = False):
        feats = [F.relu(self.bn1(self.conv1(x)))]
        for stage in (self.layer1, self.layer2, self.layer3):
            feats.append(stage(feats[-1]))
        feats.append(F.relu(self.bn2(self.conv2(feats[-1]))))
        feats.append(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1))
        logits = self.linear(feats[-1])
        return (feats, logits) if is_feat else logits


def shufflev2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes)
