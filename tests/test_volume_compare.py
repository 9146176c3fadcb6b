"""``fidkit compare`` on medical volumes, end to end on the CPU, against independent computations.

* ``--protocol maisi-2.5d``: NIfTI folders of 24^3 phantoms through the CLI with random
  ``radimagenet-resnet50`` weights; each plane's FID must equal the one computed here from MONAI's
  own transforms chained as MAISI's script chains them, the script's plane cutting (its text, as
  tests/test_maisi.py writes it), torchvision's ResNet-50 in the Keras layout
  (tests/test_extractor_radimagenet.py) and the Fréchet formula on np.mean / np.cov.
* The same phantoms as DICOM series folders give bit-identical statistics.
* ``--features medicalnet-resnet10 --volume-shape``: nibabel's canonical array, MedicalNet's own
  ``scipy.ndimage.zoom(order=0)``, MONAI's ``medicalnet_intensity_normalisation`` and MONAI's
  resnet10 with MedicalNet's arguments (tests/test_extractor_medicalnet.py).
* ``--metrics msssim`` equals ``msssim_diversity`` on the same samples and pairs.
* Protocol mismatches exit 4; a plain compare of NIfTI folders (slices) records the volumes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

monai = pytest.importorskip("monai")
torch = pytest.importorskip("torch")
import nibabel as nib  # noqa: E402

from dicom_synth import write_stack  # noqa: E402
from fidkit.cli import main  # noqa: E402
from fidkit.dicom.maisi import PLANES, MaisiOptions  # noqa: E402
from fidkit.errors import EXIT_MISMATCH, ProvenanceMismatchError, UsageError  # noqa: E402
from fidkit.extractors import get_extractor  # noqa: E402

COUNT = 3
SHAPE = (16, 16, 16)
MAISI_SHAPE = (12, 20, 16)  # crops x, pads y (with -1000), keeps z
VOLUME_SHAPE = (8, 16, 16)
#: Three stored layouts, so the RAS reorientation is exercised (LPS affine -> NIfTI RAS affine).
AFFINES_LPS = [
    np.array([[0.75, 0, 0, 5.0], [0, 1.5, 0, -3.0], [0, 0, 2.0, 1.0], [0, 0, 0, 1.0]]),
    np.array([[1.0, 0, 0, 0.0], [0, 1.0, 0, 0.0], [0, 0, 1.0, 0.0], [0, 0, 0, 1.0]]),
    np.array([[1.25, 0, 0, -7.0], [0, 0.5, 0, 2.0], [0, 0, 1.5, 4.0], [0, 0, 0, 1.0]]),
]


def _phantom(seed: int, shift: float) -> np.ndarray:
    """HU (i=x towards L, j=y towards P, k=z towards S): smooth tissue, noise, a bright block
    placed by the seed, values beyond the clip range; ``shift`` separates the two sides."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.zoom(rng.random((4, 4, 4)), 4, order=1)[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    hu = -900 + 1400 * smooth + rng.normal(0, 150, SHAPE) + shift
    a, b, c = rng.integers(1, 9, 3)
    hu[a:a + 6, b:b + 5, c:c + 4] = 1500
    return np.clip(hu, -1400, 1600).astype(np.int16)


def _write_nifti(path, data, affine_lps):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def _write_dicom(folder, data, affine_lps, uid):
    write_stack(folder, [affine_lps[2, 2] * k for k in range(data.shape[2])],
                origin=tuple(affine_lps[:3, 3]), rows=data.shape[1], cols=data.shape[0],
                spacing=(affine_lps[1, 1], affine_lps[0, 0]), series_uid=uid,
                content=lambda d, k: (data[:, :, k].T.astype(np.int32) + 1000).astype(np.int16))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    for side in ("real_nii", "fake_nii"):
        (root / side).mkdir()
    for n in range(COUNT):
        affine = AFFINES_LPS[n % len(AFFINES_LPS)]
        real, fake = _phantom(n, 0.0), _phantom(100 + n, 120.0)
        _write_nifti(root / "real_nii" / f"case{n}.nii.gz", real, affine)
        _write_dicom(root / "real_dcm" / f"case{n}", real, affine, f"1.2.3.9.{n}")
        _write_nifti(root / "fake_nii" / f"case{n}.nii", fake, affine)
    weights = root / "RadImageNet-ResNet50_notop.pth"
    assert main(["weights", "make-test", "--features", "radimagenet-resnet50", str(weights)]) == 0
    return root, weights


def _cpu(weights) -> list[str]:
    return ["--weights", str(weights), "--device", "cpu", "--workers", "0", "--batch-size", "64"]


