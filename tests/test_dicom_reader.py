"""fidkit.dicom.read_series on pydicom's bundled files and on series with known geometry."""
from __future__ import annotations

import math
import os
import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from dicom_synth import AXIAL, ramp, write_enhanced, write_slice, write_stack
from fidkit.dicom import read_series
from fidkit.errors import FidkitError, InputError


def _expected_hu(depths, cols=8):
    return np.array([10 * d + np.arange(cols) for d in depths])  # (z, x); constant down y


# --------------------------------------------------------------------------- pydicom's own files
def test_ct_small_values_and_spacing_match_pydicom(tmp_path):
    path = get_testdata_file("CT_small.dcm")
    shutil.copy(path, tmp_path / "ct.dcm")
    (vol,) = read_series(tmp_path)
    ds = pydicom.dcmread(path)
    reference = apply_modality_lut(ds.pixel_array, ds)  # pydicom's modality LUT, independent of ours
    np.testing.assert_array_equal(vol.array[0], reference.astype(np.float32))
    assert vol.array.dtype == np.float32 and vol.modality == "CT"
    assert vol.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert vol.positions[0] == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert float(vol.array.min()) == float(ds.pixel_array.min()) - 1024  # intercept applied


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm",
])
def test_mr_small_transfer_syntaxes_decode_to_the_same_volume(tmp_path, name):
    plain = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float32)
    shutil.copy(get_testdata_file(name), tmp_path / name)
    (vol,) = read_series(tmp_path)
    np.testing.assert_array_equal(vol.array[0], plain)
    assert vol.window == (600.0, 1600.0)  # the file's own WindowCenter/WindowWidth
    assert vol.spacing[1:] == pytest.approx((0.3125, 0.3125))


