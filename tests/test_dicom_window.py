"""Windowing (against pydicom's VOI LUT), presets, MONOCHROME1, slice planes and selection."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from dicom_synth import write_stack
from fidkit.dicom import WINDOW_PRESETS, Volume, range_to_window, read_series, select_indices, slices, window
from fidkit.errors import InputError, UsageError


@pytest.mark.parametrize("center,width", [(40, 400), (-600, 1500), (40, 80), (0.5, 2001), (10, 2), (3, 1)])
def test_window_matches_pydicom_linear_voi(center, width):
    ds = Dataset()  # an 8-bit output range makes pydicom's VOI LUT produce 0..255
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 8, 0, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, "LINEAR"
    x = np.linspace(center - width, center + width, 4001)
    reference = np.floor(apply_windowing(x.copy(), ds) + 0.5)
    got = window(x, center, width)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference)


def test_range_maps_low_to_0_and_high_to_255_linearly():
    c, w = range_to_window(-1000, 1000)
    x = np.array([-2000, -1000, -1000 + 2000 / 255 * 100, 1000, 3000])
    np.testing.assert_array_equal(window(x, c, w), [0, 0, 100, 255, 255])


def test_presets_are_the_named_windows():
    assert WINDOW_PRESETS["brain"] == (40, 80)
    assert WINDOW_PRESETS["soft_tissue"] == (40, 400)
    assert WINDOW_PRESETS["lung"] == (-600, 1500)
    assert WINDOW_PRESETS["bone"] == (400, 1800)


def test_bad_width_is_a_usage_error():
    with pytest.raises(UsageError):
        window(np.zeros(3), 0, 0)


def _axial_volume(photometric="MONOCHROME2", window_cw=None) -> Volume:
    # z index k, row i, column j holds 100*k + 10*i + j: every voxel says where it is
    k, i, j = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    return Volume(array=(100 * k + 10 * i + j).astype(np.float32), spacing=(1.0, 1.0, 1.0),
                  positions=np.arange(3.0), origin=np.zeros(3), orientation=np.eye(3),
                  photometric=photometric, window=window_cw)


def test_monochrome1_is_inverted_after_windowing():
    mono2 = list(slices(_axial_volume(), window=(128, 256)))
    mono1 = list(slices(_axial_volume("MONOCHROME1"), window=(128, 256)))
    for a, b in zip(mono2, mono1):
        np.testing.assert_array_equal(b, 255 - a)
    assert mono2[0][0, 0, 0] == 0 and mono1[0][0, 0, 0] == 255


def test_slices_are_rgb_uint8_and_the_file_window_is_used():
    vol = _axial_volume(window_cw=(128.0, 256.0))
    out = list(slices(vol, window="file"))
    assert len(out) == 3 and out[0].shape == (4, 5, 3) and out[0].dtype == np.uint8
    np.testing.assert_array_equal(out[1], window(np.repeat(vol.array[1][:, :, None], 3, 2), 128, 256))
    with pytest.raises(InputError, match="no WindowCenter"):
        list(slices(_axial_volume(), window="file"))


def test_coronal_and_sagittal_cuts_of_an_axial_volume_put_superior_at_the_top():
    vol = _axial_volume()
    cor = [s[:, :, 0] for s in slices(vol, window=(256, 512), axis="coronal")]
    sag = [s[:, :, 0] for s in slices(vol, window=(256, 512), axis="sagittal")]
    assert len(cor) == 4 and cor[0].shape == (3, 5)  # one per row index, z by x
    assert len(sag) == 5 and sag[0].shape == (3, 4)
    # the top row is the highest z (LPS z points superior), values fall going down
    assert cor[0][0, 0] > cor[0][1, 0] > cor[0][2, 0]
    assert sag[0][0, 0] > sag[0][2, 0]


def test_axial_cut_of_a_sagittal_stack_uses_the_superior_inferior_array_axis(tmp_path):
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # columns run inferior
    write_stack(tmp_path, [1.0 * k for k in range(4)], iop=iop, rows=6, cols=5)
    (vol,) = read_series(tmp_path)
    axial = list(slices(vol, window=(0, 4000), axis="axial"))
    assert len(axial) == 6  # one per row of the sagittal images
    sagittal = list(slices(vol, window=(0, 4000), axis="sagittal"))
    assert len(sagittal) == 4 and sagittal[0].shape[:2] == (6, 5)


def test_selection():
    assert select_indices(10, "all") == list(range(10))
    assert select_indices(10, "central:0.5") == [2, 3, 4, 5, 6]
    assert select_indices(10, "every:4") == [0, 4, 8]
    assert select_indices(10, "central:0.6,every:2") == [2, 4, 6]
    for bad in ("central:0", "central:1.5", "every:0", "middle", "every:x"):
        with pytest.raises(UsageError):
            select_indices(10, bad)
    assert len(list(slices(_axial_volume(), window=(0, 512), select="every:2"))) == 2


def test_monochrome1_series_end_to_end(tmp_path):
    from fidkit.dicom import DicomOptions, DicomSource

    write_stack(tmp_path / "m1", [0, 1, 2], PhotometricInterpretation="MONOCHROME1")
    write_stack(tmp_path / "m2", [0, 1, 2])
    options = DicomOptions(spacing=None, window=(0, 100))
    m1, m2 = DicomSource(tmp_path / "m1", options), DicomSource(tmp_path / "m2", options)
    for i in range(3):
        np.testing.assert_array_equal(m1.load(i), 255 - m2.load(i))
    # HU 10 z + column; with c=0, w=100 the ramp starts at -50: slice z=0, column 0 is HU 0 -> 128
    assert m2.load(0)[0, 0, 0] == window(np.array([0.0]), 0, 100)[0]


def test_sagittal_stack_cut_axially_shows_values_from_the_right_places(tmp_path):
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # image rows run posterior, columns run inferior
    depths = [1.0 * k for k in range(4)]  # positions along the normal (-x): x = 0, -1, -2, -3
    # HU = 100 * row index (row i lies i mm inferior) + 10 * depth + column (= mm posterior)
    write_stack(tmp_path, depths, iop=iop, rows=6, cols=5,
                content=lambda d, k: (1000 + 100 * np.arange(6)[:, None] + 10 * d + np.arange(5)[None, :]).astype(np.int16))
    (vol,) = read_series(tmp_path)
    hu = vol.array
    # axial slice k is image row k of the sagittal stack (row 0 = the most superior)
    top = [s[:, :, 0] for s in slices(vol, window=(20, 40), axis="axial")]
    grey = window(hu[:, 0, :], 20, 40)  # (depth, column) = (x, y) of that axial plane
    assert grey.max() - grey.min() > 150
    # display: rows anterior -> posterior (column index grows posterior: as stored),
    # columns patient right -> left (x grows left; depth runs -x, so depth is reversed)
    np.testing.assert_array_equal(top[0], grey.T[:, ::-1])
