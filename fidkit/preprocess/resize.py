"""Resize primitives shared by the conventions of several extractors.

Each one reproduces a specific library's filter to the last bit (that is what a convention is
for), so they call that library rather than re-deriving its arithmetic. Inputs follow the
convention contract: float32 (N, C, H, W) on the 0..255 scale, on any device.
"""
from __future__ import annotations

import numpy as np
import torch

_PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def resize_pil_uint8(x: torch.Tensor, size: tuple[int, int], resample: str = "bicubic") -> torch.Tensor:
    """PIL's resize of the 8-bit RGB image, as ``PIL.Image.fromarray(uint8 HxWx3).resize(...)``
    and torchvision's ``Resize`` on a PIL image do it: PIL's filter (which antialiases when
    shrinking) in PIL's fixed-point 8-bit arithmetic, rounded and clipped to uint8.

    x: float (N, 3, H, W) holding integers 0..255 (a decoded uint8 image; other values are
    rounded and clipped first), any device. size: (height, width) in pixels. resample: a PIL
    filter name (``"bicubic"``, ``"bilinear"``, ...). Returns float32 (N, 3, height, width) on
    x's device holding integers 0..255. An image already of that size is returned unchanged
    (PIL returns a copy then too). Runs per image on the CPU.
    """
    from PIL import Image

    if resample not in _PIL_FILTERS:
        raise ValueError(f"unknown PIL filter {resample!r}; choose from {', '.join(_PIL_FILTERS)}")
    n, c, h, w = x.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x.float()
    if c != 3:
        raise ValueError(f"resize_pil_uint8 takes RGB images (3 channels), not {c}")
    flt = getattr(Image.Resampling, resample.upper())
    images = x.detach().to("cpu", torch.float32).round().clamp(0, 255).to(torch.uint8)
    images = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty((n, out_h, out_w, 3), dtype=np.uint8)
    for i in range(n):
        # PIL sizes are (width, height)
        out[i] = np.asarray(Image.fromarray(images[i]).resize((out_w, out_h), resample=flt))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().to(x.device)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(size)`` with an int ``size``: the shorter side
    becomes ``size`` and the longer ``int(size * long / short)`` (truncated, as torchvision does)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's ``CenterCrop(size)`` of an image at least that large: offsets
    ``int(round((H - h) / 2))`` and ``int(round((W - w) / 2))`` (Python's round, half to even).

    x: (N, C, H, W), any dtype and device; size: (h, w) in pixels, at most (H, W).
    Returns the (N, C, h, w) view. Raises ValueError when the image is smaller than the crop
    (torchvision would pad; no convention here needs that)."""
    h, w = x.shape[-2:]
    out_h, out_w = size
    if out_h > h or out_w > w:
        raise ValueError(f"cannot center-crop a {h}x{w} image to {out_h}x{out_w}")
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    return x[..., top:top + out_h, left:left + out_w]


def center_crop_square(x: torch.Tensor) -> torch.Tensor:
    """The largest centred square, with the offsets ``(H - side) // 2`` and ``(W - side) // 2``
    (floored, as a PIL ``crop`` box computed with integer division; CMMD's reference does this).

    x: (N, C, H, W), any dtype and device. Returns the (N, C, side, side) view, side = min(H, W)."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top:top + side, left:left + side]
