"""VGG-16 (Simonyan & Zisserman 2015, configuration "D", no batch norm) up to its second fully
connected layer, as torch-fidelity uses it for precision and recall.

The parameter names follow torchvision's ``vgg16`` (``features.0.weight`` ... ``features.28``,
``classifier.0`` = fc1, ``classifier.3`` = fc2) so that torchvision's file loads as it is; the
ImageNet classifier ``classifier.6`` is not part of the network (torch-fidelity deletes it).

Outputs: ``fc2`` (the second fully connected layer, before its ReLU) and ``fc2_relu`` (after it),
both (N, 4096). The network takes input already resized and normalised by a convention
(224x224 for torch-fidelity's); like torchvision's it pools the last feature map to 7x7 with an
adaptive average pool, the identity at 224x224.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fidkit.extractors.networks.torch_files import Rename, check_outputs, load_renamed

#: Every output the network can give.
OUTPUTS: tuple[str, ...] = ("fc2", "fc2_relu")
#: Output channels of the 13 convolutions, "M" for a 2x2 max pool: VGG configuration "D".
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 to fc2. ``forward(x)`` takes float32 ``(N, 3, H, W)`` (H, W >= 32) and returns a
    dict of ``(N, 4096)`` float32 tensors for the names in ``outputs``."""

    def __init__(self, outputs: Iterable[str] = ("fc2_relu",)) -> None:
        super().__init__()
        self.outputs = check_outputs(outputs, OUTPUTS, network="VGG-16")
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = int(item)
        # Indices 0..30 as in torchvision, so the keys are features.<index>.weight/bias.
        self.features = nn.Sequential(*layers)
        # fc1, ReLU, Dropout (identity in eval), fc2: classifier.0 and classifier.3.
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True),
                                        nn.Dropout(), nn.Linear(4096, 4096))
        super().train(False)

    def train(self, mode: bool = True) -> "VGG16":
        return super().train(False)  # no dropout, ever: the features are deterministic

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Strides pick the convolution kernels (a channels-last view, e.g. an HWC image permuted,
        # runs others, 1e-5 apart): the peers feed contiguous NCHW, so the network does too.
        x = x.contiguous()  # N x 3 x 224 x 224
        x = self.features(x)  # N x 512 x 7 x 7
        x = F.adaptive_avg_pool2d(x, (7, 7)).flatten(1)  # N x 25088
        x = torch.relu_(self.classifier[0](x))  # N x 4096 (fc1 after ReLU)
        fc2 = self.classifier[3](x)  # N x 4096
        out: dict[str, torch.Tensor] = {}
        if "fc2" in self.outputs:
            out["fc2"] = fc2
        if "fc2_relu" in self.outputs:
            out["fc2_relu"] = F.relu(fc2)
        return out


def torchvision_vgg16_key(key: str) -> str | None:
    """The network's key of a key of torchvision's ``vgg16`` file (None for the ImageNet
    classifier ``classifier.6``, which the features do not use)."""
    return None if key.startswith("classifier.6.") else key


def load_vgg16(model: VGG16, state: dict[str, torch.Tensor], rename: Rename = torchvision_vgg16_key,
               *, source: str, fix: str) -> VGG16:
    """Load a VGG-16 state dict into ``model``. Raises WeightsError naming ``source`` and
    ``fix`` when the file is of another architecture."""
    load_renamed(model, state, rename, source=source, network="VGG-16", fix=fix)
    return model

