"""What a newcomer meets in the first hour (issue 20): the messages say what happened and name the
fix in both the Python API and the command line, and nothing the CLI shows is lost on the way.

* ``--skip-bad`` reports a skipped file with its reason, not with the advice to pass ``--skip-bad``;
* the DICOM reader's warnings (SliceThickness against the measured spacing, ...) reach ``stats``
  as ``fidkit: warning:`` lines and the Python API as :class:`fidkit.FidkitWarning`;
* ``fidkit dicom info --spacing/--window/--axis/--slices`` counts the slices without a network;
* errors raised by the library name the API argument and the CLI flag;
* NaN/inf inputs are reported as NaN/inf.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fidkit
from conftest import make_images, write_folder
from dicom_synth import write_stack
from fidkit.cli import main
from fidkit.errors import BadImageError, FidkitWarning, InputError, UsageError


def _common(weights: Path) -> list[str]:
    return ["--weights", str(weights), "--workers", "0", "--dims", "64", "--device", "cpu"]


# ------------------------------------------------------------------------------------ --skip-bad


@pytest.fixture
def one_bad(tmp_path) -> tuple[Path, Path]:
    folder = write_folder(tmp_path / "imgs", make_images(3, (24, 24), seed=3))
    bad = folder / "img_cut.png"
    bad.write_bytes((folder / "img_00000.png").read_bytes()[:50])  # a truncated PNG
    return folder, bad


def test_skip_bad_reports_the_reason_without_suggesting_the_flag(one_bad, test_weights, tmp_path,
                                                                 capsys):
    folder, bad = one_bad
    out, manifest = tmp_path / "out.pkl", tmp_path / "manifest.json"
    assert main(["stats", str(folder), "-o", str(out), "--skip-bad", "--manifest", str(manifest),
                 *_common(test_weights)]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "skipped 1" in x]
    reason = line.split(bad.name, 1)[1]  # after the path (the test folder's name has "skip")
    assert "cannot decode" in reason and "skip" not in reason.lower()
    (entry,) = json.loads(manifest.read_text())["skipped"]
    assert Path(entry["item"]).name == bad.name
    assert "skip" not in entry["reason"].split(bad.name, 1)[1].lower()


def test_without_skip_bad_the_error_names_the_argument_and_the_flag(one_bad, test_weights, capsys):
    folder, bad = one_bad
    assert main(["stats", str(folder), "-o", str(folder.parent / "x.pkl"),
                 *_common(test_weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad.name in err
    assert "skip_bad=True" in err and "--skip-bad" in err
    with pytest.raises(BadImageError, match=r"skip_bad=True / --skip-bad"):
        fidkit.compute_statistics(folder, weights=test_weights, dims=64, workers=0,
                                  progress=False, cache=False)


# ------------------------------------------------------------------------- DICOM reader warnings


def _thick_ct(folder: Path) -> Path:
    # Slices 1.25 mm apart that claim to be 5 mm thick: the reader warns (and uses 1.25 mm).
    write_stack(folder, [1.25 * k for k in range(8)], SliceThickness="5")
    return folder


def test_stats_on_dicom_says_the_readers_warnings(tmp_path, test_weights, capsys):
    folder = _thick_ct(tmp_path / "ct")
    dicom = ["--window=-1000,1000", "--slices", "every:4"]
    assert main(["stats", str(folder), "-o", str(tmp_path / "ct.pkl"), *dicom,
                 *_common(test_weights)]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "SliceThickness 5" in x]
    assert len(lines) == 1 and lines[0].startswith("fidkit: warning: ") and str(folder) in lines[0]
    # what `fidkit dicom info` shows for the same folder
    assert main(["dicom", "info", str(folder)]) == 0
    assert "SliceThickness 5" in capsys.readouterr().out


def test_api_warns_the_readers_warnings_also_from_the_cache(tmp_path, test_weights):
    from fidkit.dicom import DicomOptions

    folder = _thick_ct(tmp_path / "ct")
    options = dict(weights=test_weights, dims=64, workers=0, progress=False,
                   dicom=DicomOptions(window=(0, 2000), slices="every:4"))
    for _ in range(2):  # computed, then reused from the stats cache: the same warning
        with pytest.warns(FidkitWarning, match=r"SliceThickness 5 mm differs"):
            fidkit.compute_statistics(folder, **options)


# ------------------------------------------------------------------------ dicom info --axis ...


def test_dicom_info_previews_the_slice_count(tmp_path, capsys):
    folder = tmp_path / "ct"
    write_stack(folder, [float(k) for k in range(10)], rows=8, cols=6)  # 10 x 8 x 6 voxels
    argv = ["dicom", "info", str(folder), "--spacing", "keep", "--window=-1000,1000", "--axis",
            "all", "--slices", "every:2"]
    assert main([*argv, "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)["preview"]
    # every second slice of each plane: axial ceil(10/2), coronal ceil(8/2), sagittal ceil(6/2)
    assert preview["per_volume"][0]["slices"] == {"axial": 5, "coronal": 4, "sagittal": 3}
    assert preview["slices"] == 12 and preview["options"]["axis"] == "all"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "12 slice(s) from 1 volume(s)" in out and "axial 5, coronal 4, sagittal 3" in out
    # and it is what the pipeline takes: the slices `dicom export` writes with the same options
    assert main(["dicom", "export", str(folder), str(tmp_path / "png"), *argv[3:]]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 12


def test_dicom_info_previews_a_nifti_dataset_per_volume_without_torch(tmp_path):
    import nibabel as nib

    for name, shape in (("a.nii.gz", (6, 7, 5)), ("b.nii.gz", (4, 3, 9))):  # x, y, z voxels
        nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(tmp_path / name))
    code = ("import json, sys; from fidkit.cli import main; "
            f"rc = main(['dicom', 'info', {str(tmp_path)!r}, '--axis', 'all', '--window', 'lung', "
            "'--spacing', 'keep', '--json']); "
            "assert 'torch' not in sys.modules, 'a network was loaded'; sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    per_volume = json.loads(run.stdout)["preview"]["per_volume"]
    # axial slices run along z, coronal along y, sagittal along x
    assert [v["slices"] for v in per_volume] == [
        {"axial": 5, "coronal": 7, "sagittal": 6}, {"axial": 9, "coronal": 3, "sagittal": 4}]


# ------------------------------------------------------------------ API errors name both names


def test_library_errors_name_the_api_argument_and_the_flag(tmp_path, test_weights):
    images = make_images(2, (16, 16), seed=1)
    with pytest.raises(UsageError) as info:
        fidkit.compute_statistics(images, weights=test_weights, dims=64, batch_size=0,
                                  progress=False, cache=False)
    assert "batch_size" in str(info.value) and "--batch-size" in str(info.value)
    with pytest.raises(UsageError) as info:
        fidkit.compute_statistics(images, weights=test_weights, dims=64, workers=-1,
                                  progress=False, cache=False)
    assert "workers (--workers)" in str(info.value)
    with pytest.raises(UsageError) as info:
        fidkit.compute_statistics(images, weights=test_weights, dims=100, progress=False)
    assert "dims=" in str(info.value) and "--dims" in str(info.value)
    nested = tmp_path / "outer"
    write_folder(nested / "inner", images)
    with pytest.raises(InputError) as info:
        fidkit.compute_statistics(nested, weights=test_weights, dims=64, progress=False)
    assert "recursive=True" in str(info.value) and "--recursive" in str(info.value)
    folder = tmp_path / "ct"
    write_stack(folder, [0.0, 1.0])  # no stored window
    from fidkit.dicom import DicomOptions, DicomSource

    with pytest.raises(InputError) as info:
        DicomSource(folder, DicomOptions(window="file"))
    assert "window=" in str(info.value) and "--window" in str(info.value)
    assert "\n" not in str(info.value)


def test_volume_and_diversity_errors_name_the_argument_and_the_flag(tmp_path):
    from fidkit.diversity import scale_weights
    from fidkit.volumes import resolve_protocol

    checks = [
        (lambda: resolve_protocol("volume-3d", None), ("features='medicalnet-resnet10'",
                                                       "--features medicalnet-resnet10")),
        (lambda: resolve_protocol("maisi-2.5d", "medicalnet-resnet10"), ("protocol=",
                                                                        "--protocol")),
        (lambda: scale_weights(9), ("msssim={'scales'", "--msssim-scales")),
        (lambda: fidkit.compare(tmp_path, tmp_path, protocol="maisi-2.5d", ci=0.95),
         ("ci=", "--ci")),
    ]
    for call, names in checks:
        with pytest.raises(UsageError) as info:
            call()
        assert all(name in str(info.value) for name in names), str(info.value)


def test_the_cache_note_names_the_argument_and_the_flag(tmp_path, test_weights, capsys):
    folder = write_folder(tmp_path / "imgs", make_images(3, (16, 16), seed=2))
    options = dict(weights=test_weights, dims=64, workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidkitWarning)
        fidkit.compute_statistics(folder, **options)
        capsys.readouterr()
        fidkit.compute_statistics(folder, **options)
    err = capsys.readouterr().err
    assert "reusing" in err and "cache=False" in err and "--no-cache" in err


# ------------------------------------------------------------------------------------ NaN / inf


def test_a_nan_image_batch_is_reported_as_nan():
    images = np.full((2, 8, 8, 3), np.nan, np.float32)
    with pytest.raises(InputError, match="NaN or inf") as info:
        fidkit.compute_statistics(images, progress=False)
    assert "nan" not in str(info.value).replace("NaN", "")  # no "span [nan, nan]"


def test_nan_features_and_logits_are_refused_not_scored_nan():
    from fidkit.distances.inception_score import inception_score
    from fidkit.distances.kid import kid

    rng = np.random.default_rng(0)
    good, bad = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    bad[5, 3] = np.inf
    with pytest.raises(InputError, match=r"second feature set: row 5 of 12 holds NaN or inf"):
        kid(good, bad, subset_size=6, subsets=2)
    logits = rng.normal(size=(12, 1008))
    logits[7, 0] = np.nan
    with pytest.raises(InputError, match=r"logits: row 7 of 12 holds NaN or inf"):
        inception_score(logits, splits=2, shuffle=False)


def test_streaming_metric_reports_a_nan_batch_as_nan(test_weights):
    import torch

    metric = fidkit.FID(dims=64, weights=test_weights, device="cpu", input_range=(-1, 1))
    batch = torch.zeros(2, 3, 16, 16)
    batch[1, 0, 3, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or inf") as info:
        metric.update(batch)
    assert "span" not in str(info.value)
