"""MobileNetV2 (Sandler et al., CVPR 2018) at width 0.5 with expansion 6, the zoo's CIFAR variant:
a stride-2 stem, the second stage at stride 1 (ImageNet: 2), and a 1280-channel head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity shortcut when shapes allow.
    The expansion convolution is kept even at expansion 1 (the zoo's layout)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """`forward(x, is_feat=True)` -> ([stem, stage outputs 1, 2, 4, 6, head, pooled], logits)."""

    # (expansion, channels at width 1, blocks, stride of the first block)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expansion: int = 6, last_channel: int = 1280):
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, in_channels, 3, stride=2)
        stages = []
        for t, channels, blocks, stride in self.SETTINGS:
            out_channels = int(channels * width_mult)
            t = expansion if t != 1 else 1
            stage = []
            for block in range(blocks):
                stage.append(InvertedResidual(in_channels, out_channels, stride if block == 0 else 1, t))
                in_channels = out_channels
            stages.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*stages)
        self.conv2 = conv_bn_relu(in_channels, last_channel, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        init_weights(self)

    def forward(self, x: Tensor, is_feat: bool = False):
        x = self.conv1(x)
        feats = [x]
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in (1, 2, 4, 6):
                feats.append(x)
        x = self.conv2(x)
        feats.append(x)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        feats.append(pooled)
        logits = self.classifier(pooled)
        return (feats, logits) if is_feat else logits


def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(num_classes)
