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
from typing import Optional, Sequence

import numpy as np

from fidkit.dicom.volume import Volume
from fidkit.errors import UsageError

#: Spacings growing by more than this factor are low-pass filtered first.
ANTIALIAS_FACTOR = 1.5


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
        step = float(volume.spacing[axis])
        n = array.shape[axis]
        if axis == 0 and n == 1:
            continue  # one slice is a 2-D image: its stored thickness must not make copies of it
        if axis == 0:
            source = positions - positions[0]
        else:
            source = np.arange(n, dtype=np.float64) * step
        slots = int(round((source[-1] - source[0]) / step)) + 1 if n > 1 else 1
        extent = slots * step
        count = max(1, int(round(extent / target)))
        centre = (source[0] + source[-1]) / 2.0
        new = centre + (np.arange(count) - (count - 1) / 2.0) * target
        sigma = (target - step) / 2.0 if target > ANTIALIAS_FACTOR * step else 0.0
        matrix = _weights(source, new, order, sigma)
        array = _apply(matrix, array, axis)
        origin = origin + axes_dirs[axis] * new[0]
        if axis == 0:
            positions = positions[0] + new
        new_spacing[axis] = float(target)
    return volume.replace(
        array=array, spacing=tuple(new_spacing), positions=positions, origin=origin,
    )


def _weights(source: np.ndarray, new: np.ndarray, order: int, sigma: float) -> np.ndarray:
    """Dense (len(new), len(source)) matrix: row j holds the weights of each source sample in
    the value at ``new[j]`` (rows sum to 1)."""
    n = len(source)
    out = np.zeros((len(new), n))
    if sigma > 0:
        # Smoothing in mm on the real positions: uneven spacing gets normalised weights.
        d = source[:, None] - source[None, :]
        smooth = np.exp(-0.5 * (d / sigma) ** 2)
        smooth[np.abs(d) > 4 * sigma] = 0.0  # keeps the matrix banded
        smooth /= smooth.sum(axis=1, keepdims=True)
    else:
        smooth = None
    clamped = np.clip(new, source[0], source[-1])
    if n == 1:
        out[:, 0] = 1.0
    elif order == 0:
        idx = np.clip(np.searchsorted(source, clamped), 1, n - 1)
        nearer_left = (clamped - source[idx - 1]) <= (source[idx] - clamped)
        out[np.arange(len(new)), np.where(nearer_left, idx - 1, idx)] = 1.0
    else:
        idx = np.clip(np.searchsorted(source, clamped, side="right"), 1, n - 1)
        left, right = source[idx - 1], source[idx]
        w = (clamped - left) / (right - left)
        rows = np.arange(len(new))
        out[rows, idx - 1] += 1.0 - w
        out[rows, idx] += w
    if smooth is not None:
        out = out @ smooth
    return out


def _apply(matrix: np.ndarray, array: np.ndarray, axis: int) -> np.ndarray:
    """``tensordot(matrix, array)`` along ``axis``, touching only the non-zero weights (the matrix
    is banded; a dense product would cost len(new) x len(source) x the other axes)."""
    moved = np.moveaxis(array, axis, 0)
    out = np.empty((matrix.shape[0],) + moved.shape[1:], dtype=np.float32)
    for j, row in enumerate(matrix):
        nz = np.nonzero(np.abs(row) > 1e-12)[0]
        acc = np.zeros(moved.shape[1:], dtype=np.float64)
        for i in nz:
            acc += row[i] * moved[i]
        out[j] = acc
    return np.moveaxis(out, 0, axis)
