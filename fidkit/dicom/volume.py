"""The :class:`Volume`: one stack of parallel slices with its geometry in patient space (mm)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A 3-D image read from one DICOM series (or one part of it), in the DICOM patient frame (LPS).

    Attributes:
        array: float32 ``(z, y, x)`` modality values (Hounsfield units for CT: RescaleSlope and
            RescaleIntercept of each slice already applied). ``y`` is the row index, ``x`` the column.
        spacing: ``(z, y, x)`` in mm. ``z`` is measured along the slice normal from the positions
            (never taken from SliceThickness); ``(y, x)`` is PixelSpacing ``[row, column]`` spacing.
            When the slices are unevenly spaced, ``z`` is the median step and ``positions`` is exact.
        positions: ``(z,)`` float64, mm, each slice's ImagePositionPatient projected on the normal,
            strictly increasing.
        origin: ``(3,)`` mm, ImagePositionPatient of the first slice (centre of its first pixel).
        orientation: ``(3, 3)`` direction cosines; rows are the direction of increasing ``x``
            (along a row), of increasing ``y`` (down a column) and the slice normal (row x column).
        series_uid: SeriesInstanceUID.
        modality: Modality (``"CT"``, ``"MR"``, ...).
        photometric: PhotometricInterpretation (``"MONOCHROME1"`` is inverted after windowing).
        window: the series' first VOI window ``(center, width)``, or ``None``.
        warnings: one line each: gaps, variable spacing, duplicates, gantry tilt, with the numbers.
        label: what set this volume apart inside its series (``"echo 2"``, ``"localizer"``, ...).
        description: SeriesDescription.
        is_localizer: ImageType says LOCALIZER (a scout, not part of the anatomy stack).
        files: the source file of each slice (same order as ``array``).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    origin: np.ndarray
    orientation: np.ndarray
    series_uid: str = ""
    modality: str = ""
    photometric: str = "MONOCHROME2"
    window: tuple[float, float] | None = None
    warnings: list[str] = field(default_factory=list)
    label: str = ""
    description: str = ""
    is_localizer: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row cosines x column cosines)."""
        return self.orientation[2]

    def replace(self, **changes: Any) -> "Volume":
        """A copy with some attributes changed (the warnings list is copied, not shared)."""
        changes.setdefault("warnings", list(self.warnings))
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """JSON-able description: uid, modality, shape, spacing, z range, window, warnings."""
        return {
            "series_uid": self.series_uid,
            "label": self.label,
            "description": self.description,
            "modality": self.modality,
            "photometric": self.photometric,
            "shape": list(self.shape),
            "spacing_mm": [round(float(s), 6) for s in self.spacing],
            "z_range_mm": [round(float(self.positions[0]), 4), round(float(self.positions[-1]), 4)],
            "normal": [round(float(v), 6) for v in self.normal],
            "window": list(self.window) if self.window else None,
            "localizer": self.is_localizer,
            "warnings": list(self.warnings),
        }


#: The one array layout fidkit reorients volumes to (NIfTI always, DICOM for the MAISI protocol):
#: array ``(z, y, x)`` with ``x`` towards the patient's left, ``y`` towards posterior and ``z``
#: towards superior (LPS), i.e. an axial DICOM series with ImageOrientationPatient 1,0,0,0,1,0.
CANONICAL_LAYOUT = "array (z, y, x) = (S, P, L): x to the patient's left, y posterior, z superior"


def affine_lps(volume: Volume) -> np.ndarray:
    """4x4 float64 map from array index ``(z, y, x)`` to patient LPS mm (voxel centres).

    Uses the median z step (``volume.spacing[0]``); exact for evenly spaced slices.
    """
    dirs = (volume.orientation[2], volume.orientation[1], volume.orientation[0])
    affine = np.eye(4)
    for axis in range(3):
        affine[:3, axis] = np.asarray(dirs[axis], dtype=np.float64) * float(volume.spacing[axis])
    affine[:3, 3] = np.asarray(volume.origin, dtype=np.float64)
    return affine


