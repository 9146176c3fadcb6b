"""MedicalNet 3-D ResNets (Chen, Ma and Zheng 2019, "Med3D"; github.com/Tencent/MedicalNet).

The encoder of ``Tencent/MedicalNet`` ``models/resnet.py`` as its published weights
(``resnet_10_23dataset.pth``, ``resnet_50_23dataset.pth``) were trained:

* one input channel; ``conv1`` 7x7x7, stride 2, padding 3, no bias; batch norm; ReLU;
  max pool 3x3x3, stride 2, padding 1;
* four stages of basic blocks (ResNet-10: 1, 1, 1, 1) or bottlenecks (ResNet-50: 3, 4, 6, 3),
  64 / 128 / 256 / 512 planes, shortcut "B" (1x1x1 convolution without bias + batch norm where the
  shape changes; MedicalNet's README gives ``--resnet_shortcut B`` for both files);
* stage 2 strides by 2; stages 3 and 4 do **not** stride but dilate their 3x3x3 convolutions by
  2 and 4 (a segmentation backbone keeps resolution), as the perceptual network MONAI's
  ``MedicalNetPerceptualSimilarity`` loads (Project-MONAI/perceptual-models) also does.

``dilated=False`` gives instead what ``monai.networks.nets.resnet10/50(pretrained=True,
spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
feed_forward=False)`` runs with the same weights: stages 3 and 4 stride by 2 and do not dilate
(MONAI's ResNet has no dilation). The weights fit both; the features differ.

The features are the mean of the last stage over depth, height and width (MONAI's
``AdaptiveAvgPool3d(1)``): ``{"512": (N, 512)}`` for ResNet-10, ``{"2048": (N, 2048)}`` for
ResNet-50. State dict keys are MedicalNet's (``conv1.weight``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ...), which are also MONAI's; the published files wrap them as
``{"state_dict": {"module.<key>": tensor}}`` (the training script's ``nn.DataParallel``).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fidkit.errors import UsageError
from fidkit.extractors.networks.torch_files import load_renamed

#: depth -> (block kind, blocks per stage). Both published files use shortcut "B".
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
PLANES = (64, 128, 256, 512)


def feature_dim(depth: int) -> int:
    """Width of the pooled features of the MedicalNet ResNet of ``depth`` (512 or 2048)."""
    kind, _ = _spec(depth)
    return PLANES[-1] * (1 if kind == "basic" else 4)


def _spec(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    if depth not in DEPTHS:
        raise UsageError(f"MedicalNet ResNet depth {depth} is not supported; choose from "
                         f"{', '.join(map(str, DEPTHS))}")
    return DEPTHS[depth]


def _conv3(in_channels: int, out_channels: int, stride: int, dilation: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions (both dilated in a dilated stage) and a shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck3d(nn.Module):
    """1x1x1 -> 3x3x3 (strided or dilated) -> 1x1x1 (x4 planes) and a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MedicalNetResNet(nn.Module):
    """MedicalNet 3-D ResNet encoder with global average pooling.

    Input (N, 1, D, H, W) float32, intensity-normalised (see :mod:`fidkit.extractors.medicalnet`);
    output ``{str(dim): (N, dim) float32}``. Always in eval mode.
    """

    def __init__(self, depth: int = 10, *, dilated: bool = True, outputs: Iterable[str] | None = None) -> None:
        super().__init__()
        kind, blocks = _spec(depth)
        self.depth = depth
        self.dilated = dilated
        self.dim = feature_dim(depth)
        self.outputs = check_outputs(depth, (str(self.dim),) if outputs is None else outputs)
        block = BasicBlock3d if kind == "basic" else Bottleneck3d
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        channels = 64
        # (stride, dilation) per stage: MedicalNet keeps stages 3-4 at stage 2's resolution.
        schedule = ((1, 1), (2, 1), (1, 2), (1, 4)) if dilated else ((1, 1), (2, 1), (2, 1), (2, 1))
        for index, (planes, count, (stride, dilation)) in enumerate(zip(PLANES, blocks, schedule), start=1):
            out_channels = planes * block.expansion
            downsample = None
            if stride != 1 or channels != out_channels:
                downsample = nn.Sequential(nn.Conv3d(channels, out_channels, 1, stride=stride, bias=False),
                                           nn.BatchNorm3d(out_channels))
            layers = [block(channels, planes, stride, dilation, downsample)]
            channels = out_channels
            layers += [block(channels, planes, 1, dilation, None) for _ in range(1, count)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.eval()

    def train(self, mode: bool = True) -> "MedicalNetResNet":
        # A feature network: batch norm always uses the published running statistics.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # N x 1 x D x H x W
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x D/4 x H/4 x W/4
        x = self.layer1(x)  # N x 64e x D/4 x H/4 x W/4   (e = 1 basic, 4 bottleneck)
        x = self.layer2(x)  # N x 128e x D/8 x H/8 x W/8
        x = self.layer3(x)  # N x 256e x D/8 ... (dilated) or D/16 ... (MONAI strides)
        x = self.layer4(x)  # N x 512e x D/8 ... (dilated) or D/32 ...
        return {str(self.dim): x.mean(dim=(2, 3, 4))}  # N x 512e

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "the weights file") -> None:
        """Load MedicalNet encoder weights, with or without the files' ``module.`` prefix;
        raises WeightsError naming ``source`` when they are another network's."""
        load_renamed(self, state, strip_data_parallel, source=source,
                     network=f"MedicalNet ResNet-{self.depth}",
                     fix=f"use resnet_{self.depth}_23dataset.pth (TencentMedicalNet/MedicalNet-Resnet"
                         f"{self.depth} on Hugging Face)")


def strip_data_parallel(key: str) -> str:
    """A key of the published file -> the network's: without ``nn.DataParallel``'s ``module.``."""
    return key[len("module."):] if key.startswith("module.") else key


def check_outputs(depth: int, outputs: Iterable[str]) -> tuple[str, ...]:
    """``outputs`` as a tuple of tap names of the ResNet of ``depth``; UsageError otherwise."""
    tap = str(feature_dim(depth))
    result = tuple(str(o) for o in outputs)
    bad = [name for name in result if name != tap]
    if bad or not result:
        raise UsageError(f"MedicalNet ResNet-{depth} has one output, {tap!r}; got {', '.join(result) or 'none'}")
    return result
