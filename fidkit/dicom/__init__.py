"""DICOM series -> volumes with the right geometry -> windowed uint8 slices for FID.

Pipeline: :func:`read_series` (folder -> :class:`Volume` list, geometry from the patient frame),
:func:`resample` (to a target spacing in mm), :func:`window` (modality values -> uint8, DICOM LINEAR
VOI), :func:`slices` (uint8 RGB slices along a patient plane), and :class:`DicomSource` (all of it,
as an image source for ``fidkit stats``/``compare``).
"""
from __future__ import annotations

from fidkit.dicom.reader import SeriesList, SkippedFile, read_series
from fidkit.dicom.resample import resample
from fidkit.dicom.slices import parse_selection, select_indices, slices
from fidkit.dicom.source import DicomOptions, DicomSource, is_dicom_folder
from fidkit.dicom.volume import Volume
from fidkit.dicom.window import WINDOW_PRESETS, range_to_window, window

__all__ = [
    "DicomOptions", "DicomSource", "SeriesList", "SkippedFile", "Volume", "WINDOW_PRESETS",
    "is_dicom_folder", "parse_selection", "range_to_window", "read_series", "resample",
    "select_indices", "slices", "window",
]
