"""Writing small DICOM series with pydicom whose geometry and values the tests know exactly.

The default content is a ramp in patient space: HU = 10 * z_mm + column index, stored with
RescaleIntercept -1000, so a value read back (or interpolated linearly) can be predicted anywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def base_dataset(sop_class: str = CT_IMAGE, *, series_uid: str, rows: int, cols: int,
                 modality: str = "CT") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Synthetic^Phantom"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    return ds


def write_slice(path: Path, stored: np.ndarray, *, ipp: Sequence[float], iop: Sequence[float] = AXIAL,
                spacing: Sequence[float] = (1.0, 1.0), series_uid: str = "1.2.3.4.1", instance: int = 1,
                slope: float = 1.0, intercept: float = -1000.0, **extra) -> Path:
    """One classic single-frame slice; ``stored`` int16 (rows, cols); ``extra`` sets any keyword."""
    rows, cols = stored.shape
    ds = base_dataset(series_uid=series_uid, rows=rows, cols=cols, modality=extra.pop("Modality", "CT"))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.InstanceNumber = instance
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(z_mm: float, rows: int = 8, cols: int = 8) -> np.ndarray:
    """Stored values for HU = 10 * z + column index (intercept -1000)."""
    return np.rint(1000 + 10 * z_mm + np.arange(cols)[None, :] + np.zeros((rows, 1))).astype(np.int16)


def write_stack(folder: Path, depths: Sequence[float], *, iop: Sequence[float] = AXIAL,
                origin: Sequence[float] = (0.0, 0.0, 0.0), series_uid: str = "1.2.3.4.1",
                rows: int = 8, cols: int = 8, spacing: Sequence[float] = (1.0, 1.0),
                content: Callable[[float, int], np.ndarray] | None = None,
                names: Sequence[str] | None = None, **extra) -> list[Path]:
    """Slices at ``depths`` mm along the normal of ``iop`` from ``origin``; file ``k`` holds
    ``content(depth, k)`` (default: :func:`ramp`)."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    paths = []
    for k, d in enumerate(depths):
        ipp = np.asarray(origin, dtype=float) + d * normal
        stored = content(d, k) if content else ramp(d, rows, cols)
        name = names[k] if names else f"slice_{k:04d}.dcm"
        paths.append(write_slice(folder / name, stored, ipp=ipp, iop=iop, spacing=spacing,
                                 series_uid=series_uid, instance=k + 1, **extra))
    return paths


def write_enhanced(path: Path, depths: Sequence[float], *, series_uid: str = "1.2.3.4.9",
                   rows: int = 8, cols: int = 8, slopes: Sequence[float] | None = None) -> Path:
    """An Enhanced CT multi-frame file, frame ``k`` at ``depths[k]`` mm (axial) holding
    HU = 10 * z + column, with shared pixel measures/orientation and per-frame positions."""
    ds = base_dataset(ENHANCED_CT_IMAGE, series_uid=series_uid, rows=rows, cols=cols)
    ds.NumberOfFrames = len(depths)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    measures = Dataset()
    measures.PixelSpacing = ["0.5", "0.5"]
    measures.SliceThickness = "3"
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    for k, d in enumerate(depths):
        slope = slopes[k] if slopes else 1.0
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(d)]
        content = Dataset()
        content.InStackPositionNumber = k + 1
        transform = Dataset()
        transform.RescaleSlope = f"{slope:g}"
        transform.RescaleIntercept = "-1000"
        item = Dataset()
        item.PlanePositionSequence = [position]
        item.FrameContentSequence = [content]
        item.PixelValueTransformationSequence = [transform]
        frames.append(item)
        hu = 10 * d + np.arange(cols)[None, :] + np.zeros((rows, 1))
        pixels.append(np.rint((hu + 1000) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(np.stack(pixels).astype("<i2")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
