"""From a :class:`Volume` to the uint8 RGB slices the network sees.

Slices are cut across the volume axis closest to the requested patient plane (axial: head-foot,
coronal: front-back, sagittal: left-right), then turned to the radiological display convention so
that every dataset looks the same way whatever its acquisition plane:

* axial: top of the image is anterior, left of the image is the patient's right;
* coronal: top is superior, left is the patient's right;
* sagittal: top is superior, left is anterior.

Cutting across a non-acquired axis (coronal slices of an axial CT) shows the volume's real aspect
only if its voxels are square in that plane; resample first (``spacing=(1, 1, 1)``) if they are not.

Slice selection (``select``), comma-separated parts applied in this order:

* ``all`` - every slice (the default);
* ``central:F`` - the central fraction ``F`` (0 < F <= 1) of the slices along the cut axis;
* ``every:K`` - every K-th slice of what is left, starting with its first.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from fidkit.dicom.volume import Volume
from fidkit.dicom.window import resolve_window, window as apply_window
from fidkit.errors import UsageError

AXES = ("axial", "coronal", "sagittal")
# (patient axis index in LPS, sign) of the image rows and columns in each display plane.
_DISPLAY = {"axial": ((1, 1), (0, 1)), "coronal": ((2, -1), (0, 1)), "sagittal": ((2, -1), (1, 1))}
_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}


def parse_selection(spec: str) -> tuple[float, int]:
    """Parse a slice selection spec into ``(central_fraction, every)``.

    Raises:
        UsageError: an unknown part or an out-of-range number.
    """
    fraction, every = 1.0, 1
    text = (spec or "all").strip().lower()
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, _, value = part.partition(":")
        try:
            if name == "all" and not value:
                continue
            if name == "central":
                fraction = float(value)
                if not 0 < fraction <= 1:
                    raise ValueError
                continue
            if name == "every":
                every = int(value)
                if every < 1:
                    raise ValueError
                continue
        except ValueError:
            pass
        raise UsageError(
            f"bad slice selection {spec!r}; use 'all', 'central:F' (0<F<=1), 'every:K' (K>=1) "
            f"or both, e.g. 'central:0.5,every:2'"
        )
    return fraction, every


def select_indices(count: int, spec: str = "all") -> list[int]:
    """The indices out of ``range(count)`` that ``spec`` keeps (see the module docstring)."""
    fraction, every = parse_selection(spec)
    keep = max(1, int(round(count * fraction))) if count else 0
    start = (count - keep) // 2
    return list(range(start, start + keep, every))


def cut_axis(volume: Volume, axis: str) -> int:
    """The array axis (0 = z, 1 = y, 2 = x) whose direction is closest to ``axis``'s normal.

    Raises:
        UsageError: ``axis`` is not axial, coronal or sagittal.
    """
    if axis not in AXES:
        raise UsageError(f"unknown axis {axis!r}; use axial, coronal or sagittal")
    dirs = _directions(volume)
    return int(np.argmax([abs(d[_NORMAL[axis]]) for d in dirs]))


def slice_plane(volume: Volume, array_axis: int, index: int, axis: str) -> np.ndarray:
    """One float32 2-D slice of ``volume.array`` across ``array_axis``, in display orientation."""
    dirs = _directions(volume)
    rest = [a for a in (0, 1, 2) if a != array_axis]
    (prow, srow), (pcol, scol) = _DISPLAY[axis]
    row_axis = max(rest, key=lambda a: abs(dirs[a][prow]))
    col_axis = rest[0] if rest[1] == row_axis else rest[1]
    plane = np.take(volume.array, index, axis=array_axis)
    if rest != [row_axis, col_axis]:
        plane = plane.T
    if dirs[row_axis][prow] * srow < 0:
        plane = plane[::-1]
    if dirs[col_axis][pcol] * scol < 0:
        plane = plane[:, ::-1]
    return np.ascontiguousarray(plane)


def slices(
    volume: Volume,
    window: str | tuple[float, float] = "file",
    axis: str = "axial",
    select: str = "all",
) -> Iterator[np.ndarray]:
    """Yield the selected slices of ``volume`` as uint8 RGB ``(H, W, 3)`` arrays (grey repeated).

    Args:
        volume: the volume (resample it first if its voxels are not the size you want).
        window: a preset name (:data:`~fidkit.dicom.window.WINDOW_PRESETS`), ``"file"`` (the
            series' own first VOI window) or ``(center, width)`` in modality units.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (patient planes, see module docstring).
        select: slice selection spec (``"all"``, ``"central:0.5"``, ``"every:4"``, ...).

    Raises:
        UsageError: bad axis, selection or window; InputError: ``"file"`` on a series without one.
    """
    center, width = resolve_window(window, volume.window, f"series {volume.series_uid}")
    array_axis = cut_axis(volume, axis)
    for k in select_indices(volume.array.shape[array_axis], select):
        yield render(volume, array_axis, k, axis, center, width)


def render(volume: Volume, array_axis: int, index: int, axis: str, center: float, width: float) -> np.ndarray:
    """One windowed uint8 RGB ``(H, W, 3)`` slice (MONOCHROME1 inverted after windowing)."""
    plane = slice_plane(volume, array_axis, index, axis)
    grey = apply_window(plane, center, width, invert=volume.photometric == "MONOCHROME1")
    return np.repeat(grey[:, :, None], 3, axis=2)


def _directions(volume: Volume) -> list[np.ndarray]:
    # array axis 0 runs along the normal, axis 1 down a column, axis 2 along a row
    return [volume.orientation[2], volume.orientation[1], volume.orientation[0]]
