"""DicomSource, DicomOptions, detection, the 'fidkit dicom' verb, the montage, and FID end to end."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_synth import ramp, write_stack
from fidkit.cli import main
from fidkit.dicom import DicomOptions, DicomSource, is_dicom_folder, read_series, resample, window
from fidkit.errors import InputError, UsageError
from fidkit.montage import write_montage


def _ct_folder(path, depths, offset=0, **extra):
    write_stack(path, depths, rows=16, cols=16, content=lambda d, k: ramp(d, 16, 16) + offset
                + (np.arange(16)[:, None] * 7 % 40).astype(np.int16), **extra)
    return path


# ----------------------------------------------------------------------------------- options
def test_options_from_cli_strings():
    o = DicomOptions.from_cli("1.0", "-1000,1000", "axial", "central:0.5")
    meta = o.to_meta()
    assert meta["spacing_mm"] == [1.0, None, None]
    assert meta["window"]["low"] == -1000 and meta["window"]["high"] == 1000
    assert meta["axis"] == "axial" and meta["slices"] == "central:0.5"
    assert json.loads(json.dumps(meta)) == meta
    assert DicomOptions.from_cli("1.0,0.8,keep").spacing == (1.0, 0.8, None)
    assert DicomOptions.from_cli("keep").spacing is None
    assert DicomOptions.from_cli(window="40/400").window == (40.0, 400.0)
    # a preset and the same numbers give the same record, so compare accepts them as equal
    assert DicomOptions.from_cli(window="soft-tissue").to_meta() == DicomOptions(window=(40, 400)).to_meta()
    assert DicomOptions().to_meta()["window"] == "file"


@pytest.mark.parametrize("kwargs", [
    {"spacing": "0"}, {"spacing": "1,2"}, {"spacing": "abc"}, {"window": "wide"}, {"window": "5,1"},
    {"window": "40/0"}, {"axis": "oblique"}, {"slices": "some"}, {"window": "1,2,3"},
])
def test_bad_option_strings_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        DicomOptions.from_cli(**kwargs)


def test_is_dicom_folder(tmp_path):
    _ct_folder(tmp_path / "ct" / "nested", [0, 1])
    (tmp_path / "png").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "png" / "a.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "IM0001")  # no suffix, DICM preamble
    assert is_dicom_folder(tmp_path / "ct")
    assert is_dicom_folder(tmp_path / "IM0001")
    assert not is_dicom_folder(tmp_path / "png")
    assert not is_dicom_folder(tmp_path / "missing")
    assert not is_dicom_folder(tmp_path / "png" / "a.png")


# ------------------------------------------------------------------------------------ source
def test_source_slices_match_the_pipeline_by_hand(tmp_path):
    folder = _ct_folder(tmp_path / "ct", [0.9 * k for k in range(10)], SliceThickness="2")
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "plan.dcm")
    (folder / "._junk").write_bytes(b"x")
    options = DicomOptions(spacing=(1.0, None, None), window=(40, 400), slices="every:3")
    source = DicomSource(folder, options)
    (vol,) = read_series(folder)
    by_hand = resample(vol, (1.0, None, None))
    assert by_hand.shape[0] == 9  # 10 x 0.9 mm = 9 mm
    assert len(source) == 3
    for i, k in enumerate([0, 3, 6]):
        expected = window(by_hand.array[k], 40, 400)
        np.testing.assert_array_equal(source.load(i), np.repeat(expected[:, :, None], 3, 2))
    assert "slice 3" in source.item_name(1) and f"z={by_hand.positions[3]:.1f} mm" in source.item_name(1)
    described = source.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "dicom" and described["slices"] == 3 and described["skipped_files"] == 2
    assert any("SliceThickness 2" in w for w in described["warnings"])


def test_source_on_a_folder_without_images_is_one_input_error(tmp_path):
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="no usable DICOM image series") as info:
        DicomSource(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_file_window_missing_is_an_input_error(tmp_path):
    _ct_folder(tmp_path, [0, 1])
    with pytest.raises(InputError, match="--window"):
        DicomSource(tmp_path, DicomOptions(window="file"))


# ---------------------------------------------------------------------------------- CLI, montage
def test_cli_export_writes_what_the_source_loads(tmp_path, capsys):
    folder = _ct_folder(tmp_path / "ct", [2.0 * k for k in range(6)])
    out = tmp_path / "png"
    code = main(["dicom", "export", str(folder), str(out), "--spacing", "keep", "--window", "lung",
                 "--slices", "central:0.5", "--montage", str(tmp_path / "m.png")])
    assert code == 0
    source = DicomSource(folder, DicomOptions(spacing=None, window="lung", slices="central:0.5"))
    files = sorted(out.glob("*.png"))
    assert len(files) == len(source) == 3
    for i, f in enumerate(files):
        np.testing.assert_array_equal(np.asarray(Image.open(f)), source.load(i))
    record = json.loads((out / "export.json").read_text())
    assert record["source"]["options"]["window"]["center"] == -600
    assert Image.open(tmp_path / "m.png").size[0] > 0
    assert main(["dicom", "export", str(folder), str(out), "--spacing", "keep", "--window", "lung"]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["dicom", "export", str(tmp_path), str(tmp_path / "o"), "--window", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad --window" in err
    assert main(["dicom", "info", str(tmp_path / "missing")]) == 2


def test_cli_info_json(tmp_path, capsys):
    _ct_folder(tmp_path, [0, 1, 2, 4])
    assert main(["dicom", "info", str(tmp_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    (volume,) = record["volumes"]
    assert volume["shape"] == [4, 16, 16] and volume["spacing_mm"][0] == 1.0
    assert any(w.startswith("gap") for w in volume["warnings"])


def test_montage_places_tiles_and_labels(tmp_path):
    tiles = [np.full((20, 30, 3), v, np.uint8) for v in (50, 100, 150)]
    write_montage(tiles, ["a", "b", "c"], tmp_path / "m.png", columns=2, tile=30)
    grid = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    cell_w, cell_h = 30 + 8, 30 + 14 + 8
    assert grid.shape == (2 * cell_h, 2 * cell_w, 3)
    # tile n is centred in its cell: rows 4+5 .. 4+25, columns 4 .. 34
    assert (grid[9:29, 4:34] == 50).all()
    assert (grid[9:29, cell_w + 4:cell_w + 34] == 100).all()
    assert (grid[cell_h + 9:cell_h + 29, 4:34] == 150).all()
    assert (grid[34 + 1:cell_h - 2, 4:34] > 100).any()  # the label was drawn below the tile
    with pytest.raises(UsageError):
        write_montage(tiles, ["a"], tmp_path / "x.png")


# ------------------------------------------------------------------------------ FID end to end
_OPTS = ["--spacing", "1.5", "--window=-1000,1000", "--axis", "axial", "--slices", "every:2",
         "--device", "cpu", "--workers", "0"]


def _two_sides(tmp_path):
    real = _ct_folder(tmp_path / "real_ct", [1.5 * k for k in range(6)])
    fake = _ct_folder(tmp_path / "fake_ct", [1.5 * k for k in range(6)], offset=60, series_uid="1.2.3.4.77")
    return real, fake


def _check_dicom_meta(meta):
    dicom = meta["dicom"]
    assert dicom["spacing_mm"] == [1.5, None, None] and dicom["axis"] == "axial"
    assert dicom["slices"] == "every:2"
    assert (dicom["window"]["low"], dicom["window"]["high"]) == (-1000, 1000)
    assert meta["n"] == 3  # 6 slices at 1.5 mm kept as 6, every second one
    assert meta["source"]["kind"] == "dicom"


def test_compare_two_dicom_folders_end_to_end(tmp_path, test_weights, capsys):
    real, fake = _two_sides(tmp_path)
    assert main(["compare", str(real), str(fake), "--json", "--weights", str(test_weights), *_OPTS]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fid"] > 0
    _check_dicom_meta(report["generated"]["meta"])
    _check_dicom_meta(report["reference"]["meta"])


@pytest.mark.slow
def test_dicom_stats_file_records_options_and_compare_checks_them(tmp_path, test_weights, capsys):
    real, fake = _two_sides(tmp_path)
    weights = ["--weights", str(test_weights)]
    ref = tmp_path / "ref.pkl"
    assert main(["stats", str(real), "-o", str(ref), "--montage", str(tmp_path / "qc.png"), *weights, *_OPTS]) == 0
    from fidkit.api import load_statistics

    _check_dicom_meta(load_statistics(ref).meta)
    assert Image.open(tmp_path / "qc.png").size[0] > 0
    capsys.readouterr()
    assert main(["compare", str(ref), str(fake), *weights, *_OPTS]) == 0
    other = [o if o != "--window=-1000,1000" else "--window=lung" for o in _OPTS]
    assert main(["compare", str(ref), str(fake), *weights, *other]) == 4  # made differently: refused


def test_montage_enlarges_small_tiles_by_whole_factors(tmp_path):
    tile = np.zeros((4, 8, 3), np.uint8)
    tile[:, 4:] = 200  # right half bright
    write_montage([tile], ["x"], tmp_path / "m.png", tile=32)
    grid = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"))
    # 4x enlarged to 16 x 32, centred vertically: rows 4+8 .. 4+24, columns 4 .. 36
    block = grid[12:28, 4:36, 0]
    np.testing.assert_array_equal(block, np.kron(tile[:, :, 0], np.ones((4, 4), np.uint8)))