def _run_json(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


# ----------------------------------------------------------------------------- references
def _monai_maisi(path, options: MaisiOptions) -> np.ndarray:
    from test_maisi import _monai_volume

    return _monai_volume(str(path), options)


def _reference_plane_features(folder, weights, options: MaisiOptions) -> dict[str, np.ndarray]:
    """Per plane, float64 (N, 2048) features of every volume: MONAI transforms, the script's plane
    cutting and scaling, torchvision's ResNet-50 in the Keras layout, spatial mean."""
    from test_extractor_radimagenet import keras_torchvision_resnet50
    from test_maisi import _script_planes

    state = get_extractor("radimagenet-resnet50").read_weights(weights)
    model = keras_torchvision_resnet50(state)
    out: dict[str, list] = {plane: [] for plane in PLANES}
    for path in sorted(folder.iterdir()):
        planes = _script_planes(_monai_maisi(path, options), options.center_slices_ratio)
        with torch.no_grad():
            for plane in PLANES:
                out[plane].append(model(torch.from_numpy(planes[plane])).double().numpy())
    return {plane: np.concatenate(rows) for plane, rows in out.items()}


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from fidkit.distances.frechet import frechet_distance

    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ----------------------------------------------------------------------------- maisi-2.5d
def test_maisi_cli_equals_an_independent_computation(data, tmp_path, capsys):
    root, weights = data
    montage = tmp_path / "qc.png"
    code, report, err = _run_json(capsys, "compare", root / "fake_nii", root / "real_nii",
                                  "--protocol", "maisi-2.5d", "--json", "--montage", montage,
                                  "--maisi-shape", ",".join(map(str, MAISI_SHAPE)), *_cpu(weights))
    assert code == 0, err
    options = MaisiOptions(target_shape=MAISI_SHAPE)
    fake = _reference_plane_features(root / "fake_nii", weights, options)
    real = _reference_plane_features(root / "real_nii", weights, options)
    expected = {plane: _frechet(fake[plane], real[plane]) for plane in PLANES}
    for plane in PLANES:
        assert report[f"fid_{plane}"] == pytest.approx(expected[plane], rel=1e-4), plane
        assert report["metrics"][f"fid_{plane}"]["n_generated"] == len(fake[plane])
        assert report["metrics"][f"fid_{plane}"]["n_reference"] == len(real[plane])
    assert report["fid"] == pytest.approx(np.mean(list(expected.values())), rel=1e-4)
    assert min(expected.values()) > 0
    # n per plane: x cropped to 12, y padded to 20, z 16 -> XY 16, YZ 12, ZX 20 slices per volume
    assert report["metrics"]["fid"]["n_generated"] == {"xy": 16 * COUNT, "yz": 12 * COUNT,
                                                       "zx": 20 * COUNT}
    described = report["metrics"]["fid"]
    assert described["extractor"] == "radimagenet-resnet50" and described["protocol"] == "maisi-2.5d"
    meta = report["generated"]["meta"]
    assert meta["protocol"]["name"] == "maisi-2.5d"
    assert meta["protocol"]["target_shape"] == list(MAISI_SHAPE)
    assert meta["convention"] == "maisi" and meta["source"]["volumes"] == COUNT
    from PIL import Image

    from fidkit.montage import LABEL_HEIGHT, PAD

    with Image.open(montage) as image:  # 3 volumes x 3 planes, 3 columns
        assert image.size == (3 * (160 + 2 * PAD), 3 * (160 + LABEL_HEIGHT + 2 * PAD))


@pytest.fixture(scope="module")
def plane_stats(data):
    from fidkit.extraction import Pipeline, Runtime
    from fidkit.volumes import maisi_statistics

    root, weights = data
    options = MaisiOptions(target_shape=MAISI_SHAPE)
    pipeline = Pipeline(weights=weights)
    runtime = Runtime(device="cpu", workers=1, batch_size=64, progress=False)
    return {name: maisi_statistics(root / name, options, pipeline, runtime)
            for name in ("real_nii", "real_dcm")}


def test_dicom_series_folders_give_the_statistics_of_their_nifti(plane_stats):
    nifti, dicom = plane_stats["real_nii"], plane_stats["real_dcm"]
    for plane in PLANES:
        np.testing.assert_array_equal(nifti[plane].mu, dicom[plane].mu)
        np.testing.assert_array_equal(nifti[plane].sigma, dicom[plane].sigma)
        assert nifti[plane].meta["protocol"] == dicom[plane].meta["protocol"]
        assert nifti[plane].meta["plane"] == plane
    assert dicom["xy"].meta["source"]["format"] == "dicom"
    assert nifti["xy"].meta["source"]["format"] == "nifti"


def test_plane_batches_equal_plane_inputs():
    from fidkit.dicom.maisi import plane_inputs
    from fidkit.volumes import plane_batches

    array = np.random.default_rng(3).uniform(-1000, 1000, (7, 9, 11)).astype(np.float32)
    for plane in PLANES:
        whole = plane_inputs(array, plane, 0.6)
        np.testing.assert_array_equal(np.concatenate(list(plane_batches(array, plane, 0.6, 2))), whole)


def test_maisi_mismatches_are_refused(data, plane_stats):
    import fidkit

    root, weights = data
    # Statistics of another target shape: refused before any network runs on the other side.
    with pytest.raises(ProvenanceMismatchError, match="protocols differ: target_shape"):
        fidkit.compare(root / "fake_nii", plane_stats["real_nii"], protocol="maisi-2.5d",
                       maisi=MaisiOptions(target_shape=(16, 16, 16)), weights=weights,
                       device="cpu", progress=False)
    swapped = dict(plane_stats["real_nii"], xy=plane_stats["real_nii"]["yz"])
    with pytest.raises(UsageError, match="plane yz"):
        fidkit.compare(root / "fake_nii", swapped, protocol="maisi-2.5d", weights=weights)
    # Statistics vs statistics: same protocol compares, without a network.
    same = fidkit.compare(plane_stats["real_dcm"], plane_stats["real_nii"], protocol="maisi-2.5d",
                          maisi=MaisiOptions(target_shape=MAISI_SHAPE), weights=weights)
    assert same.values["fid"] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- volume-3d
@pytest.fixture(scope="module")
def weights10(tmp_path_factory):
    path = tmp_path_factory.mktemp("medicalnet") / "resnet_10_23dataset.pth"
    get_extractor("medicalnet-resnet10").make_test_weights(path, seed=0)
    return path


def _reference_volume_features(folder, weights) -> np.ndarray:
    from monai.losses.perceptual import medicalnet_intensity_normalisation
    from scipy import ndimage
    from test_extractor_medicalnet import monai_resnet

    model = monai_resnet(10, get_extractor("medicalnet-resnet10").read_weights(weights), dilated=True)
    rows = []
    for path in sorted(folder.iterdir()):
        ras = np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(), dtype=np.float32)
        zyx = np.ascontiguousarray(ras[::-1, ::-1, :].transpose(2, 1, 0))  # (S, P, L)
        zoomed = ndimage.zoom(zyx, [t / s for t, s in zip(VOLUME_SHAPE, zyx.shape)], order=0)
        x = medicalnet_intensity_normalisation(torch.from_numpy(zoomed)[None, None])
        with torch.no_grad():
            rows.append(model(x.float()).double().numpy())
    return np.concatenate(rows)