def canonical(volume: Volume) -> Volume:
    """``volume`` flipped and transposed (no interpolation) to :data:`CANONICAL_LAYOUT`.

    Each array axis goes to the patient axis it is closest to, by nibabel's ``io_orientation``
    rule (the one MONAI's ``Orientation`` uses), so an oblique volume keeps its small rotation in
    ``orientation``. A volume already in that layout is returned unchanged (same object).

    Raises:
        InputError: the direction cosines are degenerate (two axes closest to the same patient
            axis, or a left-handed grid after reorientation).
    """
    from fidkit.errors import InputError

    dirs = [volume.orientation[2], volume.orientation[1], volume.orientation[0]]
    matrix = np.stack([np.asarray(d, dtype=np.float64) for d in dirs], axis=1)  # columns: axes z, y, x
    world = _closest_axes(matrix)
    if sorted(a for a, _ in world) != [0, 1, 2]:
        raise InputError(f"volume {volume.series_uid or volume.description}: its axes are not "
                         f"distinguishable (direction cosines {np.round(matrix.T, 4).tolist()})")
    if all(w == 2 - a and s > 0 for a, (w, s) in enumerate(world)):
        return volume
    array = volume.array
    origin = np.asarray(volume.origin, dtype=np.float64).copy()
    for axis, (_, sign) in enumerate(world):
        if sign < 0:
            # the far end becomes the first voxel (along z from the real positions: they may be uneven)
            extent = (float(volume.positions[-1] - volume.positions[0]) if axis == 0
                      else (array.shape[axis] - 1) * float(volume.spacing[axis]))
            origin = origin + extent * dirs[axis]
            array = np.flip(array, axis=axis)
    # new axis m (0 = z/S, 1 = y/P, 2 = x/L) is old axis a where world[a] == 2 - m
    order = [next(a for a in range(3) if world[a][0] == 2 - m) for m in range(3)]
    array = np.transpose(array, order)  # a view: slicing and resampling copy what they use
    new_dirs = [dirs[a] * world[a][1] for a in order]
    spacing = tuple(float(volume.spacing[a]) for a in order)
    orientation = np.stack([new_dirs[2], new_dirs[1], new_dirs[0]])
    if float(np.linalg.det(orientation)) < 0:
        raise InputError(f"volume {volume.series_uid or volume.description}: the grid is left-handed "
                         f"after reorientation; its direction cosines look wrong")
    warnings = list(volume.warnings)
    if order[0] == 0:
        positions = np.asarray(volume.positions, dtype=np.float64) * world[0][1]
        positions = positions[::-1].copy() if world[0][1] < 0 else positions.copy()
    else:
        if len(volume.positions) > 2 and np.ptp(np.diff(volume.positions)) > 1e-3 * spacing[order.index(0)]:
            warnings.append("reoriented: the uneven slice positions were replaced by their median step")
        positions = float(origin @ new_dirs[0]) + np.arange(array.shape[0]) * spacing[0]
    return volume.replace(array=array, spacing=spacing, positions=positions, origin=origin,
                          orientation=orientation, warnings=warnings)


def _closest_axes(matrix: np.ndarray) -> list[tuple[int, int]]:
    """For each column (array axis) of a 3x3 direction matrix, (patient axis, sign) closest to it.

    nibabel's ``io_orientation`` rule: the shearless part by polar decomposition, then the axes
    from strongest to weakest, each taking its largest remaining component.
    """
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    out: list[tuple[int, int]] = [(-1, 1)] * 3
    for axis in np.argsort(np.min(-(rotation ** 2), axis=0), kind="stable"):
        column = rotation[:, axis]
        target = int(np.argmax(np.abs(column)))
        out[int(axis)] = (target, 1 if column[target] > 0 else -1)
        rotation[target, :] = 0
    return out
