"""The ``maisi-2.5d`` protocol: the 2.5-D FID inputs of MONAI's MAISI CT evaluation, reproduced.

Source: Project-MONAI/tutorials ``generation/maisi/scripts/compute_fid_2-5d_ct.py`` (added in
commit 9c7bbf4, March 2025; read at b3c6c99). Per volume, in order:

1. ``LoadImaged`` (float32) + ``EnsureChannelFirstd`` + ``Orientationd(axcodes="RAS")``: the array
   is flipped/transposed (nearest axes, no interpolation) so that its axes run (x, y, z) towards
   (Right, Anterior, Superior). Here: :func:`ras_array` from fidkit's canonical LPS layout.
2. ``Spacingd(pixdim, mode="bilinear")`` only when the script's ``enable_resampling_spacing`` is set
   (default: not; its usage example: ``1.0x1.0x1.0``): MONAI's grid (``n' = round((n - 1) s / t + 1)``
   samples from the first voxel's centre, source index ``o t / s``, trilinear, border values).
3. ``SpatialPadd(target_shape, value=-1000)``, symmetric (``w // 2`` before, the rest after), when
   ``enable_padding`` (default on), then ``CenterSpatialCropd(target_shape)`` (start
   ``size // 2 - target // 2``) when ``enable_center_cropping`` (default on). Default target
   512 x 512 x 512.
4. ``ScaleIntensityRanged(a_min=-1000, a_max=1000, b_min=-1000, b_max=1000, clip=True)``: HU clipped
   to [-1000, 1000] (computed as MONAI does, ``(v + 1000) / 2000 * 2000 - 1000`` in float32).
5. ``get_features_2p5d``: grey repeated to 3 channels and put in BGR order; slices cut along each
   array axis: XY (along z), YZ (along x), ZX (along y); with ``enable_center_slices_ratio`` r only
   slices ``int((1 - r) / 2 n) .. int((1 + r) / 2 n) - 1`` of each axis. Each plane's stack is
   min-max scaled to 0..1 over the whole stack (``(v - min) / (max - min + 1e-10)``), then
   (0.406, 0.456, 0.485) is subtracted from channels (0, 1, 2) (ImageNet's means in BGR order:
   RadImageNet's convention). No resizing: a 512^3 volume gives 512 x 512 inputs.
6. Features: the network's output averaged over its spatial dimensions; FID per plane
   (``FIDMetric``), and the mean of the three is the reported 2.5-D FID.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fidkit.dicom.volume import Volume, canonical
from fidkit.errors import UsageError

PROTOCOL = "maisi-2.5d"
#: HU range the volume is clipped to (ScaleIntensityRanged a_min/a_max = b_min/b_max).
HU_RANGE = (-1000.0, 1000.0)
#: SpatialPadd's constant: air.
PAD_VALUE = -1000.0
#: Subtracted from channels 0, 1, 2 *after* the RGB -> BGR swap (ImageNet means of B, G, R).
BGR_MEANS = (0.406, 0.456, 0.485)
#: Plane names in the script's order, and the array axis (of the RAS (x, y, z) array) each is cut across.
PLANES = ("xy", "yz", "zx")
CUT_AXIS = {"xy": 2, "yz": 0, "zx": 1}
SOURCE = ("Project-MONAI/tutorials generation/maisi/scripts/compute_fid_2-5d_ct.py "
          "(commit 9c7bbf4, 2025-03; read at b3c6c99)")


@dataclass(frozen=True)
class MaisiOptions:
    """The script's switches, with its defaults.

    Attributes:
        target_shape: ``target_shape`` (x, y, z) voxels for padding and cropping; default 512^3.
        pad: ``enable_padding`` (default True).
        crop: ``enable_center_cropping`` (default True).
        spacing: ``enable_resampling_spacing`` (x, y, z) mm, or ``None`` (default: no resampling).
        center_slices_ratio: ``enable_center_slices_ratio`` in (0, 1], or ``None`` (all slices).
    """

    target_shape: tuple[int, int, int] = (512, 512, 512)
    pad: bool = True
    crop: bool = True
    spacing: Optional[tuple[float, float, float]] = None
    center_slices_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        if len(self.target_shape) != 3 or any(int(s) != s or s < 1 for s in self.target_shape):
            raise UsageError(f"MAISI target shape must be 3 positive integers (x, y, z), got {self.target_shape}")
        if self.spacing is not None and (len(self.spacing) != 3 or not all(
                math.isfinite(s) and s > 0 for s in self.spacing)):
            raise UsageError(f"MAISI spacing must be 3 positive mm values (x, y, z) or None, got {self.spacing}")
        r = self.center_slices_ratio
        if r is not None and not (math.isfinite(r) and 0 < r <= 1):
            raise UsageError(f"MAISI center slices ratio must be in (0, 1] or None, got {r}")

    def to_meta(self) -> dict[str, Any]:
        """JSON-able record of every choice (the stats file's ``meta["protocol"]``)."""
        return {
            "name": PROTOCOL, "source": SOURCE, "orientation": "RAS (nearest axes, no interpolation)",
            "spacing_mm": None if self.spacing is None else [float(s) for s in self.spacing],
            "resample": "MONAI Spacing: bilinear, border, n'=round((n-1)s/t+1)" if self.spacing else None,
            "target_shape": [int(s) for s in self.target_shape], "pad": self.pad, "pad_value": PAD_VALUE,
            "crop": self.crop, "hu_clip": list(HU_RANGE), "center_slices_ratio": self.center_slices_ratio,
            "planes": list(PLANES), "scaling": "min-max per plane stack, 0..1",
            "channels": "BGR", "means_subtracted": list(BGR_MEANS), "resize": None,
        }


def ras_array(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` as MONAI's ``Orientationd(axcodes="RAS")`` leaves it.

    Returns:
        float32 ``(x, y, z)`` array (x towards Right, y Anterior, z Superior) and its spacing
        ``(x, y, z)`` mm.
    """
    v = canonical(volume)
    array = np.asarray(v.array, dtype=np.float32)[:, ::-1, ::-1].transpose(2, 1, 0)  # (z,P,L) -> (R,A,S)
    return np.ascontiguousarray(array), (float(v.spacing[2]), float(v.spacing[1]), float(v.spacing[0]))


def resample_like_monai(array: np.ndarray, spacing: tuple[float, float, float],
                        target: tuple[float, float, float]) -> np.ndarray:
    """MONAI ``Spacing(pixdim=target, mode="bilinear")`` of an (x, y, z) array on an orthogonal grid.

    Per axis: ``n' = round((n - 1) * s / t + 1)`` (numpy rounding, half to even); output sample
    ``o`` reads source index ``o * t / s`` by linear interpolation, clamped to the edge voxels
    (``padding_mode="border"``). Trilinear = the three 1-D passes. Returns float32.
    """
    out = np.asarray(array, dtype=np.float64)
    for axis in range(3):
        s, t = float(spacing[axis]), float(target[axis])
        n = out.shape[axis]
        count = int(np.round((n - 1) * s / t + 1.0))
        if count > 16384:
            raise UsageError(f"resampling to {t:g} mm makes {count} samples along axis {'xyz'[axis]}; "
                             f"choose a coarser MAISI spacing")
        idx = np.clip(np.arange(count) * (t / s), 0, n - 1)
        lo = np.minimum(np.floor(idx).astype(np.int64), max(n - 2, 0))
        w = idx - lo
        a = np.take(out, lo, axis=axis)
        b = np.take(out, np.minimum(lo + 1, n - 1), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = count
        out = a + (b - a) * w.reshape(shape)
    return out.astype(np.float32)


def pad_and_crop(array: np.ndarray, target_shape: tuple[int, int, int], *, pad: bool = True,
                 crop: bool = True) -> np.ndarray:
    """``SpatialPadd`` (symmetric, value -1000) then ``CenterSpatialCropd`` to ``target_shape``."""
    out = np.asarray(array, dtype=np.float32)
    if pad:
        widths = [(max(t - n, 0) // 2, max(t - n, 0) - max(t - n, 0) // 2) for n, t in zip(out.shape, target_shape)]
        if any(w != (0, 0) for w in widths):
            out = np.pad(out, widths, mode="constant", constant_values=np.float32(PAD_VALUE))
    if crop:
        cut = []
        for n, t in zip(out.shape, target_shape):
            start = max(n // 2 - t // 2, 0)
            cut.append(slice(start, max(start + t, start)))
        out = out[tuple(cut)]
    return out


def clip_hu(array: np.ndarray) -> np.ndarray:
    """``ScaleIntensityRanged(-1000, 1000, -1000, 1000, clip=True)`` in float32, op for op (the
    identity scale is not skipped: it rounds exactly as MONAI's does)."""
    low, high = HU_RANGE
    x = np.asarray(array, dtype=np.float32)
    x = (x - np.float32(low)) / np.float32(high - low)
    x = x * np.float32(high - low) + np.float32(low)
    return np.clip(x, np.float32(low), np.float32(high)).astype(np.float32)


def maisi_volume(volume: Volume, options: MaisiOptions | None = None) -> np.ndarray:
    """Steps 1-4: float32 ``(x, y, z)`` RAS array, HU clipped to [-1000, 1000]."""
    options = options or MaisiOptions()
    array, spacing = ras_array(volume)
    if options.spacing is not None:
        array = resample_like_monai(array, spacing, options.spacing)
    array = pad_and_crop(array, options.target_shape, pad=options.pad, crop=options.crop)
    return clip_hu(array)


def center_range(n: int, ratio: Optional[float]) -> range:
    """The slice indices kept along an axis of ``n`` slices (the script's integer truncation)."""
    if ratio is None:
        return range(n)
    return range(int((1.0 - ratio) / 2.0 * n), int((1.0 + ratio) / 2.0 * n))


def plane_inputs(array: np.ndarray, plane: str, center_slices_ratio: Optional[float] = None) -> np.ndarray:
    """The network inputs of one plane: float32 ``(N, 3, H, W)``, BGR, scaled and mean-subtracted.

    ``xy``: slices across z, each ``(x, y)``; ``yz``: across x, each ``(y, z)``; ``zx``: across y,
    each ``(x, z)`` (the array's own axis order: no transpose, no flip, no resize).
    """
    return np.concatenate(list(plane_batches(array, plane, center_slices_ratio,
                                             batch_size=max(1, max(array.shape)))))


def plane_batches(array: np.ndarray, plane: str, center_slices_ratio: Optional[float] = None,
                  batch_size: int = 16, *, unit: bool = False):
    """:func:`plane_inputs` in batches of ``batch_size`` slices, so a 512^3 plane is never held as
    one (512, 3, 512, 512) array: the same float32 operations on the same min and max (of the
    whole stack), so the batches stacked equal ``plane_inputs`` exactly.

    ``unit``: yield the grey slices scaled to 0..1 instead, float32 (B, H, W), before the channel
    repeat and the mean subtraction (what other extractors receive, as 8-bit images).
    """
    if plane not in CUT_AXIS:
        raise UsageError(f"unknown MAISI plane {plane!r}; use one of {', '.join(PLANES)}")
    axis = CUT_AXIS[plane]
    keep = center_range(array.shape[axis], center_slices_ratio)
    grey = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)[keep.start:keep.stop]
    low, high = grey.min(), grey.max()
    for start in range(0, len(grey), batch_size):
        # float32 throughout, as in torch
        scaled = (grey[start:start + batch_size] - low) / ((high - low) + np.float32(1e-10))
        if unit:
            yield scaled
            continue
        out = np.repeat(scaled[:, None], 3, axis=1)
        for channel, mean in enumerate(BGR_MEANS):
            out[:, channel] -= np.float32(mean)
        yield out


def maisi_inputs(volume: Volume, options: MaisiOptions | None = None) -> dict[str, np.ndarray]:
    """All of it: ``{"xy": (N, 3, H, W), "yz": ..., "zx": ...}`` float32 network inputs of ``volume``."""
    options = options or MaisiOptions()
    array = maisi_volume(volume, options)
    return {plane: plane_inputs(array, plane, options.center_slices_ratio) for plane in PLANES}


def montage_planes(volume: Volume, options: MaisiOptions | None = None) -> dict[str, np.ndarray]:
    """For a QC montage: the central slice of each plane as uint8 ``(H, W, 3)`` grey (the inputs'
    0..1 scaling, before the mean subtraction), in the array orientation the network sees."""
    options = options or MaisiOptions()
    array = maisi_volume(volume, options)
    out = {}
    for plane in PLANES:
        axis = CUT_AXIS[plane]
        keep = center_range(array.shape[axis], options.center_slices_ratio)
        grey = np.moveaxis(array, axis, 0)[keep.start:keep.stop]
        low, high = float(grey.min()), float(grey.max())
        middle = grey[len(grey) // 2].astype(np.float64)
        u8 = np.floor((middle - low) / max(high - low, 1e-10) * 255 + 0.5).clip(0, 255).astype(np.uint8)
        out[plane] = np.repeat(u8[:, :, None], 3, axis=2)
    return out
