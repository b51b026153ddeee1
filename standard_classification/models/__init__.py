"""The CIFAR-100 model zoo of CRD/RepDistiller (Tian et al., ICLR 2020), written from the papers.

`model_dict[name](num_classes=100)` builds a model whose state dict has exactly the keys and
shapes of the public pretrained teachers (`{"model": state_dict}`), so they load with
`strict=True`. Every model returns logits [B, num_classes] from `model(x)` with x [B, 3, 32, 32],
and `(features, logits)` from `model(x, is_feat=True)`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .mobilenetv2 import mobilenetv2
from .resnet import resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44, resnet56, resnet110
from .resnetv2 import resnet50
from .shufflenetv1 import shufflev1
from .shufflenetv2 import shufflev2
from .vgg import vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

model_dict: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "resnet50": resnet50,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "MobileNetV2": mobilenetv2,
    "ShuffleV1": shufflev1,
    "ShuffleV2": shufflev2,
}


def build_model(name: str, num_classes: int = 100) -> nn.Module:
    """`model_dict[name](num_classes)`; an unknown name raises ValueError listing the zoo."""
    if name not in model_dict:
        raise ValueError(f"unknown model '{name}'; valid names: {', '.join(model_dict)}")
    return model_dict[name](num_classes=num_classes)
