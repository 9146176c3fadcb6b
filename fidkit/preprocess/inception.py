"""The FID Inception's named preprocessing conventions: how an image becomes its 299x299 input.

Every FID tool resizes and normalises differently, and the differences move FID by more than the
gaps papers report. A convention here reproduces one tool exactly and its name is recorded in every
stats file, so two numbers are only compared when they were made the same way.

| name          | resize to 299x299                                 | normalise        | reproduces |
|---------------|---------------------------------------------------|------------------|------------|
| `tf1`         | TF1 bilinear, no half-pixel offset, float32        | (x - 128) / 128  | TTUR, torch-fidelity |
| `pytorch-fid` | torch bilinear, align_corners=False, no antialias  | 2 (x / 255) - 1  | pytorch-fid |
| `clean`       | PIL bicubic per channel in float32, clip 0..255    | (x - 128) / 128  | clean-fid 0.1.35 `mode="clean"` |
| `antialias`   | torch bilinear, align_corners=False, antialias     | (x - 128) / 128  | torchmetrics >= 1.8 `FrechetInceptionDistance` |

Inputs already 299x299 are never resized. A convention's ``prepare`` takes float32 values on the
0..255 scale, shape (N, 3, H, W), on any device, and returns float32 (N, 3, 299, 299).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fidkit.defaults import CONVENTION_NAMES, INPUT_SIZE
from fidkit.extractors.base import Convention


def resize_tf1_bilinear(x: torch.Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` with ``align_corners=False``.

    TF1 maps output pixel i to input coordinate ``i * in / out`` (no half-pixel offset), takes
    the floor and the next pixel (clamped at the edge) and interpolates in float32:
    ``top = tl + (tr - tl) * dx``, ``out = top + (bottom - top) * dy``. torch's bilinear samples at
    ``(i + 0.5) * in / out - 0.5`` instead, which shifts the image by up to half a pixel.
    x: float (N, C, H, W) on any device; returns float (N, C, size[0], size[1]).

    The horizontal step is done once per input row and the rows are gathered afterwards: each
    output value is the same float32 operations on the same operands as TF1's per-pixel order
    (bit-identical to torch-fidelity's port, tests/test_conventions.py), at a third of the work.
    """
    n, c, h, w = x.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x
    y0, y1, dy = _tf1_axis(h, out_h, x.device, x.dtype)
    x0, x1, dx = _tf1_axis(w, out_w, x.device, x.dtype)
    rows = x.reshape(n * c, h, w)
    left = torch.gather(rows, 2, x0.view(1, 1, out_w).expand(n * c, h, out_w))
    across = torch.gather(rows, 2, x1.view(1, 1, out_w).expand(n * c, h, out_w))
    across.sub_(left).mul_(dx.view(1, 1, out_w)).add_(left)  # tl + (tr - tl) * dx, every row
    top = across.index_select(1, y0)
    bottom = across.index_select(1, y1)
    bottom.sub_(top).mul_(dy.view(1, out_h, 1)).add_(top)  # top + (bottom - top) * dy
    return bottom.view(n, c, out_h, out_w)


_TF1_AXES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _tf1_axis(in_size: int, out_size: int, device: torch.device, dtype: torch.dtype):
    """(lower index, upper index, fraction) of TF1's sample positions along one axis (cached)."""
    key = (in_size, out_size, str(device), dtype)
    cached = _TF1_AXES.get(key)
    if cached is None:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        coord = torch.arange(out_size, dtype=torch.float32) * scale
        lo = coord.floor().long().clamp_max(in_size - 1)
        hi = (lo + 1).clamp_max(in_size - 1)
        frac = (coord - lo.float()).to(dtype)
        cached = (lo.to(device), hi.to(device), frac.to(device))
        if len(_TF1_AXES) > 64:
            _TF1_AXES.clear()
        _TF1_AXES[key] = cached
    return cached


def _prepare_tf1(x: torch.Tensor) -> torch.Tensor:
    x = resize_tf1_bilinear(x)
    return (x - 128) / 128


def _prepare_pytorch_fid(x: torch.Tensor) -> torch.Tensor:
    # pytorch-fid: ToTensor (x / 255), bilinear with align_corners=False, then 2x - 1.
    x = x / 255
    if tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def resize_pil_bicubic_float(x: torch.Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> torch.Tensor:
    """clean-fid's "clean" resize: each channel as a float32 PIL image (mode ``F``), PIL bicubic
    (which antialiases when shrinking), then clipped to 0..255 and NOT re-quantised to uint8.

    Computed by PIL itself on the CPU, because the point is to match PIL's filter to the last bit.
    x: float (N, C, H, W) on the 0..255 scale, any device; returns float32 (N, C, size[0], size[1])
    on x's device.
    """
    from PIL import Image

    n, c, h, w = x.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x
    planes = x.detach().to("cpu", torch.float32).numpy()
    out = np.empty((n, c, out_h, out_w), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(np.ascontiguousarray(planes[i, ch]), mode="F")
            # PIL sizes are (width, height)
            out[i, ch] = np.asarray(img.resize((out_w, out_h), resample=Image.BICUBIC))
    np.clip(out, 0, 255, out=out)
    return torch.from_numpy(out).to(x.device)


def _prepare_clean(x: torch.Tensor) -> torch.Tensor:
    return (resize_pil_bicubic_float(x) - 128) / 128


def _prepare_antialias(x: torch.Tensor) -> torch.Tensor:
    # torchmetrics >= 1.8 resizes the uint8 image cast to float32 with antialiased bilinear; at
    # 299x299 the antialiased bilinear is the identity, so no special case is needed.
    x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                      antialias=True)
    return (x - 128) / 128


CONVENTIONS: dict[str, Convention] = {}


def register(convention: Convention) -> Convention:
    CONVENTIONS[convention.name] = convention
    return convention


register(Convention(
    name="tf1",
    reproduces="TTUR (TF1), torch-fidelity 0.3-0.4",
    description="TF1 bilinear resize without half-pixel offset, then (x - 128) / 128",
    prepare=_prepare_tf1,
))
register(Convention(
    name="pytorch-fid",
    reproduces="pytorch-fid 0.3.0",
    description="x / 255, torch bilinear (align_corners=False, no antialias), then 2x - 1",
    prepare=_prepare_pytorch_fid,
))


register(Convention(
    name="clean",
    reproduces="clean-fid 0.1.35 (mode='clean')",
    description="PIL bicubic resize per channel in float32, clip to 0..255 (no re-quantisation), "
                "then (x - 128) / 128",
    prepare=_prepare_clean,
    batched_on_device=False,
))
register(Convention(
    name="antialias",
    reproduces="torchmetrics >= 1.8 FrechetInceptionDistance (antialias=True, its default)",
    description="torch bilinear (align_corners=False, antialias=True), then (x - 128) / 128",
    prepare=_prepare_antialias,
))


if tuple(CONVENTIONS) != CONVENTION_NAMES:  # pragma: no cover - a developer's mistake
    raise RuntimeError("fidkit.defaults.CONVENTION_NAMES is out of date with the registry")