def test_volume_3d_fd_equals_a_direct_computation(data, weights10, tmp_path, capsys):
    root, _ = data
    shape = ",".join(map(str, VOLUME_SHAPE))
    args = ["--features", "medicalnet-resnet10", "--convention", "zscore", "--volume-shape", shape,
            *_cpu(weights10)]
    code, report, err = _run_json(capsys, "compare", root / "fake_nii", root / "real_nii", "--json",
                                  "--metrics", "fid,msssim", "--msssim-scales", "1",
                                  "--msssim-kernel", "3", *args)
    assert code == 0, err
    fake = _reference_volume_features(root / "fake_nii", weights10)
    real = _reference_volume_features(root / "real_nii", weights10)
    assert report["fid"] == pytest.approx(_frechet(fake, real), rel=1e-4)
    assert report["fid"] > 0
    described = report["metrics"]["fid"]
    assert described["extractor"] == "medicalnet-resnet10" and described["protocol"] == "volume-3d"
    assert described["n_generated"] == COUNT
    meta = report["generated"]["meta"]
    assert meta["protocol"]["input_shape"] == list(VOLUME_SHAPE) and meta["dims"] == 512
    assert report["metrics"]["msssim"]["spatial_dims"] == 3
    # A reference made at another input shape is refused (exit 4) before any volume is read.
    from fidkit.extraction import Pipeline, Runtime
    from fidkit.volumes import volume_statistics

    ref = tmp_path / "ref.pkl"
    volume_statistics(root / "real_nii", Pipeline(features="medicalnet-resnet10",
                                                  convention="zscore", weights=weights10),
                      Runtime(device="cpu", progress=False), volume_shape=(8, 8, 8)).save(str(ref))
    code, _, err = _run_json(capsys, "compare", root / "fake_nii", ref, *args)
    assert code == EXIT_MISMATCH and "input_shape" in err
    # The same options as the stats file: compared, and equal to folder vs folder.
    code, via_file, err = _run_json(capsys, "compare", root / "fake_nii", ref, "--json",
                                    "--features", "medicalnet-resnet10", "--convention", "zscore",
                                    "--volume-shape", "8,8,8", *_cpu(weights10))
    assert code == 0, err
    code, direct, err = _run_json(capsys, "compare", root / "fake_nii", root / "real_nii",
                                  "--json", "--features", "medicalnet-resnet10", "--convention",
                                  "zscore", "--volume-shape", "8,8,8", *_cpu(weights10))
    # (the stats file was made one volume per batch, the direct run in one batch: float32
    # convolutions of another batch size round differently)
    assert via_file["fid"] == pytest.approx(direct["fid"], rel=1e-6)


