"""DICOM series -> volumes with the right geometry -> windowed uint8 slices for FID.

Pipeline: :func:`read_series` (folder -> :class:`Volume` list, geometry from the patient frame),
:func:`resample` (to a target spacing in mm), :func:`window` (modality values -> uint8, DICOM LINEAR
VOI), :func:`slices` (uint8 RGB slices along a patient plane), and :class:`DicomSource` (all of it,
as an image source for ``fidkit stats``/``compare``). NIfTI files become the same :class:`Volume`
(:func:`read_nifti`); :class:`VolumeSource` serves datasets of volumes (:func:`open_volume_source`);
:mod:`fidkit.dicom.maisi` reproduces MONAI MAISI's 2.5-D FID inputs.
"""
from __future__ import annotations

from fidkit.dicom.reader import SeriesList, SkippedFile, read_series
from fidkit.dicom.resample import resample
from fidkit.dicom.slices import parse_selection, select_indices, slices
from fidkit.dicom.nifti import read_nifti
from fidkit.dicom.source import DicomOptions, DicomSource, VolumeSource, is_dicom_folder, open_volume_source
from fidkit.dicom.volume import Volume, canonical
from fidkit.dicom.window import WINDOW_PRESETS, range_to_window, window

__all__ = [
    "DicomOptions", "DicomSource", "SeriesList", "SkippedFile", "Volume", "VolumeSource", "WINDOW_PRESETS",
    "canonical", "is_dicom_folder", "open_volume_source", "parse_selection", "range_to_window",
    "read_nifti", "read_series", "resample", "select_indices", "slices", "window",
]
