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
        axis: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"all"`` (the three planes of every
            volume, in that order).
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

        if self.axis not in AXES + ("all",):
            raise UsageError(f"unknown axis {self.axis!r}; use axial, coronal, sagittal or all")
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
        * ``axis``: ``axial``, ``coronal``, ``sagittal``, ``all``.
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
    plane: str


def planes_of(axis: str) -> tuple[str, ...]:
    """The display planes an ``axis`` option stands for (``"all"``: axial, coronal, sagittal)."""
    from fidkit.dicom.slices import AXES

    return AXES if axis == "all" else (axis,)


class _Slices:
    """The Source protocol over ``_items`` (which slice of which volume, in order), ``_windows``
    (centre and width per volume) and ``volume(n)``, shared by both sources below."""

    _items: list[_Item]
    _windows: list[tuple[float, float]]

    def volume(self, n: int) -> Any:
        raise NotImplementedError

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
        return render(self.volume(item.volume), item.array_axis, item.index, item.plane, center, width)


class DicomSource(_Slices):
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
            for plane in planes_of(self.options.axis):
                a = cut_axis(v, plane)
                self._items += [_Item(n, a, k, plane) for k in select_indices(v.array.shape[a], self.options.slices)]

    def volume(self, n: int) -> Any:
        """Volume ``n``, resampled (all are in memory)."""
        return self.volumes[n]

    def item_name(self, i: int) -> str:
        """E.g. ``series 1.2.3 slice 12 (z=-34.5 mm)``: the series, slice index and its position."""
        item = self._item(i)
        v = self.volumes[item.volume]
        label = f" [{v.label}]" if v.label else ""
        if item.array_axis == 0:
            where = f"z={v.positions[item.index]:.1f} mm"
        else:
            where = f"{item.index * v.spacing[item.array_axis]:.1f} mm from the first voxel"
        return f"series {v.series_uid}{label} {item.plane} slice {item.index} ({where})"

    def short_name(self, i: int) -> str:
        """A montage label: volume number, slice index and position, e.g. ``v0 #12 z=-34.5``."""
        item = self._item(i)
        v = self.volumes[item.volume]
        if item.array_axis == 0:
            return f"v{item.volume} #{item.index} z={v.positions[item.index]:.1f}"
        return f"v{item.volume} #{item.index} {item.plane}"

    def slice_counts(self) -> list[tuple[str, dict[str, int]]]:
        """Per volume, in order: its name (``series UID [label]``) and the slices taken from it
        in each plane (after resampling and ``options.slices``)."""
        counts: list[dict[str, int]] = [{plane: 0 for plane in planes_of(self.options.axis)}
                                        for _ in self.volumes]
        for item in self._items:
            counts[item.volume][item.plane] += 1
        return [(f"series {v.series_uid}" + (f" [{v.label}]" if v.label else ""), c)
                for v, c in zip(self.volumes, counts)]

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


# ------------------------------------------------------------------------------ volume datasets
@dataclass
class _Entry:
    """One volume of a dataset: its name, where it comes from, and its geometry (no voxels)."""

    name: str
    path: str
    geometry: Any  # a Volume whose array is a zero-stride stand-in
    part: int  # which volume of its file/folder (DICOM folders may hold several series)
    header: dict[str, Any]


