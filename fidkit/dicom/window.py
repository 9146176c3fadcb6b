"""Windowing modality values (HU for CT) to uint8 display values.

The mapping is the DICOM VOI LUT function ``LINEAR`` (PS3.3 C.11.2.1.2.1), the same one a viewer
applies: with centre ``c`` and width ``w`` (``w >= 1``),

* ``x <= c - 0.5 - (w - 1) / 2``  -> 0
* ``x >  c - 0.5 + (w - 1) / 2``  -> 255
* otherwise ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255``, rounded to the nearest integer.

A window given as a value range ``lo,hi`` is the centre/width pair whose ramp runs exactly from
``lo`` (-> 0) to ``hi`` (-> 255): ``c = (lo + hi + 1) / 2``, ``w = hi - lo + 1``.
MONOCHROME1 images (where a low value is bright) are inverted *after* windowing.
"""
from __future__ import annotations

import numpy as np

from fidkit.errors import UsageError

#: Named CT windows, (centre, width) in HU, as radiology departments commonly set them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "temporal_bone": (600.0, 2800.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def window(array: np.ndarray, center: float, width: float, *, invert: bool = False) -> np.ndarray:
    """Apply the DICOM LINEAR VOI window to ``array`` (any shape, modality values).

    Args:
        array: modality values (HU for CT), any real dtype.
        center: window centre (same units).
        width: window width, at least 1.
        invert: flip the result (255 - y), for MONOCHROME1.

    Returns:
        uint8 array of the same shape, 0..255.

    Raises:
        UsageError: a width below 1 or a non-finite centre/width.
    """
    center, width = float(center), float(width)
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise UsageError(f"window centre/width must be finite with width >= 1, got {center:g}/{width:g}")
    x = np.asarray(array, dtype=np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    if width == 1:
        y = np.where(x <= low, 0.0, 255.0)
    else:
        y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
        y = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    out = np.floor(np.clip(y, 0, 255) + 0.5).astype(np.uint8)
    return 255 - out if invert else out


def range_to_window(low: float, high: float) -> tuple[float, float]:
    """The (centre, width) whose LINEAR ramp maps ``low`` to 0 and ``high`` to 255.

    Raises:
        UsageError: ``high - low < 0`` (an empty range).
    """
    if not high >= low:
        raise UsageError(f"window range must be low,high with low <= high, got {low:g},{high:g}")
    return ((low + high + 1) / 2.0, high - low + 1)


def resolve_window(spec: str | tuple[float, float], file_window: tuple[float, float] | None,
                   where: str = "the series") -> tuple[float, float]:
    """Turn a window spec (a preset name, ``"file"``, or ``(center, width)``) into (center, width).

    Raises:
        UsageError: an unknown preset name.
        InputError: ``"file"`` for a series that stores no WindowCenter/WindowWidth.
    """
    from fidkit.errors import InputError

    if isinstance(spec, str):
        name = spec.strip().lower().replace("-", "_")
        if name == "file":
            if file_window is None:
                raise InputError(
                    f"{where} stores no WindowCenter/WindowWidth; pass a window, "
                    f"DicomOptions(window=...) or --window: a preset such as 'soft_tissue', a "
                    f"range like -1000,1000 or centre/width like 40/400"
                )
            return file_window
        if name not in WINDOW_PRESETS:
            raise UsageError(
                f"unknown window preset {spec!r}; use one of {', '.join(sorted(WINDOW_PRESETS))}, "
                f"'file', low,high or centre/width"
            )
        return WINDOW_PRESETS[name]
    center, width = spec
    return (float(center), float(width))