def test_bundled_folder_skips_non_images_and_reports_them(tmp_path):
    for name in ("CT_small.dcm", "MR_truncated.dcm", "rtplan.dcm", "test-SR.dcm", "rtdose.dcm",
                 "examples_rgb_color.dcm", "README.txt"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    found = read_series(tmp_path)
    assert len(found) == 1 and found[0].modality == "CT"
    reasons = {os.path.basename(s.path): s.reason for s in found.skipped}
    assert set(reasons) == {"MR_truncated.dcm", "rtplan.dcm", "test-SR.dcm", "rtdose.dcm",
                            "examples_rgb_color.dcm", "README.txt"}
    assert "RTPLAN" in reasons["rtplan.dcm"] and "SR" in reasons["test-SR.dcm"]
    assert "colour" in reasons["examples_rgb_color.dcm"]


# ------------------------------------------------------------------------------ known geometry
def test_shuffled_files_with_misleading_instance_number_and_slice_location(tmp_path):
    depths = [-20 + 2.5 * k for k in range(12)]
    shuffled = depths[:]
    random.Random(3).shuffle(shuffled)
    names = [f"{random.Random(k).getrandbits(40):x}.dcm" for k in range(12)]
    for k, d in enumerate(shuffled):
        # InstanceNumber runs the wrong way and SliceLocation is nonsense: only the positions count.
        write_slice(tmp_path / names[k], ramp(d), ipp=(5.0, -3.0, d), instance=100 - k,
                    SliceLocation=f"{(k * 37) % 11:g}")
    (vol,) = read_series(tmp_path)
    assert vol.positions == pytest.approx(depths)
    assert vol.spacing[0] == pytest.approx(2.5)
    np.testing.assert_allclose(vol.array[:, 3, :], _expected_hu(depths))
    assert vol.origin == pytest.approx((5.0, -3.0, -20.0))
    assert vol.warnings == []


def test_slice_thickness_is_not_the_spacing(tmp_path):
    write_stack(tmp_path, [1.25 * k for k in range(10)], SliceThickness="5")
    (vol,) = read_series(tmp_path)
    assert vol.spacing[0] == pytest.approx(1.25)
    assert any("SliceThickness 5" in w and "1.25" in w for w in vol.warnings)


def test_missing_slice_is_a_gap_with_numbers(tmp_path):
    depths = [2.0 * k for k in range(12) if k != 5]
    write_stack(tmp_path, depths)
    (vol,) = read_series(tmp_path)
    assert vol.shape[0] == 11 and vol.spacing[0] == pytest.approx(2.0)
    gap = [w for w in vol.warnings if w.startswith("gap")]
    assert gap and "1 missing" in gap[0] and "z=8.000 and z=12.000" in gap[0]


def test_variable_spacing_is_reported(tmp_path):
    depths = [0, 1, 2, 3, 5, 7, 9]
    write_stack(tmp_path, depths)
    (vol,) = read_series(tmp_path)
    assert vol.positions == pytest.approx(depths)
    assert vol.spacing[0] == pytest.approx(1.5)  # the median step
    assert any(w.startswith("variable spacing: steps from 1 to 2 mm") for w in vol.warnings)


def test_sagittal_stack(tmp_path):
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns run inferior
    # normal = row x column = (-1, 0, 0): positions along it are -x
    write_stack(tmp_path, [3.0 * k for k in range(6)], iop=iop, origin=(0.0, -10.0, 40.0),
                spacing=(0.7, 0.9))
    (vol,) = read_series(tmp_path)
    assert vol.normal == pytest.approx((-1.0, 0.0, 0.0))
    assert vol.spacing == pytest.approx((3.0, 0.7, 0.9))
    assert vol.positions == pytest.approx([3.0 * k for k in range(6)])
    assert vol.origin == pytest.approx((0.0, -10.0, 40.0))
    np.testing.assert_allclose(vol.array[:, 0, :], _expected_hu([3.0 * k for k in range(6)]))


def test_oblique_stack(tmp_path):
    a = math.radians(30)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))
    depths = [1.5 * k for k in range(8)]
    files = write_stack(tmp_path, depths, iop=iop, origin=(1.0, 2.0, 3.0))
    random.Random(1).shuffle(files)
    (vol,) = read_series(tmp_path)
    assert vol.normal == pytest.approx((0.0, -math.sin(a), math.cos(a)), abs=1e-6)
    assert vol.spacing[0] == pytest.approx(1.5, abs=1e-5)
    assert np.diff(vol.positions) == pytest.approx([1.5] * 7, abs=1e-5)
    np.testing.assert_allclose(vol.array[:, 0, :], _expected_hu(depths), atol=1e-3)
    assert vol.warnings == []  # oblique is not tilt: origins move along the normal


def test_gantry_tilt_is_detected_and_the_shear_undone(tmp_path):
    # A 30 degree tilted gantry: slice planes tilted, the table (the origins) moving along z by 2 mm.
    a = math.radians(30)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))
    col = np.array(iop[3:])
    rows = 12
    for k in range(6):
        ipp = (0.0, 0.0, 2.0 * k)
        # HU = 10 * (distance along the column direction from slice 0's origin): a fixed anatomy.
        u0 = float(np.dot(ipp, col))  # = 2k sin(30) = k mm, i.e. k rows at 1 mm pixels
        stored = np.rint(1000 + 10 * (u0 + np.arange(rows)[:, None]) + np.zeros((1, 8))).astype(np.int16)
        write_slice(tmp_path / f"t{k}.dcm", stored, ipp=ipp, iop=iop, GantryDetectorTilt="30")
    (vol,) = read_series(tmp_path)
    assert vol.spacing[0] == pytest.approx(2.0 * math.cos(a), abs=1e-5)
    tilt = [w for w in vol.warnings if w.startswith("gantry tilt")]
    assert tilt and "tilt 30.00 deg" in tilt[0]
    for k in range(6):  # after the shear correction every slice shows the same anatomy per row
        np.testing.assert_allclose(vol.array[k, k:, 2], 10 * np.arange(k, rows), atol=1e-3)


