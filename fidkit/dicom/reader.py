"""Reading a folder of DICOM files into :class:`~fidkit.dicom.volume.Volume` objects.

The geometry comes from the standard's patient frame (PS3.3 C.7.6.2): ImageOrientationPatient gives
the row and column direction cosines, their cross product is the slice normal, and each slice's
ImagePositionPatient projected on that normal is its position. Neither file order, InstanceNumber,
SliceLocation nor SliceThickness is trusted for geometry: SliceThickness is what the device stored
(slices may overlap or leave gaps), InstanceNumber is often reset or shuffled.
"""
from __future__ import annotations

import math
import os
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fidkit.defaults import MAX_IMAGE_PIXELS
from fidkit.dicom.volume import Volume
from fidkit.errors import InputError

#: Modalities whose objects carry no anatomy to turn into images (structured reports, RT plans,
#: structures and doses, segmentations, presentation states, key objects, registrations).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SEG", "PR", "KO", "REG", "DOC",
     "ECG", "HD", "AU", "RWV", "PLAN", "FID"}
)
#: Two positions closer than this along the normal are the same slice (mm).
DUPLICATE_TOLERANCE_MM = 1e-3
#: Directions cosines that differ by less than this belong to the same stack.
ORIENTATION_TOLERANCE = 2e-3
#: A step longer than this many times the median step is a gap (missing slices).
GAP_FACTOR = 1.5
#: Steps that differ from the median by more than this fraction make the spacing "variable".
VARIABLE_SPACING_TOLERANCE = 0.01
#: In-plane drift per mm along the normal above which the stack is sheared (gantry tilt).
TILT_TOLERANCE = 1e-3
#: A single file may hold at most this many pixels (all frames): a guard against hostile headers.
MAX_FILE_PIXELS = 1 << 28

_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class SkippedFile:
    """A file the reader left out, and why (one line)."""

    path: str
    reason: str


class SeriesList(list):
    """The volumes found (a plain ``list[Volume]``) plus what was skipped.

    Attributes:
        skipped: the files (or frames) left out, each with its reason.
        files_read: the number of files that gave at least one slice.
    """

    def __init__(self, volumes: list[Volume], skipped: list[SkippedFile], files_read: int) -> None:
        super().__init__(volumes)
        self.skipped = skipped
        self.files_read = files_read


@dataclass
class _Frame:
    path: str
    frame: int | None
    pixels: np.ndarray  # float32 (rows, cols), rescale applied
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float]
    series_uid: str
    modality: str
    photometric: str
    localizer: bool
    echo: float | None
    temporal: float | None
    stack: str | None
    note: str | None
    window: tuple[float, float] | None
    instance: int
    thickness: float | None
    spacing_between: float | None
    description: str


