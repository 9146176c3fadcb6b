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
