"""DICOM folders as an image source for the FID pipeline (what ``fidkit stats``/``compare`` read).

Defaults (:class:`DicomOptions`): slices 1 mm apart along z (``spacing=(1.0, None, None)``: the
in-plane pixel spacing is kept), the series' own VOI window (``window="file"``), axial slices, all
of them. Every option goes into the stats file's ``meta["dicom"]`` (:meth:`DicomOptions.to_meta`),
so that two statistics made with different choices are refused by ``fidkit compare``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fidkit.errors import InputError, UsageError

_Spacing = Optional[tuple[Optional[float], Optional[float], Optional[float]]]


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like DICOM: a folder whose first few files (searched a few levels
    down) end in ``.dcm`` or carry ``DICM`` at byte 128, or a single such file. Reads at most
    ~16 files' first 132 bytes; never raises."""
    try:
        root = Path(path)
        if root.is_file():
            return _looks_dicom(root)
        if not root.is_dir():
            return False
        checked, queue = 0, [(root, 0)]
        while queue and checked < 16:
            folder, depth = queue.pop(0)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries[:200]:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if depth < 4:
                        queue.append((Path(entry.path), depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    checked += 1
                    if _looks_dicom(Path(entry.path)):
                        return True
                    if checked >= 16:
                        break
        return False
    except Exception:  # noqa: BLE001 - detection must never fail a command
        return False


def _looks_dicom(path: Path) -> bool:
    if path.name.startswith("._"):
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM volumes become network inputs.

    Attributes:
        spacing: target voxel spacing (z, y, x) in mm, ``None`` entries keep that axis; ``None``
            keeps everything. Default ``(1.0, None, None)``: slices 1 mm apart, pixels as stored.
        window: a preset name (``"lung"``, ``"soft_tissue"``, ...), ``"file"`` (each series' own
            first WindowCenter/WindowWidth) or ``(center, width)`` in modality units (HU for CT).
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        slices: selection spec: ``"all"``, ``"central:F"``, ``"every:K"``, or ``"central:F,every:K"``.
    """

    spacing: _Spacing = (1.0, None, None)
    window: str | tuple[float, float] = "file"
    axis: str = "axial"
    slices: str = "all"
    order: int = 1

    def __post_init__(self) -> None:
        from fidkit.dicom.slices import AXES, parse_selection
        from fidkit.dicom.window import resolve_window

        if self.axis not in AXES:
            raise UsageError(f"unknown axis {self.axis!r}; use axial, coronal or sagittal")
        parse_selection(self.slices)
        if not (isinstance(self.window, str) and self.window.strip().lower() == "file"):
            resolve_window(self.window, None)
        if self.spacing is not None:
            if len(self.spacing) != 3 or any(
                s is not None and not (math.isfinite(s) and s > 0) for s in self.spacing
            ):
                raise UsageError(f"spacing must be 3 positive mm values or None, got {self.spacing}")

    def window_center_width(self) -> tuple[float, float] | None:
        """(center, width) of a fixed window; ``None`` for ``"file"``."""
        from fidkit.dicom.window import resolve_window

        if isinstance(self.window, str) and self.window.strip().lower() == "file":
            return None
        return resolve_window(self.window, None)

    def to_meta(self) -> dict[str, Any]:
        """JSON-able record of every choice; equal dicts mean the same inputs to the network.

        A fixed window is recorded by value (``center``, ``width`` and the ``low``..``high`` ramp),
        so ``lung``, ``-600/1500`` and ``-1349.5,149.5`` are the same record.
        """
        cw = self.window_center_width()
        if cw is None:
            window: Any = "file"
        else:
            c, w = cw
            window = {"center": c, "width": w, "low": c - 0.5 - (w - 1) / 2, "high": c - 0.5 + (w - 1) / 2}
        return {
            "spacing_mm": None if self.spacing is None else [None if s is None else float(s) for s in self.spacing],
            "resample": {"order": self.order, "grid": "centred slab, round(extent/target)", "antialias": ">1.5x"},
            "window": window,
            "voi_function": "LINEAR",
            "axis": self.axis,
            "slices": self.slices,
        }

    @classmethod
    def from_cli(cls, spacing: str | None = None, window: str | None = None, axis: str | None = None,
                 slices: str | None = None) -> "DicomOptions":
        """Options from command-line strings; ``None`` means the default.

        * ``spacing``: ``1.0`` (z only), ``1.0,0.8,0.8`` (z,y,x; ``keep`` for an axis) or ``keep``.
        * ``window``: ``LOW,HIGH`` value range (``-1000,1000``), ``CENTER/WIDTH`` (``40/400``), a
          preset name or ``file``.
        * ``axis``: ``axial``, ``coronal``, ``sagittal``.
        * ``slices``: ``all``, ``central:0.5``, ``every:4``, ``central:0.5,every:2``.

        Raises:
            UsageError: a string that does not parse, with the accepted forms.
        """
        kwargs: dict[str, Any] = {}
        if spacing is not None:
            kwargs["spacing"] = _parse_spacing(spacing)
        if window is not None:
            kwargs["window"] = _parse_window(window)
        if axis is not None:
            kwargs["axis"] = axis.strip().lower()
        if slices is not None:
            kwargs["slices"] = slices.strip().lower()
        return cls(**kwargs)


def _parse_spacing(text: str) -> _Spacing:
    words = [w.strip().lower() for w in text.split(",")]
    if words in (["keep"], ["none"]):
        return None
    if len(words) not in (1, 3):
        raise UsageError(f"bad --spacing {text!r}; give Z or Z,Y,X in mm (e.g. 1.0 or 1.0,0.8,0.8; 'keep' keeps)")
    values: list[float | None] = []
    for w in words:
        if w in ("keep", "none", "-"):
            values.append(None)
            continue
        try:
            v = float(w)
        except ValueError:
            v = float("nan")
        if not (math.isfinite(v) and v > 0):
            raise UsageError(f"bad --spacing {text!r}; values must be positive mm (e.g. 1.0 or 1.0,0.8,0.8)")
        values.append(v)
    if len(values) == 1:
        values += [None, None]
    return (values[0], values[1], values[2])


def _parse_window(text: str) -> str | tuple[float, float]:
    from fidkit.dicom.window import WINDOW_PRESETS, range_to_window

    name = text.strip().lower().replace("-", "_")
    if name == "file" or name in WINDOW_PRESETS:
        return name
    for sep, kind in ((",", "range"), ("/", "cw"), (":", "range")):
        if sep in text:
            parts = text.split(sep)
            try:
                a, b = (float(p) for p in parts)
            except ValueError:
                break
            if not (math.isfinite(a) and math.isfinite(b)):
                break
            if kind == "range":
                return range_to_window(a, b)
            if b < 1:
                break
            return (a, b)
    raise UsageError(
        f"bad --window {text!r}; use LOW,HIGH (e.g. -1000,1000), CENTER/WIDTH (e.g. 40/400), "
        f"'file' or a preset ({', '.join(sorted(WINDOW_PRESETS))})"
    )


@dataclass
class _Item:
    volume: int
    array_axis: int
    index: int


class DicomSource:
    """The windowed slices of every image series under a folder, as an image source.

    ``len(source)`` slices; ``source.load(i)`` is uint8 ``(H, W, 3)``; sizes may differ between
    series. Localizer (scout) volumes are left out. Reading is eager (the whole folder at once).

    Raises (constructor):
        InputError: the folder holds no usable image series, or ``window="file"`` for a series
            without a stored window.
        UsageError: bad options.
    """

    def __init__(self, path: str | os.PathLike, options: DicomOptions | None = None) -> None:
        from fidkit.dicom.reader import read_series
        from fidkit.dicom.resample import resample
        from fidkit.dicom.slices import cut_axis, select_indices
        from fidkit.dicom.window import resolve_window

        self.path = str(path)
        self.options = options or DicomOptions()
        found = read_series(path)
        self.skipped = list(found.skipped)
        localizers = [v for v in found if v.is_localizer]
        self.volumes = [v for v in found if not v.is_localizer]
        if not self.volumes:
            why = f"{len(self.skipped)} file(s) skipped"
            if self.skipped:
                why += f", e.g. {Path(self.skipped[0].path).name}: {self.skipped[0].reason}"
            if localizers:
                why += f"; only {len(localizers)} localizer volume(s)"
            raise InputError(f"{self.path}: no usable DICOM image series found ({why})")
        self.excluded_localizers = len(localizers)
        self.volumes = [resample(v, self.options.spacing, order=self.options.order) for v in self.volumes]
        self._windows = [
            resolve_window(self.options.window, v.window, f"{self.path}: series {v.series_uid}")
            for v in self.volumes
        ]
        self._items: list[_Item] = []
        for n, v in enumerate(self.volumes):
            a = cut_axis(v, self.options.axis)
            self._items += [_Item(n, a, k) for k in select_indices(v.array.shape[a], self.options.slices)]

    def __len__(self) -> int:
        return len(self._items)

    def _item(self, i: int) -> _Item:
        if not -len(self._items) <= i < len(self._items):
            raise IndexError(f"slice {i} out of range (0..{len(self._items) - 1})")
        return self._items[i]

    def load(self, i: int) -> np.ndarray:
        """Slice ``i`` as the network sees it: uint8 ``(H, W, 3)``, windowed, in display orientation."""
        from fidkit.dicom.slices import render

        item = self._item(i)
        center, width = self._windows[item.volume]
        return render(self.volumes[item.volume], item.array_axis, item.index, self.options.axis, center, width)

    def item_name(self, i: int) -> str:
        """E.g. ``series 1.2.3 slice 12 (z=-34.5 mm)``: the series, slice index and its position."""
        item = self._item(i)
        v = self.volumes[item.volume]
        label = f" [{v.label}]" if v.label else ""
        if item.array_axis == 0:
            where = f"z={v.positions[item.index]:.1f} mm"
        else:
            where = f"{item.index * v.spacing[item.array_axis]:.1f} mm from the first voxel"
        return f"series {v.series_uid}{label} {self.options.axis} slice {item.index} ({where})"

    def short_name(self, i: int) -> str:
        """A montage label: volume number, slice index and position, e.g. ``v0 #12 z=-34.5``."""
        item = self._item(i)
        v = self.volumes[item.volume]
        if item.array_axis == 0:
            return f"v{item.volume} #{item.index} z={v.positions[item.index]:.1f}"
        return f"v{item.volume} #{item.index} {self.options.axis}"

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: kind, path, series/volume counts, slices, skipped files, warnings."""
        return {
            "kind": "dicom",
            "path": self.path,
            "series": len({v.series_uid for v in self.volumes}),
            "volumes": len(self.volumes),
            "slices": len(self._items),
            "localizers_excluded": self.excluded_localizers,
            "skipped_files": len(self.skipped),
            "skipped": [f"{s.path}: {s.reason}" for s in self.skipped[:50]],
            "warnings": [f"series {v.series_uid}: {w}" for v in self.volumes for w in v.warnings],
            "geometry": [
                {"series_uid": v.series_uid, "label": v.label, "shape": list(v.shape),
                 "spacing_mm": [round(float(s), 6) for s in v.spacing]}
                for v in self.volumes
            ],
            "options": self.options.to_meta(),
        }
