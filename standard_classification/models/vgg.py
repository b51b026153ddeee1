"""VGG with batch normalisation for CIFAR (Simonyan & Zisserman, ICLR 2015; Ioffe & Szegedy 2015).

Five blocks of 3x3 conv (with bias) + BN + ReLU; max-pooling after the first three blocks, the
fourth and fifth both run at 4x4 on 32x32 inputs (the zoo pools after block 3 only for 64x64
inputs), then global average pooling and one linear classifier. Each block's last ReLU is applied
in `forward`, so `is_feat` features are pre-activation. vgg8 is the zoo's one-conv-per-block variant.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet import init_weights

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def conv_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """`forward(x, is_feat=True)` -> ([block0..block4 outputs (pre-ReLU), pooled], logits)."""

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int = 100):
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            setattr(self, f"block{index}", conv_block(in_channels, widths))
            in_channels = widths[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, is_feat: bool = False):
        feats = []
        for index in range(5):
            x = getattr(self, f"block{index}")(x)
            feats.append(x)
            x = F.relu(x)
            if index < 3 or (index == 3 and x.shape[-1] > 4):
                x = F.max_pool2d(x, 2)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        feats.append(pooled)
        logits = self.classifier(pooled)
        return (feats, logits) if is_feat else logits


def _factory(name: str):
    def build(num_classes: int = 100) -> VGG:
        return VGG(CONFIGS[name], num_classes)

    build.__name__ = name
    return build


vgg8, vgg11, vgg13, vgg16, vgg19 = (_factory(name) for name in CONFIGS)