def test_two_series_in_one_folder(tmp_path):
    write_stack(tmp_path, [0, 1, 2, 3], series_uid="1.2.3.4.1", names=[f"a{k}.dcm" for k in range(4)])
    write_stack(tmp_path, [0, 2, 4], series_uid="1.2.3.4.2", names=[f"b{k}.dcm" for k in range(3)])
    found = read_series(tmp_path)
    got = {v.series_uid: (v.shape[0], v.spacing[0]) for v in found}
    assert got == {"1.2.3.4.1": (4, pytest.approx(1.0)), "1.2.3.4.2": (3, pytest.approx(2.0))}


def test_localizer_inside_a_series_becomes_its_own_volume(tmp_path):
    write_stack(tmp_path, [0, 1, 2, 3, 4], ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    write_slice(tmp_path / "scout.dcm", ramp(0, 8, 8), ipp=(0, 0, 50), iop=(0, 1, 0, 0, 0, -1),
                ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    found = read_series(tmp_path)
    main = [v for v in found if not v.is_localizer]
    scout = [v for v in found if v.is_localizer]
    assert len(main) == 1 and main[0].shape[0] == 5 and main[0].spacing[0] == pytest.approx(1.0)
    assert len(scout) == 1 and "localizer" in scout[0].label and main[0].warnings == []


def test_duplicate_slice_is_dropped_with_a_warning(tmp_path):
    paths = write_stack(tmp_path, [0, 1, 2, 3, 4, 5])
    shutil.copy(paths[3], tmp_path / "copy_of_3.dcm")
    (vol,) = read_series(tmp_path)
    assert vol.shape[0] == 6 and vol.positions == pytest.approx(range(6))
    assert any(w.startswith("duplicates: dropped 1 slice(s)") and "identical" in w for w in vol.warnings)


def test_two_echoes_in_one_series(tmp_path):
    depths = [0, 2, 4, 6]
    for echo, offset in ((1, 0), (2, 500)):
        write_stack(tmp_path, depths, names=[f"e{echo}_{k}.dcm" for k in range(4)], EchoNumbers=echo,
                    EchoTime=f"{10 * echo}", content=lambda d, k, o=offset: ramp(d) + o, Modality="MR")
    found = read_series(tmp_path)
    assert len(found) == 2
    by_label = {v.label.split(",")[0]: v for v in found}
    assert set(by_label) == {"echo 1", "echo 2"}
    for label, offset in (("echo 1", 0), ("echo 2", 500)):
        v = by_label[label]
        assert v.shape[0] == 4 and v.spacing[0] == pytest.approx(2.0) and v.warnings == []
        np.testing.assert_allclose(v.array[:, 0, :], _expected_hu(depths) + offset)


def test_per_slice_rescale_with_fractional_slope(tmp_path):
    slopes = [0.25, 1.0, 2.5, 0.125]
    intercepts = [-1024.0, -1000.0, 7.5, 0.0]
    for k, (m, b) in enumerate(zip(slopes, intercepts)):
        stored = np.arange(64, dtype=np.int16).reshape(8, 8) + 3 * k
        write_slice(tmp_path / f"r{k}.dcm", stored, ipp=(0, 0, k), slope=m, intercept=b)
    (vol,) = read_series(tmp_path)
    for k, (m, b) in enumerate(zip(slopes, intercepts)):
        expected = (np.arange(64).reshape(8, 8) + 3 * k) * m + b
        np.testing.assert_array_equal(vol.array[k], expected.astype(np.float32))
    assert vol.array[0, 0, 1] == pytest.approx(-1023.75)  # a fraction survives (float32)


def test_monochrome1_is_recorded(tmp_path):
    write_stack(tmp_path, [0, 1], PhotometricInterpretation="MONOCHROME1", Modality="CR")
    (vol,) = read_series(tmp_path)
    assert vol.photometric == "MONOCHROME1"


def test_enhanced_multiframe_stored_out_of_order(tmp_path):
    depths = [4.0, 0.0, 6.0, 2.0, 8.0]
    write_enhanced(tmp_path / "enhanced.dcm", depths, slopes=[1, 0.5, 2, 1, 0.25])
    (vol,) = read_series(tmp_path)
    assert vol.positions == pytest.approx([0, 2, 4, 6, 8])
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_allclose(vol.array[:, 1, :], _expected_hu([0, 2, 4, 6, 8]), atol=1.0)
    assert any("SliceThickness 3" in w for w in vol.warnings)
    assert vol.files[0].endswith("enhanced.dcm#frame2")


def test_junk_files_mixed_in(tmp_path):
    paths = write_stack(tmp_path / "series", [0, 1, 2, 3])
    (tmp_path / "series" / "empty.dcm").write_bytes(b"")
    (tmp_path / "series" / "._slice_0000.dcm").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 200)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "noise.dcm").write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(3000)))
    data = paths[0].read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 50])
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "report.dcm")
    found = read_series(tmp_path)
    assert len(found) == 1 and found[0].shape[0] == 4 and found[0].warnings == []
    skipped = {os.path.basename(s.path) for s in found.skipped}
    assert skipped == {"empty.dcm", "._slice_0000.dcm", "notes.txt", "noise.dcm", "truncated.dcm",
                       "report.dcm"}