def read_series(path: str | os.PathLike) -> SeriesList:
    """Read every image series under ``path`` (a folder, searched recursively, or one file).

    Files that are not images (non-DICOM, SR/RT/SEG objects, zero-byte, ``._`` resource forks,
    truncated or undecodable files) are skipped and listed in the result's ``skipped``. Slices are
    grouped by SeriesInstanceUID, then split by orientation, image size, pixel spacing, localizer
    ImageType, echo (EchoNumbers/EchoTime), temporal position and enhanced StackID; each group becomes one
    :class:`Volume` sorted along its normal. Enhanced multi-frame files contribute one slice per frame
    (per-frame functional groups override shared ones). Each slice's own RescaleSlope/Intercept is
    applied in float32. Exact duplicate positions are dropped and a stack sheared by gantry tilt is
    re-gridded onto the first slice's in-plane grid; both are recorded in ``Volume.warnings``.

    Returns:
        a :class:`SeriesList` (a ``list[Volume]`` with ``.skipped``), ordered by series UID then
        label; empty when nothing usable was found (the caller decides whether that is an error).

    Raises:
        InputError: ``path`` does not exist or cannot be listed.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root} does not exist; give a DICOM folder or file")
    frames: list[_Frame] = []
    skipped: list[SkippedFile] = []
    files_read = 0
    for file in _walk(root, skipped):
        got = _read_file(file, skipped)
        if got:
            files_read += 1
            frames.extend(got)
    volumes = _build_volumes(frames)
    return SeriesList(volumes, skipped, files_read)


# ----------------------------------------------------------------------------------------- files
def _walk(root: Path, skipped: list[SkippedFile]) -> Iterator[str]:
    if root.is_file():
        yield str(root)
        return
    try:
        walker = list(os.walk(root, followlinks=False))
    except OSError as exc:  # pragma: no cover - os.walk swallows most errors
        raise InputError(f"cannot list {root}: {exc.strerror}") from None
    if not walker:
        raise InputError(f"cannot list {root}; check it is a readable folder")
    for folder, dirs, names in walker:
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(folder, name)
            if name in _IGNORED_NAMES or name.startswith("._"):
                skipped.append(SkippedFile(full, "system file (._ resource fork or OS metadata)"))
                continue
            try:
                if not os.path.isfile(full) or os.path.islink(full):
                    skipped.append(SkippedFile(full, "not a regular file"))
                    continue
                if os.path.getsize(full) == 0:
                    skipped.append(SkippedFile(full, "empty file"))
                    continue
            except OSError as exc:
                skipped.append(SkippedFile(full, f"cannot stat: {exc.strerror}"))
                continue
            yield full


def _read_file(path: str, skipped: list[SkippedFile]) -> list[_Frame]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    def skip(reason: str) -> list[_Frame]:
        skipped.append(SkippedFile(path, " ".join(reason.split())[:200]))
        return []

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        try:
            try:
                ds = pydicom.dcmread(path, force=False)
            except InvalidDicomError:
                # Part 10 files start with a preamble and "DICM"; headerless .dcm files exist in the
                # wild, so those (and only those) are given a second, forced try.
                if not path.lower().endswith(".dcm"):
                    return skip("not a DICOM file (no DICM preamble)")
                ds = pydicom.dcmread(path, force=True)
            return _frames_of(ds, path, skip)
        except Exception as exc:  # noqa: BLE001 - hostile files may raise anything inside pydicom
            return skip(f"unreadable DICOM ({type(exc).__name__}: {exc})")


def _frames_of(ds: Any, path: str, skip: Any) -> list[_Frame]:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return skip(f"not an image (Modality {modality})")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return skip("no pixel data (not an image object)")
    samples = _int(ds.get("SamplesPerPixel", 1), 1)
    if samples != 1:
        return skip(f"colour image (SamplesPerPixel {samples}); only greyscale CT/MR-like series are read")
    rows, cols = _int(ds.get("Rows"), 0), _int(ds.get("Columns"), 0)
    nframes = max(1, _int(ds.get("NumberOfFrames", 1), 1))
    if rows <= 0 or cols <= 0:
        return skip(f"bad image size Rows={rows} Columns={cols}")
    if rows * cols > MAX_IMAGE_PIXELS or rows * cols * nframes > MAX_FILE_PIXELS:
        return skip(f"image too large ({nframes} x {rows} x {cols} pixels)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return skip(f"PhotometricInterpretation {photometric} is not greyscale")
    pixels = np.asarray(ds.pixel_array)
    if nframes == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape != (nframes, rows, cols):
        return skip(f"pixel data of shape {pixels.shape} does not match {nframes} x {rows} x {cols}")

    shared = _first(ds.get("SharedFunctionalGroupsSequence"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    enhanced = shared is not None or per_frame is not None
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    image_type = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
    localizer = "LOCALIZER" in image_type
    instance = _int(ds.get("InstanceNumber"), 0)
    description = str(ds.get("SeriesDescription", "") or "")
    frames: list[_Frame] = []
    for k in range(nframes):
        item = per_frame[k] if per_frame is not None and k < len(per_frame) else None

        def fg(sequence: str, keyword: str) -> Any:
            # Per-frame functional groups override shared ones (PS3.3 C.7.6.16).
            for group in (item, shared):
                inner = _first(group.get(sequence)) if group is not None else None
                if inner is not None and keyword in inner:
                    return inner.get(keyword)
            return None

        if enhanced:
            ipp = _floats(fg("PlanePositionSequence", "ImagePositionPatient"), 3)
            iop = _floats(fg("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _floats(fg("PixelMeasuresSequence", "PixelSpacing"), 2)
            thickness = _float(fg("PixelMeasuresSequence", "SliceThickness"))
            between = _float(fg("PixelMeasuresSequence", "SpacingBetweenSlices"))
            slope = _float(fg("PixelValueTransformationSequence", "RescaleSlope"))
            intercept = _float(fg("PixelValueTransformationSequence", "RescaleIntercept"))
            window = _window(fg("FrameVOILUTSequence", "WindowCenter"), fg("FrameVOILUTSequence", "WindowWidth"))
            echo = _float(fg("MREchoSequence", "EffectiveEchoTime"))
            temporal = _float(fg("FrameContentSequence", "TemporalPositionIndex"))
            stack = fg("FrameContentSequence", "StackID")
            stack = None if stack is None else str(stack)
            note = None
            frame_type = [str(v).upper() for v in _as_list(fg("MRImageFrameTypeSequence", "FrameType")
                                                             or fg("CTImageFrameTypeSequence", "FrameType"))]
            frame_localizer = localizer or "LOCALIZER" in frame_type
            if ipp is None:
                ipp = _floats(ds.get("ImagePositionPatient"), 3)
            if iop is None:
                iop = _floats(ds.get("ImageOrientationPatient"), 6)
            if spacing is None:
                spacing = _floats(ds.get("PixelSpacing"), 2)
            if slope is None:
                slope = _float(ds.get("RescaleSlope"))
                intercept = _float(ds.get("RescaleIntercept"))
            frame_instance = k
        else:
            ipp = _floats(ds.get("ImagePositionPatient"), 3)
            iop = _floats(ds.get("ImageOrientationPatient"), 6)
            spacing = _floats(ds.get("PixelSpacing"), 2)
            if spacing is None:
                spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
            thickness = _float(ds.get("SliceThickness"))
            between = _float(ds.get("SpacingBetweenSlices"))
            slope = _float(ds.get("RescaleSlope"))
            intercept = _float(ds.get("RescaleIntercept"))
            window = _window(ds.get("WindowCenter"), ds.get("WindowWidth"))
            echo = _float(_first_value(ds.get("EchoNumbers")))
            if echo is None:
                echo = _float(ds.get("EchoTime"))
            temporal = _float(ds.get("TemporalPositionIdentifier"))
            frame_localizer = localizer
            frame_instance = instance if nframes == 1 else k
            stack, note = None, None
            if nframes > 1 and ipp is not None and iop is not None and _valid_orientation(iop):
                # A legacy multi-frame image stores one position for all frames: the frames are
                # stepped along the normal by SpacingBetweenSlices (else SliceThickness).
                step = between or thickness or 1.0
                normal = np.cross(iop[:3], iop[3:])
                normal /= np.linalg.norm(normal)
                ipp = ipp + k * step * normal
                note = (f"legacy multi-frame: one ImagePositionPatient for {nframes} frames; frames "
                        f"assumed {step:.4g} mm apart ({'SpacingBetweenSlices' if between else 'SliceThickness' if thickness else 'default'})")
        if ipp is not None and iop is not None and not _valid_orientation(iop):
            iop = None
        if spacing is None or not all(math.isfinite(s) and s > 0 for s in spacing):
            spacing = np.array([1.0, 1.0])
        slope = 1.0 if slope is None or not math.isfinite(slope) or slope == 0 else slope
        intercept = 0.0 if intercept is None or not math.isfinite(intercept) else intercept
        values = pixels[k].astype(np.float64) * slope + intercept
        frames.append(
            _Frame(
                path=path, frame=k if nframes > 1 else None, pixels=values.astype(np.float32),
                ipp=ipp if iop is not None else None, iop=iop if ipp is not None else None,
                pixel_spacing=(float(spacing[0]), float(spacing[1])), series_uid=series_uid,
                modality=modality, photometric=photometric, localizer=frame_localizer, echo=echo,
                temporal=temporal, stack=stack, note=note, window=window, instance=frame_instance, thickness=thickness,
                spacing_between=between, description=description,
            )
        )
    return frames


# ------------------------------------------------------------------------------------- grouping
def _build_volumes(frames: list[_Frame]) -> list[Volume]:
    groups: dict[tuple, list[tuple[np.ndarray | None, list[_Frame]]]] = {}
    for f in frames:
        key = (
            f.series_uid, f.pixels.shape, round(f.pixel_spacing[0], 4), round(f.pixel_spacing[1], 4),
            f.localizer, f.echo, f.temporal, f.iop is None, f.stack,
        )
        bucket = groups.setdefault(key, [])
        for ref, members in bucket:
            if ref is None or (f.iop is not None and np.max(np.abs(ref - f.iop)) < ORIENTATION_TOLERANCE):
                members.append(f)
                break
        else:
            bucket.append((f.iop, [f]))
    volumes: list[Volume] = []
    per_series: dict[str, int] = {}
    for key, bucket in groups.items():
        per_series[key[0]] = per_series.get(key[0], 0) + len(bucket)
    for key, bucket in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        for ref, members in bucket:
            volume = _stack(members) if ref is not None else _stack_without_geometry(members)
            label = _label(key, volume, several=per_series[key[0]] > 1)
            volumes.append(volume.replace(label=label))
    return volumes


def _sort_key(key: tuple) -> tuple:
    return tuple((v is None, str(v)) for v in key)


def _label(key: tuple, volume: Volume, several: bool) -> str:
    parts = []
    if key[4]:
        parts.append("localizer")
    if key[5] is not None and several:
        parts.append(f"echo {key[5]:g}")
    if key[6] is not None and several:
        parts.append(f"time {key[6]:g}")
    if key[8] is not None and several:
        parts.append(f"stack {key[8]}")
    if several:
        parts.append(f"{_plane_name(volume.normal)} {key[1][0]}x{key[1][1]}")
    return ", ".join(parts)


def _plane_name(normal: np.ndarray) -> str:
    a = np.abs(normal)
    if a.max() < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[int(np.argmax(a))]


def _stack(members: list[_Frame]) -> Volume:
    first = members[0]
    assert first.iop is not None
    row = first.iop[:3] / np.linalg.norm(first.iop[:3])
    col = first.iop[3:] / np.linalg.norm(first.iop[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    depth = np.array([float(np.dot(f.ipp, normal)) for f in members])
    order = sorted(range(len(members)), key=lambda i: (depth[i], members[i].instance, members[i].path))
    warnings: list[str] = sorted({f.note for f in members if f.note})
    kept: list[int] = []
    duplicates_same, duplicates_differ = [], []
    for i in order:
        if kept and depth[i] - depth[kept[-1]] < DUPLICATE_TOLERANCE_MM:
            same = np.array_equal(members[i].pixels, members[kept[-1]].pixels)
            (duplicates_same if same else duplicates_differ).append((depth[i], _where(members[i])))
            continue
        kept.append(i)
    if duplicates_same:
        warnings.append(
            f"duplicates: dropped {len(duplicates_same)} slice(s) repeating an earlier position "
            f"with identical pixels (first at z={duplicates_same[0][0]:.3f} mm, {duplicates_same[0][1]})"
        )
    if duplicates_differ:
        warnings.append(
            f"duplicates: dropped {len(duplicates_differ)} slice(s) at an already used position but "
            f"with different pixels; the first one read was kept (first at "
            f"z={duplicates_differ[0][0]:.3f} mm, {duplicates_differ[0][1]})"
        )
    stack = [members[i] for i in kept]
    positions = depth[kept]
    ipps = np.array([f.ipp for f in stack], dtype=np.float64)
    dy, dx = first.pixel_spacing
    thickness = next((f.thickness for f in stack if f.thickness), None)
    if len(stack) > 1:
        steps = np.diff(positions)
        dz = float(np.median(steps))
        gaps = np.nonzero(steps > GAP_FACTOR * dz)[0]
        if len(gaps):
            missing = int(sum(round(steps[g] / dz) - 1 for g in gaps))
            g = gaps[0]
            warnings.append(
                f"gap: {len(gaps)} gap(s), about {missing} missing slice(s) at step {dz:.4g} mm; first "
                f"between z={positions[g]:.3f} and z={positions[g + 1]:.3f} mm ({steps[g]:.4g} mm)"
            )
        regular = steps[steps <= GAP_FACTOR * dz]
        if len(regular) and (regular.max() - regular.min()) > VARIABLE_SPACING_TOLERANCE * dz:
            warnings.append(
                f"variable spacing: steps from {regular.min():.4g} to {regular.max():.4g} mm "
                f"(median {dz:.4g} mm); resampling uses the exact positions"
            )
        if thickness and abs(thickness - dz) > 0.1 * dz:
            warnings.append(
                f"SliceThickness {thickness:.4g} mm differs from the spacing measured from the "
                f"positions ({dz:.4g} mm); the measured spacing is used"
            )
        arrays = _correct_tilt(stack, ipps, positions, row, col, normal, dy, dx, warnings)
    else:
        dz = float(first.spacing_between or thickness or 1.0)
        arrays = [f.pixels for f in stack]
    window = next((f.window for f in stack if f.window), None)
    return Volume(
        array=np.stack(arrays).astype(np.float32, copy=False),
        spacing=(dz, float(dy), float(dx)),
        positions=positions.astype(np.float64),
        origin=ipps[0].copy(),
        orientation=np.stack([row, col, normal]),
        series_uid=first.series_uid,
        modality=first.modality,
        photometric=first.photometric,
        window=window,
        warnings=warnings,
        description=first.description,
        is_localizer=first.localizer,
        files=[_where(f) for f in stack],
    )


def _correct_tilt(stack: list[_Frame], ipps: np.ndarray, positions: np.ndarray, row: np.ndarray,
                  col: np.ndarray, normal: np.ndarray, dy: float, dx: float,
                  warnings: list[str]) -> list[np.ndarray]:
    """Re-grid slices whose origins drift in-plane (a gantry-tilted CT) onto the first slice's grid.

    Each slice keeps its own position along the normal; only the in-plane offset is undone, by a
    linear shift. Pixels that come from outside the acquired slice take that slice's minimum value.
    """
    offsets = ipps - ipps[0]
    along = offsets @ normal
    inplane = offsets - np.outer(along, normal)
    extent = float(along[-1] - along[0])
    drift = float(np.linalg.norm(inplane[-1] - inplane[0]))
    if extent <= 0 or drift / extent <= TILT_TOLERANCE:
        return [f.pixels for f in stack]
    angle = math.degrees(math.atan2(drift, extent))
    warnings.append(
        f"gantry tilt: slice origins drift {drift / extent:.4g} mm in-plane per mm along the normal "
        f"(tilt {angle:.2f} deg); slices were shifted back onto the first slice's grid"
    )
    shift_x = inplane @ row / dx  # columns
    shift_y = inplane @ col / dy  # rows
    return [_shift(f.pixels, sy, sx) for f, sy, sx in zip(stack, shift_y, shift_x)]


def _shift(image: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """``out[i, j] = image[i - sy, j - sx]`` with linear interpolation; outside -> image minimum."""
    fill = float(image.min())
    out = image.astype(np.float64)
    for axis, s in ((0, sy), (1, sx)):
        n = out.shape[axis]
        src = np.arange(n) - s
        lo = np.floor(src).astype(int)
        w = src - lo
        valid_lo = (lo >= 0) & (lo < n)
        valid_hi = (lo + 1 >= 0) & (lo + 1 < n)
        a = np.take(out, np.clip(lo, 0, n - 1), axis=axis)
        b = np.take(out, np.clip(lo + 1, 0, n - 1), axis=axis)
        shape = [1, 1]
        shape[axis] = n
        a = np.where(valid_lo.reshape(shape), a, fill)
        b = np.where(valid_hi.reshape(shape), b, fill)
        wr = w.reshape(shape)
        out = a * (1 - wr) + b * wr
        exact = (w == 0).reshape(shape)
        out = np.where(exact, a, out)  # an integer shift must not blend in the fill value
    return out.astype(np.float32)


def _stack_without_geometry(members: list[_Frame]) -> Volume:
    members = sorted(members, key=lambda f: (f.instance, f.path, f.frame or 0))
    first = members[0]
    dz = float(first.spacing_between or first.thickness or 1.0)
    dy, dx = first.pixel_spacing
    warnings = []
    if len(members) > 1:
        warnings.append(
            f"no geometry: the files lack ImagePositionPatient/ImageOrientationPatient; "
            f"{len(members)} slices were ordered by InstanceNumber and assumed {dz:.4g} mm apart"
        )
    return Volume(
        array=np.stack([f.pixels for f in members]).astype(np.float32, copy=False),
        spacing=(dz, float(dy), float(dx)),
        positions=np.arange(len(members), dtype=np.float64) * dz,
        origin=np.zeros(3),
        orientation=np.eye(3),
        series_uid=first.series_uid,
        modality=first.modality,
        photometric=first.photometric,
        window=next((f.window for f in members if f.window), None),
        warnings=warnings,
        description=first.description,
        is_localizer=first.localizer,
        files=[_where(f) for f in members],
    )


# -------------------------------------------------------------------------------- value parsing
def _where(f: _Frame) -> str:
    return f.path if f.frame is None else f"{f.path}#frame{f.frame + 1}"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _first(value: Any) -> Any:
    try:
        return value[0] if value is not None and len(value) else None
    except Exception:  # noqa: BLE001
        return None


def _first_value(value: Any) -> Any:
    items = _as_list(value)
    return items[0] if items else None


def _float(value: Any) -> float | None:
    value = _first_value(value) if not isinstance(value, (int, float)) else value
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any, default: int) -> int:
    out = _float(value)
    return default if out is None else int(out)


def _floats(value: Any, n: int) -> np.ndarray | None:
    items = _as_list(value)
    if len(items) != n:
        return None
    out = [_float(v) for v in items]
    if any(v is None for v in out):
        return None
    return np.array(out, dtype=np.float64)


def _valid_orientation(iop: np.ndarray) -> bool:
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 0.5 or nc < 0.5:
        return False
    return abs(float(np.dot(row, col)) / (nr * nc)) < 0.01


def _window(center: Any, width: Any) -> tuple[float, float] | None:
    c, w = _float(center), _float(width)
    if c is None or w is None or w < 1:
        return None
    return (c, w)
