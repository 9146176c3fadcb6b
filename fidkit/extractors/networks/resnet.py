"""ResNet-50 (He et al. 2016) returning its globally average-pooled 2048-d features.

The parameter names follow torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...), which is the layout of most published ResNet-50 files up to a
prefix: SwAV's (``module.`` + a projection head to drop), RadImageNet's PyTorch port (no prefix).
Each registry entry supplies its own key mapping to :func:`load_resnet50` and the architecture
flags its file was trained with:

* ``stride_in_1x1``: where a downsampling bottleneck strides. torchvision (and SwAV, trained with
  it) strides in the 3x3 convolution ("ResNet v1.5"); Keras/Caffe ResNet-50 (RadImageNet) strides
  in the first 1x1 convolution, as in the original paper.
* ``conv_bias``: Keras convolutions carry a bias; torchvision's do not (batch norm follows).
* ``bn_eps``: batch-norm epsilon, 1e-5 in torch, 1.001e-5 in Keras' ResNet-50.

The network takes input already resized and normalised by a convention and never resizes.
The classifier (``fc``) is not part of it: the features are the pooled ``layer4`` output.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fidkit.extractors.networks.torch_files import Rename, check_outputs, load_renamed

#: Every output the network can give: the global average of layer4, (N, 2048).
OUTPUTS: tuple[str, ...] = ("avgpool",)
#: Blocks per stage of ResNet-50.
RESNET50_LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions with batch norm, ReLU after each but the last, plus the
    shortcut (a strided 1x1 convolution + batch norm when the shape changes), then ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, project: bool, stride_in_1x1: bool,
                 conv_bias: bool, bn_eps: float) -> None:
        super().__init__()
        cout = width * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, stride=s1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=conv_bias),
                                         nn.BatchNorm2d(cout, eps=bn_eps)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = torch.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return torch.relu_(out)


class ResNet50(nn.Module):
    """ResNet-50 trunk returning ``{"avgpool": (N, 2048)}``: the mean over the spatial positions of
    the last stage, i.e. the input of the ImageNet classifier.

    ``forward(x)`` takes float32 ``(N, 3, H, W)`` (224x224 for the registered conventions; any size
    >= 32 works) and returns a dict of ``(N, 2048)`` float32 tensors. The module is pinned to eval
    mode (``train()`` is a no-op): the batch-norm statistics are part of the features' definition.
    """

    def __init__(self, *, layers: Iterable[int] = RESNET50_LAYERS, stride_in_1x1: bool = False,
                 conv_bias: bool = False, bn_eps: float = 1e-5,
                 outputs: Iterable[str] = ("avgpool",)) -> None:
        super().__init__()
        self.outputs = check_outputs(outputs, OUTPUTS, network="ResNet-50")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(64, eps=bn_eps)
        cin = 64
        for index, (blocks, width) in enumerate(zip(tuple(layers), (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, stride if b == 0 else 1, project=b == 0,
                                        stride_in_1x1=stride_in_1x1, conv_bias=conv_bias,
                                        bn_eps=bn_eps))
                cin = width * Bottleneck.expansion
            self.add_module(f"layer{index}", nn.Sequential(*stage))
        super().train(False)

    def train(self, mode: bool = True) -> "ResNet50":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Strides pick the convolution kernels (a channels-last view, e.g. an HWC image permuted,
        # runs others, 1e-5 apart): the peers feed contiguous NCHW, so the network does too.
        x = x.contiguous()  # N x 3 x 224 x 224
        x = torch.relu_(self.bn1(self.conv1(x)))  # N x 64 x 112 x 112
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 256 x 56 x 56
        x = self.layer2(x)  # N x 512 x 28 x 28
        x = self.layer3(x)  # N x 1024 x 14 x 14
        x = self.layer4(x)  # N x 2048 x 7 x 7
        # torchvision's AdaptiveAvgPool2d((1, 1)): the same reduction, so the same bits.
        return {"avgpool": F.adaptive_avg_pool2d(x, 1).flatten(1)}  # N x 2048


def load_resnet50(model: ResNet50, state: dict[str, torch.Tensor], rename: Rename, *,
                  source: str, fix: str) -> ResNet50:
    """Load a published ResNet-50 state dict into ``model`` through ``rename`` (file key ->
    torchvision key, None to drop). Raises WeightsError naming ``source`` and ``fix`` when the
    file is not a ResNet-50 of ``model``'s kind."""
    load_renamed(model, state, rename, source=source, network="ResNet-50", fix=fix)
    return model

