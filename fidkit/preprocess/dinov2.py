"""The DINOv2 extractors' named preprocessing conventions: how an image becomes the 224x224
ImageNet-normalised input of the FD-DINOv2 tools.

| name             | resize to 224x224                                         | then                          | reproduces |
|------------------|-----------------------------------------------------------|-------------------------------|------------|
| `dgm-eval`       | PIL bicubic on the 8-bit RGB image (uint8 out)            | x / 255, (x - mean) / std     | dgm-eval (default), EDM2 `resize_mode="pil"` |
| `edm2`           | torch bicubic, antialias, on float 0..255, not clipped    | x / 255, (x - mean) / std     | EDM2 `calculate_metrics.py` default (`resize_mode="torch"`) |
| `torch-fidelity` | TF1 bilinear (no half-pixel offset) on float 0..255       | (x - 255 mean) / (255 std)    | torch-fidelity 0.4.0 `dinov2-vit-*-14` |

mean = (0.485, 0.456, 0.406), std = (0.229, 0.224, 0.225), as float32 (the constants each tool
builds: float64 values cast to float32; torch-fidelity multiplies by 255 in float64 first).
The images are stretched to a square, never cropped: all three tools do so. A convention's
``prepare`` takes float32 (N, 3, H, W) on the 0..255 scale on any device and returns float32
(N, 3, 224, 224).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fidkit.extractors.base import Convention
from fidkit.preprocess.inception import resize_tf1_bilinear
from fidkit.preprocess.resize import resize_pil_uint8

#: The FD-DINOv2 input size (all three tools resize to it).
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CONVENTION = "dgm-eval"


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """dgm-eval (``ToTensor`` then ``Normalize``) and EDM2: float32 x / 255, minus mean, over std,
    each step rounded to float32 in that order."""
    x = x / 255
    return (x - _constant(IMAGENET_MEAN, x)) / _constant(IMAGENET_STD, x)


def _prepare_dgm_eval(x: torch.Tensor) -> torch.Tensor:
    # dgm-eval: torchvision Resize((224, 224), BICUBIC) on the PIL image, which is PIL's own
    # 8-bit resize (the result is uint8 again); EDM2's resize_mode="pil" does the same resize.
    return _imagenet_normalise(resize_pil_uint8(x, (INPUT_SIZE, INPUT_SIZE), "bicubic"))


def _prepare_edm2(x: torch.Tensor) -> torch.Tensor:
    # EDM2's default: torch bicubic with antialias on the float32 image, no clipping, always
    # called (at 224x224 it is the identity).
    x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    return _imagenet_normalise(x)


def _prepare_torch_fidelity(x: torch.Tensor) -> torch.Tensor:
    # torch-fidelity 0.4.0 FeatureExtractorDinoV2.forward: its TF1-compatible bilinear resize
    # (align_corners=False) on the float image, then torchvision normalize with mean and std
    # scaled by 255 (in float64, then cast to float32).
    x = resize_tf1_bilinear(x.float(), (INPUT_SIZE, INPUT_SIZE))
    mean = tuple(255 * m for m in IMAGENET_MEAN)
    std = tuple(255 * s for s in IMAGENET_STD)
    return (x - _constant(mean, x)) / _constant(std, x)


CONVENTIONS: dict[str, Convention] = {
    c.name: c for c in (
        Convention(
            name="dgm-eval",
            reproduces="dgm-eval (layer6ai-labs, default, no --clean_resize); EDM2 resize_mode='pil'",
            description="PIL bicubic resize of the 8-bit image to 224x224 (uint8 result), "
                        "x / 255, ImageNet mean/std",
            prepare=_prepare_dgm_eval,
            batched_on_device=False,
        ),
        Convention(
            name="edm2",
            reproduces="EDM2 calculate_metrics.py (NVlabs/edm2) default resize_mode='torch'",
            description="torch bicubic resize with antialias to 224x224 on float 0..255 (not "
                        "clipped), x / 255, ImageNet mean/std",
            prepare=_prepare_edm2,
        ),
        Convention(
            name="torch-fidelity",
            reproduces="torch-fidelity 0.4.0 (feature_extractor_dinov2.py)",
            description="TF1 bilinear resize to 224x224 (no half-pixel offset), then "
                        "(x - 255 mean) / (255 std)",
            prepare=_prepare_torch_fidelity,
        ),
    )
}

CONVENTION_NAMES: tuple[str, ...] = tuple(CONVENTIONS)
