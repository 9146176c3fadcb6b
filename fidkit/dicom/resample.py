"""Resampling a :class:`Volume` to a target voxel spacing in mm.

Convention (the one fidkit's notes use, so that "300 slices 0.9 mm apart at 1 mm" gives 270):

* along an axis, the slab covers ``slots x step`` mm, where ``slots`` counts every slice position
  from the first to the last one at the median step, missing slices included;
* the new count is ``round(extent / target)`` (at least 1), and the new samples are ``target`` apart
  and centred on the slab, so the new grid covers the same tissue as the old one;
* values are interpolated at the new positions from the slices' *real* positions, so a missing
  slice or uneven spacing is bridged by the neighbours on either side rather than shifting the
  whole stack; samples up to half a step beyond the first/last slice take the edge value;
* when a spacing grows by more than 1.5x, the axis is first smoothed by a Gaussian of
  ``sigma = (target - step) / 2`` mm (scikit-image's ``(factor - 1) / 2`` voxels), so that thin
  slices are averaged rather than skipped (anti-aliasing);
* a volume of one slice keeps its z axis (a 2-D image is not stretched into copies of itself).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from fidkit.dicom.volume import Volume
from fidkit.errors import InputError, UsageError

#: Limits on what resampling may allocate (samples along one axis; voxels in all).
MAX_AXIS_COUNT = 16384
MAX_VOXELS = 1 << 28
#: Spacings growing by more than this factor are low-pass filtered first.
ANTIALIAS_FACTOR = 1.5
#: Slice positions and spacings are rounded to this (mm) before resampling: 10 nm, far below any
#: scanner's precision and far above the rounding of DICOM decimal strings and NIfTI float32.
GEOMETRY_DECIMALS = 5


def resample(
    volume: Volume,
    spacing: Sequence[Optional[float]] | None = (1.0, None, None),
    order: int = 1,
) -> Volume:
    """Resample ``volume`` to ``spacing`` = (z, y, x) mm; ``None`` keeps that axis as it is.

    Args:
        volume: the volume to resample (not modified).
        spacing: target spacing in mm for (z, y, x); ``None`` (the whole tuple or an entry) keeps.
        order: 0 nearest neighbour, 1 linear.

    Returns:
        a new :class:`Volume` with the new ``array`` (float32), ``spacing``, ``positions`` and
        ``origin`` (the first new voxel's centre), same orientation and metadata.

    Raises:
        UsageError: a target spacing that is not a positive finite number, or an order not 0/1.
        InputError: the new grid would exceed 16384 samples along an axis or 2**28 voxels (a
            series whose positions are broken, or a far too fine target).
    """
    if spacing is None:
        return volume.replace()
    if len(spacing) != 3:
        raise UsageError(f"spacing must give 3 values (z, y, x) in mm, got {list(spacing)}")
    if order not in (0, 1):
        raise UsageError(f"resample order must be 0 (nearest) or 1 (linear), got {order}")
    for s in spacing:
        if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise UsageError(f"target spacing must be positive mm values or None, got {list(spacing)}")
    array = volume.array.astype(np.float32, copy=True)
    new_spacing = list(volume.spacing)
    positions = volume.positions.astype(np.float64)
    origin = volume.origin.astype(np.float64).copy()
    axes_dirs = (volume.orientation[2], volume.orientation[1], volume.orientation[0])
    for axis, target in enumerate(spacing):
        if target is None:
            continue
        step = _snap(float(volume.spacing[axis]))
        n = array.shape[axis]
        if axis == 0 and n == 1:
            continue  # one slice is a 2-D image: its stored thickness must not make copies of it
        if axis == 0:
            source = _snap(positions - positions[0])
        else:
            source = np.arange(n, dtype=np.float64) * step
        extent, count = _new_count(source, step, target)
        others = array.size // max(1, n)
        if count > MAX_AXIS_COUNT or count * others > MAX_VOXELS:
            # A hostile or broken file (one slice at z = 1e9) must not make us allocate terabytes.
            raise InputError(
                f"series {volume.series_uid}: resampling to {target:g} mm would make {count} samples "
                f"over {extent:.6g} mm along axis {'zyx'[axis]}; the positions look wrong (see the "
                f"gap warnings of 'fidkit dicom info') or choose a coarser spacing "
                f"(DicomOptions(spacing=...) / --spacing)"
            )
        centre = (source[0] + source[-1]) / 2.0
        new = centre + (np.arange(count) - (count - 1) / 2.0) * target
        sigma = (target - step) / 2.0 if target > ANTIALIAS_FACTOR * step else 0.0
        rows = _weights(source, new, order, sigma)
        array = _apply(rows, array, axis)
        origin = origin + axes_dirs[axis] * new[0]
        if axis == 0:
            positions = positions[0] + new
        new_spacing[axis] = float(target)
    return volume.replace(
        array=array, spacing=tuple(new_spacing), positions=positions, origin=origin,
    )


def resampled_shape(volume: Volume, spacing: Sequence[Optional[float]] | None) -> tuple[int, int, int]:
    """The ``(z, y, x)`` shape :func:`resample` gives, from the geometry alone (no voxel is read).

    Raises:
        UsageError: as :func:`resample`.
    """
    shape = list(volume.shape)
    if spacing is None:
        return tuple(shape)  # type: ignore[return-value]
    if len(spacing) != 3:
        raise UsageError(f"spacing must give 3 values (z, y, x) in mm, got {list(spacing)}")
    for axis, target in enumerate(spacing):
        n = shape[axis]
        if target is None or (axis == 0 and n == 1):
            continue
        step = _snap(float(volume.spacing[axis]))
        source = (_snap(np.asarray(volume.positions, dtype=np.float64) - float(volume.positions[0])) if axis == 0
                  else np.arange(n, dtype=np.float64) * step)
        shape[axis] = _new_count(source, step, float(target))[1]
    return tuple(shape)  # type: ignore[return-value]


def _snap(mm: Any) -> Any:
    """Round geometry (mm) to :data:`GEOMETRY_DECIMALS` decimals (10 nm).

    DICOM stores positions and spacings as decimal strings and NIfTI as float32, so the same
    geometry arrives with differences of ~1e-6 mm; unsnapped, they move interpolation weights by
    ~1e-7 and flip an occasional uint8 after windowing, and the two files would not give the same
    slices.
    """
    # rounding to decimals (divide by 10**5) keeps values like 0.75 exact; multiplying by 1e-5 would not
    if isinstance(mm, np.ndarray):
        return np.round(mm.astype(np.float64), GEOMETRY_DECIMALS)
    return round(float(mm), GEOMETRY_DECIMALS)


def _new_count(source: np.ndarray, step: float, target: float) -> tuple[float, int]:
    """(extent in mm, new sample count) of an axis sampled at ``source`` mm, median ``step``."""
    n = len(source)
    slots = int(round((source[-1] - source[0]) / step)) + 1 if n > 1 else 1
    extent = slots * step
    return extent, max(1, int(round(extent / target)))


def _weights(source: np.ndarray, new: np.ndarray, order: int, sigma: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each ``new`` position, the source indices and weights (summing to 1) that make its value.

    Kept sparse: a dense matrix would be len(new) x len(source), too large for tall images.
    """
    n = len(source)
    clamped = np.clip(new, source[0], source[-1])
    if n == 1:
        base = [(np.array([0]), np.array([1.0])) for _ in new]
    elif order == 0:
        idx = np.clip(np.searchsorted(source, clamped), 1, n - 1)
        nearer_left = (clamped - source[idx - 1]) <= (source[idx] - clamped)
        pick = np.where(nearer_left, idx - 1, idx)
        base = [(np.array([i]), np.array([1.0])) for i in pick]
    else:
        idx = np.clip(np.searchsorted(source, clamped, side="right"), 1, n - 1)
        left, right = source[idx - 1], source[idx]
        w = (clamped - left) / (right - left)
        base = [(np.array([i - 1, i]), np.array([1.0 - f, f])) for i, f in zip(idx, w)]
    if sigma <= 0:
        return base
    # Smoothing in mm on the real positions (uneven spacing gets normalised weights), cut at 4 sigma.
    lo = np.searchsorted(source, source - 4 * sigma, side="left")
    hi = np.searchsorted(source, source + 4 * sigma, side="right")
    out = []
    for indices, weights in base:
        acc: dict[int, float] = {}
        for i, w0 in zip(indices, weights):
            if w0 == 0:
                continue
            near = np.arange(lo[i], hi[i])
            g = np.exp(-0.5 * ((source[near] - source[i]) / sigma) ** 2)
            g *= w0 / g.sum()
            for j, v in zip(near, g):
                acc[int(j)] = acc.get(int(j), 0.0) + float(v)
        keys = np.array(sorted(acc))
        out.append((keys, np.array([acc[k] for k in keys])))
    return out


def _apply(rows: list[tuple[np.ndarray, np.ndarray]], array: np.ndarray, axis: int) -> np.ndarray:
    """Each output plane along ``axis`` is the weighted sum of its few source planes."""
    moved = np.moveaxis(array, axis, 0)
    out = np.empty((len(rows),) + moved.shape[1:], dtype=np.float32)
    for j, (indices, weights) in enumerate(rows):
        acc = np.zeros(moved.shape[1:], dtype=np.float64)
        for i, w in zip(indices, weights):
            if w != 0:
                acc += w * moved[i]
        out[j] = acc
    return np.moveaxis(out, 0, axis)