class VolumeSource(_Slices):
    """The slices of every volume of a dataset: a folder of NIfTI files (or one file), or a folder
    whose subfolders each hold one DICOM series.

    Each volume goes through the same steps as :class:`DicomSource`: NIfTI volumes are first put in
    fidkit's canonical LPS layout (:func:`fidkit.dicom.nifti.read_nifti`), then every volume is
    resampled (``options.spacing``), windowed (``options.window``) and cut into display-oriented
    slices along ``options.axis`` (``"all"``: axial, then coronal, then sagittal slices of each
    volume). Volumes are read when their slices are first asked for (the two most recent are
    kept), so a dataset larger than memory works; headers are read up front to count the slices.
    A DICOM subfolder is therefore read twice (once for its geometry).

    ``len(source)`` slices; ``source.load(i)`` is uint8 ``(H, W, 3)``.

    Raises (constructor):
        InputError: no volumes found, a bad header (BadImageError), ``window="file"`` for a volume
            without a stored window.
        UsageError: bad options.
    """

    _CACHE = 2

    def __init__(self, paths: list[Path], options: DicomOptions | None = None, *, root: str | os.PathLike,
                 kind: str) -> None:
        import threading

        from fidkit.dicom.resample import resampled_shape
        from fidkit.dicom.slices import cut_axis, select_indices
        from fidkit.dicom.window import resolve_window

        if kind not in ("nifti", "dicom"):
            raise UsageError(f"volume dataset kind must be 'nifti' or 'dicom', got {kind!r}")
        self.path = str(root)
        self.kind = kind
        self.options = options or DicomOptions()
        self.skipped: list[str] = []
        self.entries: list[_Entry] = []
        for p in paths:
            self.entries += self._entries_of(Path(p))
        if not self.entries:
            what = "NIfTI (.nii/.nii.gz) files" if kind == "nifti" else "DICOM image series in its subfolders"
            raise InputError(f"{self.path}: no {what} found")
        self._windows = []
        for e in self.entries:
            where = f"{e.path}" if kind == "nifti" else f"{e.path}: series {e.geometry.series_uid}"
            try:
                self._windows.append(resolve_window(self.options.window, e.geometry.window, where))
            except InputError:
                if kind != "nifti":
                    raise
                raise InputError(f"{e.path} stores no display range (cal_min/cal_max); pass a "
                                 f"window, DicomOptions(window=...) or --window: a preset such as "
                                 f"'soft_tissue', a range like -1000,1000 or 40/400") from None
        self._items: list[_Item] = []
        self._counts: list[dict[str, int]] = []
        self._shapes: list[tuple[int, int, int]] = []
        for n, e in enumerate(self.entries):
            shape = resampled_shape(e.geometry, self.options.spacing)
            self._shapes.append(shape)
            counts = {}
            for plane in planes_of(self.options.axis):
                a = cut_axis(e.geometry, plane)
                chosen = select_indices(shape[a], self.options.slices)
                counts[plane] = len(chosen)
                self._items += [_Item(n, a, k, plane) for k in chosen]
            self._counts.append(counts)
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------- reading
    def _entries_of(self, p: Path) -> list[_Entry]:
        from fidkit.dicom.nifti import nifti_header_summary, read_nifti

        if self.kind == "nifti":
            geometry = read_nifti(p, load_data=False)
            return [_Entry(p.name, str(p), geometry, 0, nifti_header_summary(p))]
        from fidkit.dicom.reader import read_series

        found = read_series(p)
        self.skipped += [f"{s.path}: {s.reason}" for s in found.skipped]
        out = []
        volumes = [v for v in found if not v.is_localizer]
        for part, v in enumerate(volumes):
            name = p.name + (f" [{v.label}]" if v.label else "") + (f" #{part}" if len(volumes) > 1 and not v.label else "")
            stand_in = v.replace(array=np.broadcast_to(np.float32(0), v.shape))
            out.append(_Entry(name, str(p), stand_in, part, {"series_uid": v.series_uid, "files": len(v.files),
                                                             "localizers_excluded": len(found) - len(volumes)}))
        return out

    def volume(self, n: int) -> Any:
        """Volume ``n`` as the network's slices are cut from it: read, canonical (NIfTI) and
        resampled; float32. Raises BadImageError when the file turns out damaged."""
        from fidkit.dicom.resample import resample

        with self._lock:
            if n in self._cache:
                return self._cache[n]
            e = self.entries[n]
            if self.kind == "nifti":
                from fidkit.dicom.nifti import read_nifti

                volume = read_nifti(e.path)
            else:
                from fidkit.dicom.reader import read_series
                from fidkit.errors import BadImageError

                volumes = [v for v in read_series(e.path) if not v.is_localizer]
                if e.part >= len(volumes) or volumes[e.part].shape != e.geometry.shape:
                    raise BadImageError(f"{e.path}: the series changed while it was being read; run again")
                volume = volumes[e.part]
            volume = resample(volume, self.options.spacing, order=self.options.order)
            while len(self._cache) >= self._CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[n] = volume
            return volume

    # ------------------------------------------------------------------------- Source protocol
    def item_name(self, i: int) -> str:
        """E.g. ``case001.nii.gz axial slice 12 of 40``."""
        item = self._item(i)
        total = self._shapes[item.volume][item.array_axis]
        return f"{self.entries[item.volume].name} {item.plane} slice {item.index} of {total}"

    def short_name(self, i: int) -> str:
        """A montage label: volume number, plane initial and slice index, e.g. ``v3 a#12``."""
        item = self._item(i)
        return f"v{item.volume} {item.plane[0]}#{item.index}"

    def slice_counts(self) -> list[tuple[str, dict[str, int]]]:
        """Per volume, in order: its name and the slices taken from it in each plane (counted
        from the headers: no voxel is read)."""
        return [(e.name, dict(c)) for e, c in zip(self.entries, self._counts)]

    def describe(self) -> dict[str, Any]:
        """JSON-able provenance: the volume count, slices per volume and plane, each volume's
        stored and canonical geometry, and every option (spacing, window, axis, selection)."""
        from fidkit.dicom.volume import CANONICAL_LAYOUT

        return {
            "kind": "volumes",
            "format": self.kind,
            "path": self.path,
            "volumes": len(self.entries),
            "slices": len(self._items),
            "planes": list(planes_of(self.options.axis)),
            "layout": CANONICAL_LAYOUT if self.kind == "nifti" else "as acquired (DICOM patient frame, LPS)",
            "affine": ("NIfTI: sform if sform_code>0, else qform if qform_code>0, else pixdim "
                       "(nibabel's rule); RAS+ -> LPS by negating x and y; spacing = affine column "
                       "lengths; reoriented by flips/transposes only") if self.kind == "nifti" else None,
            "display": "axial: anterior up, patient's right on the left; coronal/sagittal: superior up",
            "skipped_files": len(self.skipped),
            "skipped": self.skipped[:50],
            "warnings": [f"{e.name}: {w}" for e in self.entries for w in e.geometry.warnings],
            "per_volume": [
                {"name": e.name, "shape": list(e.geometry.shape),
                 "spacing_mm": [round(float(s), 6) for s in e.geometry.spacing],
                 "resampled_shape": list(shape), "slices": counts, **e.header}
                for e, shape, counts in zip(self.entries, self._shapes, self._counts)
            ],
            "options": self.options.to_meta(),
        }