# ----------------------------------------------------------------------------- msssim
def test_maisi_msssim_equals_msssim_diversity(data):
    import fidkit
    from fidkit.diversity import scale_weights
    from fidkit.distances.msssim import msssim_diversity

    root, _ = data
    options = MaisiOptions(target_shape=MAISI_SHAPE)
    report = fidkit.compare(root / "fake_nii", root / "real_nii", protocol="maisi-2.5d",
                            metrics="msssim", maisi=options,
                            msssim={"pairs": 2, "scales": 2, "kernel_size": 5, "seed": 3})
    volumes = [_monai_maisi(p, options) for p in sorted((root / "fake_nii").iterdir())]
    central = np.stack([v[:, :, v.shape[2] // 2] for v in volumes])
    expected = msssim_diversity(central, pairs=2, seed=3, data_range=2000.0, spatial_dims=2,
                                weights=scale_weights(2), kernel_size=5)
    assert report.values["msssim"]["mean"] == pytest.approx(expected.mean, abs=1e-6)
    assert report.values["msssim"]["std"] == pytest.approx(expected.std, abs=1e-6)
    assert report.values["msssim"]["pairs"] == 2
    assert report.described["msssim"]["describes"] == "generated"
    three = fidkit.compare(root / "fake_nii", root / "real_nii", protocol="maisi-2.5d",
                           metrics="msssim", maisi=options,
                           msssim={"pairs": 9, "scales": 2, "kernel_size": 5, "dims": 3})
    expected3 = msssim_diversity(np.stack(volumes), pairs=9, seed=0, data_range=2000.0,
                                 spatial_dims=3, weights=scale_weights(2), kernel_size=5)
    assert three.values["msssim"]["mean"] == pytest.approx(expected3.mean, abs=1e-6)


def test_image_msssim_equals_msssim_diversity(tmp_path):
    import fidkit
    from conftest import make_images, write_folder
    from fidkit.distances.msssim import msssim_diversity

    images = make_images(6, (40, 40), seed=4)
    folder = write_folder(tmp_path / "imgs", images)
    report = fidkit.compare(folder, folder, metrics="msssim",
                            msssim={"pairs": 7, "scales": 2, "kernel_size": 7})
    from fidkit.diversity import scale_weights

    # (N, 3, H, W): msssim_diversity reads a 4-D (N, H, W, 3) uint8 array as (N, C, H, W)
    expected = msssim_diversity(np.moveaxis(images, -1, 1), pairs=7, seed=0,
                                weights=scale_weights(2), kernel_size=7)
    assert report.values["msssim"]["mean"] == pytest.approx(expected.mean, abs=1e-6)
    assert report.statistics == {} and "msssim" in report.lines()[0]


# ----------------------------------------------------------------------------- slices
def test_nifti_folders_as_slices_record_the_volumes(data, tmp_path, capsys):
    root, weights = data
    # Slices of several sizes: one per batch (radimagenet's convention does not resize, and the
    # runner stacks a batch).
    args = ["--features", "radimagenet-resnet50", "--axis", "all", *_cpu(weights), "--batch-size", "1"]
    a, b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    code, stats, err = _run_json(capsys, "stats", root / "fake_nii", "-o", a, "--json",
                                 "--window=-1000,1000", "--slices", "every:8", *args)
    assert code == 0, err
    source = stats["meta"]["source"]
    assert source["kind"] == "volumes" and source["volumes"] == COUNT
    assert source["planes"] == ["axial", "coronal", "sagittal"]
    assert source["slices"] == sum(sum(v["slices"].values()) for v in source["per_volume"])
    assert stats["meta"]["dicom"]["axis"] == "all"
    assert main([str(x) for x in ("stats", root / "fake_nii", "-o", b, "--window", "lung",
                                  "--slices", "every:16", *args)]) == 0
    code, _, err = _run_json(capsys, "compare", a, b)
    assert code == EXIT_MISMATCH and "DICOM options differ" in err and "window" in err