def test_random_bytes_never_raise_anything_but_fidkit_errors(tmp_path):
    rng = random.Random(7)
    header = b"\0" * 128 + b"DICM"
    good = write_stack(tmp_path / "src", [0])[0].read_bytes()
    for case in range(30):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        if case % 3 == 0:
            blob = header + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
        else:  # a real file with a few bytes flipped: hits deeper parsing paths
            blob = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                blob[rng.randrange(132, len(blob))] = rng.getrandbits(8)
            blob = bytes(blob[: rng.randint(132, len(blob))])
        (folder / "x.dcm").write_bytes(blob)
        try:
            read_series(folder)
        except FidkitError:
            pass


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_series(tmp_path / "nope")


def test_legacy_multiframe_steps_frames_along_the_normal(tmp_path):
    from dicom_synth import base_dataset

    ds = base_dataset(series_uid="1.2.3.4.5", rows=8, cols=8, modality="NM")
    ds.NumberOfFrames = 4
    ds.ImagePositionPatient = [0, 0, -10]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.PixelSpacing = [2, 2]
    ds.SpacingBetweenSlices = "2.5"
    ds.SliceThickness = "2.5"
    depths = [-10 + 2.5 * k for k in range(4)]
    ds.PixelData = np.stack([ramp(d) for d in depths]).astype("<i2").tobytes()
    ds.RescaleIntercept, ds.RescaleSlope = "-1000", "1"
    ds.save_as(tmp_path / "nm.dcm", enforce_file_format=True)
    (vol,) = read_series(tmp_path)
    assert vol.positions == pytest.approx(depths) and vol.spacing == pytest.approx((2.5, 2.0, 2.0))
    np.testing.assert_allclose(vol.array[:, 0, :], _expected_hu(depths))
    assert any(w.startswith("legacy multi-frame") and "2.5 mm" in w for w in vol.warnings)


def test_real_ct_series_from_pydicom_dicomdir_tests(tmp_path):
    # Five 16x16 CT slices of a real exam (files named by offset, InstanceNumber running inferiorly).
    source = os.path.join(os.path.dirname(get_testdata_file("CT_small.dcm")), "dicomdirtests",
                          "98892001", "CT5N")
    shutil.copytree(source, tmp_path / "CT5N")
    (vol,) = read_series(tmp_path)
    datasets = sorted((pydicom.dcmread(os.path.join(source, f)) for f in os.listdir(source)),
                      key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert vol.positions == pytest.approx([float(ds.ImagePositionPatient[2]) for ds in datasets])
    assert vol.spacing == pytest.approx((2.5, *[float(v) for v in datasets[0].PixelSpacing]))
    for k, ds in enumerate(datasets):
        np.testing.assert_array_equal(vol.array[k], apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert vol.warnings == [] and vol.window == (40.0, 400.0)
