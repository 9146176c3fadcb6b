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
