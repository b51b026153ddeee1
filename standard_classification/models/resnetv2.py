"""ResNet-50 for CIFAR (He et al., CVPR 2016): ImageNet bottleneck stages [3, 4, 6, 3] with a
3x3 stride-1 stem and no max-pool, as in the CRD/RepDistiller zoo's `ResNet50`."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights, projection


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = projection(in_planes, out_planes, stride) if stride != 1 or in_planes != out_planes else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetV2(nn.Module):
    """`forward(x, is_feat=True)` -> ([stem, stage1..4, pooled], logits)."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, (count, planes, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layers = []
            for block in range(count):
                layers.append(Bottleneck(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor, is_feat: bool = False):
        feats = [F.relu(self.bn1(self.conv1(x)))]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            feats.append(stage(feats[-1]))
        feats.append(F.adaptive_avg_pool2d(feats[-1], 1).flatten(1))
        logits = self.linear(feats[-1])
        return (feats, logits) if is_feat else logits


def resnet50(num_classes: int = 100) -> ResNetV2:
    return ResNetV2((3, 4, 6, 3), num_classes)