def nifti_files(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """``.nii``/``.nii.gz`` files in ``folder`` (hidden files skipped), sorted by relative path."""
    from fidkit.dicom.nifti import is_nifti_path

    root = Path(folder)
    pattern = root.rglob("*") if recursive else root.iterdir()
    found = [p for p in pattern if is_nifti_path(p.name) and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def dicom_subfolders(folder: str | os.PathLike) -> list[Path]:
    """The immediate subfolders of ``folder`` that hold DICOM, when ``folder`` itself holds no
    DICOM file directly (a dataset laid out one series per subfolder); else ``[]``."""
    root = Path(folder)
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    if any(p.is_file() and _looks_dicom(p) for p in entries[:200]):
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and is_dicom_folder(p)]


def open_volume_source(path: str | os.PathLike, options: DicomOptions | None = None, *,
                       recursive: bool = False) -> VolumeSource | None:
    """The :class:`VolumeSource` for ``path`` if it is a volume dataset, else ``None``.

    A volume dataset is a ``.nii``/``.nii.gz`` file, a folder holding NIfTI files (searched in
    subfolders with ``recursive``), or a folder whose subfolders each hold a DICOM series (and
    that holds no DICOM file itself). Never raises for a path that is none of these.
    """
    from fidkit.dicom.nifti import is_nifti_path

    p = Path(path)
    if p.is_file():
        return VolumeSource([p], options, root=p, kind="nifti") if is_nifti_path(p.name) else None
    if not p.is_dir():
        return None
    files = nifti_files(p, recursive=recursive)
    if files:
        return VolumeSource(files, options, root=p, kind="nifti")
    subfolders = dicom_subfolders(p)
    if subfolders:
        return VolumeSource(subfolders, options, root=p, kind="dicom")
    return None
