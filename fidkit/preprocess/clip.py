"""The CLIP extractors' named preprocessing conventions: how an image becomes the R x R input of
OpenAI's CLIP image encoder (R = 224, or 336 for ViT-L/14@336px).

| name             | to R x R                                                          | then                        | reproduces |
|------------------|-------------------------------------------------------------------|-----------------------------|------------|
| `clean-fid`      | PIL bicubic of the 8-bit image, shorter side to R; centre crop R   | x / 255, (x - mean) / std   | clean-fid 0.1.35 CLIP-FID (`model_name="clip_vit_b_32"`); OpenAI's own `clip.load` preprocess |
| `torch-fidelity` | TF1 bilinear (no half-pixel offset) on float 0..255, stretched     | (x - 255 mean) / (255 std)  | torch-fidelity 0.4.0 `clip-vit-*` |
| `cmmd`           | centre square crop (floored offsets); PIL bicubic of the 8-bit image to R | x / 255, (x - mean) / std | CMMD reference (google-research `cmmd`, scenic CLIP) |

mean = (0.48145466, 0.4578275, 0.40821073), std = (0.26862954, 0.26130258, 0.27577711), float32.

Notes on exactness:

* clean-fid's ``img_preprocess_clip`` is torchvision ``Resize(R, BICUBIC)`` + ``CenterCrop(R)`` on
  the PIL image, then ``ToTensor() * 255`` and, in ``CLIP_fx``, ``/ 255`` and ``Normalize``. For
  every uint8 value k, float32 ``(k / 255) * 255 / 255`` equals ``k / 255`` bit for bit, so this is
  exactly the ``clip`` package's ``preprocess`` (``Resize``, ``CenterCrop``, ``ToTensor``,
  ``Normalize``) as well: one convention serves both.
* torch-fidelity stretches any image to R x R (no crop), without antialiasing.
* CMMD's reference crops and resizes with PIL in its reader, divides by 255 in float32, then calls
  ``jax.image.resize(..., 'bicubic')`` to the size the image already has (the identity: the cubic
  kernel is 1 at 0 and 0 at the other integers) and normalises with float64 constants that JAX
  (64-bit off) casts to float32. The L2 normalisation it applies after the network is the
  extractor's ``embedding_normalized`` output, not part of the convention.

A convention's ``prepare`` takes float32 (N, 3, H, W) on the 0..255 scale (decoded 8-bit images)
on any device and returns float32 (N, 3, R, R).
"""
from __future__ import annotations

from typing import Callable

import torch

from fidkit.extractors.base import Convention
from fidkit.preprocess.inception import resize_tf1_bilinear
from fidkit.preprocess.resize import center_crop, center_crop_square, resize_pil_uint8, shorter_side_size

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CONVENTION = "clean-fid"
CONVENTION_NAMES: tuple[str, ...] = ("clean-fid", "torch-fidelity", "cmmd")


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def clip_normalise(x: torch.Tensor) -> torch.Tensor:
    """float32 x on 0..255 -> (x / 255 - mean) / std, each step rounded to float32 in that order
    (``ToTensor`` then ``Normalize``)."""
    x = x / 255
    return (x - _constant(CLIP_MEAN, x)) / _constant(CLIP_STD, x)


def resize_shorter_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """OpenAI's CLIP resize: PIL bicubic of the 8-bit image with the shorter side to ``size``
    (torchvision's ``Resize(size)`` rule), then torchvision's ``CenterCrop(size)``.
    x: float (N, 3, H, W) holding integers 0..255; returns float32 (N, 3, size, size) 0..255."""
    h, w = x.shape[-2:]
    x = resize_pil_uint8(x, shorter_side_size(h, w, size), resample="bicubic")
    return center_crop(x, (size, size))


def _prepare_clean_fid(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def prepare(x: torch.Tensor) -> torch.Tensor:
        return clip_normalise(resize_shorter_center_crop(x, size))
    return prepare


def _prepare_torch_fidelity(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = resize_tf1_bilinear(x.float(), (size, size))
        # torchvision's normalize with the tuple torch-fidelity passes: 255 * mean in float64,
        # then cast to float32.
        mean = _constant(tuple(255 * m for m in CLIP_MEAN), x)
        std = _constant(tuple(255 * s for s in CLIP_STD), x)
        return (x - mean) / std
    return prepare


def _prepare_cmmd(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = resize_pil_uint8(center_crop_square(x), (size, size), resample="bicubic")
        return clip_normalise(x)
    return prepare


def conventions(size: int) -> dict[str, Convention]:
    """The CLIP conventions for a network of input side ``size`` (224 or 336), name -> Convention."""
    table = [
        Convention(
            name="clean-fid",
            reproduces="clean-fid 0.1.35 CLIP-FID (clip_vit_b_32); OpenAI clip.load preprocess",
            description=f"PIL bicubic on the 8-bit image, shorter side to {size}, centre crop "
                        f"{size}x{size}, then (x / 255 - mean) / std",
            prepare=_prepare_clean_fid(size),
            batched_on_device=False,
        ),
        Convention(
            name="torch-fidelity",
            reproduces="torch-fidelity 0.4.0 clip-vit-* feature extractors",
            description=f"TF1 bilinear to {size}x{size} (stretched, no antialias), then "
                        "(x - 255 mean) / (255 std)",
            prepare=_prepare_torch_fidelity(size),
        ),
        Convention(
            name="cmmd",
            reproduces="CMMD reference (google-research cmmd, scenic CLIP ViT-L/14@336px)",
            description=f"centre square crop, PIL bicubic on the 8-bit image to {size}x{size}, "
                        "then (x / 255 - mean) / std",
            prepare=_prepare_cmmd(size),
            batched_on_device=False,
        ),
    ]
    return {c.name: c for c in table}
