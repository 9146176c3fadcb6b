"""NIfTI volumes and volume datasets: the same phantom written as a DICOM series and as NIfTI files
with other affines (RAS storage, flipped and permuted axes, oblique, anisotropic) gives the same
slices; bad files are refused in one line."""
from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from dicom_synth import write_stack
from fidkit.dicom import DicomOptions, DicomSource, read_series, resample, slices
from fidkit.dicom.nifti import read_nifti
from fidkit.dicom.source import VolumeSource, open_volume_source
from fidkit.errors import BadImageError, InputError

NZ, NY, NX = 12, 14, 16


def _phantom(seed: int = 0) -> np.ndarray:
    """HU (z, y, x): random tissue plus a bright block off centre, so every flip shows."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-900, 900, size=(NZ, NY, NX)).astype(np.int16)
    hu[2:5, 3:6, 1:4] = 1500
    return hu


def _rotation(degrees: float) -> np.ndarray:
    """Rows x, y, z directions in LPS: a rotation about the axis (1, 2, 3)."""
    if degrees == 0:
        return np.eye(3)
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    return rot.T  # rows: images of the x, y, z unit vectors


def _write_dicom(folder, hu, spacing, origin, dirs, **extra):
    """The phantom as an axial-like DICOM stack: slice k at origin + k * dz * zdir."""
    dz, dy, dx = spacing
    write_stack(folder, [k * dz for k in range(hu.shape[0])], iop=tuple(dirs[0]) + tuple(dirs[1]),
                origin=origin, rows=hu.shape[1], cols=hu.shape[2], spacing=(dy, dx),
                content=lambda d, k: (hu[k].astype(np.int32) + 1000).astype(np.int16), **extra)
    return folder


def _write_nifti(path, hu, spacing, origin, dirs, order=(0, 1, 2), flips=(False, False, False),
                 ras=True):
    """The same phantom as NIfTI: file axis m is the phantom's (x, y, z) axis ``order[m]``,
    reversed where ``flips[m]``; the affine is worked out here from the geometry, independently."""
    xyz = np.transpose(hu, (2, 1, 0))  # (x, y, z)
    sizes = xyz.shape
    steps = (spacing[2], spacing[1], spacing[0])
    data = np.transpose(xyz, order)
    affine = np.eye(4)
    affine[:3, 3] = origin
    for m, q in enumerate(order):
        column = np.asarray(dirs[q]) * steps[q]
        if flips[m]:
            data = np.flip(data, axis=m)
            affine[:3, 3] += (sizes[q] - 1) * column
            column = -column
        affine[:3, m] = column
    if ras:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def _all_slices(volume, spacing, window=(40, 400)):
    iso = resample(volume, spacing)
    return {axis: list(slices(iso, window=window, axis=axis)) for axis in ("axial", "coronal", "sagittal")}


def _assert_same(a, b):
    for axis in a:
        assert len(a[axis]) == len(b[axis]), axis
        for x, y in zip(a[axis], b[axis]):
            np.testing.assert_array_equal(x, y, err_msg=axis)


GEOMETRIES = {
    # name: spacing (z, y, x) mm, origin LPS mm, rotation degrees
    "axial-anisotropic": ((2.5, 0.75, 1.25), (-40.0, -30.5, 12.0), 0.0),
    "oblique": ((2.0, 1.0, 1.0), (-10.0, 5.0, 20.0), 12.0),
}
LAYOUTS = {
    # name: file axes as phantom (x, y, z) axes, flips
    "lps-order": ((0, 1, 2), (False, False, False)),
    "dcm2niix-rows-flipped": ((0, 1, 2), (False, True, False)),
    "radiological-las": ((0, 1, 2), (True, False, False)),
    "z-flipped": ((0, 1, 2), (False, False, True)),
    "permuted-sagittal-storage": ((2, 0, 1), (True, False, True)),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_dicom_and_nifti_of_the_same_volume_give_identical_slices(tmp_path, geometry, layout):
    spacing, origin, degrees = GEOMETRIES[geometry]
    dirs = _rotation(degrees)
    hu = _phantom()
    (vol_dicom,) = read_series(_write_dicom(tmp_path / "dcm", hu, spacing, origin, dirs))
    order, flips = LAYOUTS[layout]
    vol_nifti = read_nifti(_write_nifti(tmp_path / "v.nii.gz", hu, spacing, origin, dirs, order, flips))
    np.testing.assert_allclose(vol_nifti.spacing, spacing, rtol=1e-6)
    for target in [None, (1.0, None, None), (1.0, 1.0, 1.0)]:
        _assert_same(_all_slices(vol_dicom, target), _all_slices(vol_nifti, target))


def test_reading_nifti_as_ras_is_needed(tmp_path):
    """An LPS affine stored as if it were RAS (the classic mistake) flips left-right: the test of
    identical slices above can fail."""
    spacing, origin, _ = GEOMETRIES["axial-anisotropic"]
    hu = _phantom()
    (vol_dicom,) = read_series(_write_dicom(tmp_path / "dcm", hu, spacing, origin, np.eye(3)))
    wrong = read_nifti(_write_nifti(tmp_path / "w.nii", hu, spacing, origin, np.eye(3), ras=False))
    right = _all_slices(vol_dicom, None)["axial"]
    mirrored = _all_slices(wrong, None)["axial"]
    assert not np.array_equal(right[0], mirrored[0])
    np.testing.assert_array_equal(right[0], mirrored[0][::-1, ::-1])  # x and y both negated


def test_canonical_layout_matches_nibabels_closest_canonical(tmp_path):
    """Independent reference: nibabel's as_closest_canonical (RAS), turned to (z, y, x) LPS."""
    hu = _phantom(3)
    dirs = _rotation(8.0)
    for n, (order, flips) in enumerate(LAYOUTS.values()):
        path = _write_nifti(tmp_path / f"{n}.nii", hu, (2.0, 1.5, 0.5), (3.0, -4.0, 5.0), dirs, order, flips)
        ours = read_nifti(path)
        ras = nib.as_closest_canonical(nib.load(str(path)))
        reference = np.asarray(ras.dataobj, dtype=np.float32)[::-1, ::-1, :].transpose(2, 1, 0)
        np.testing.assert_array_equal(ours.array, reference)
        np.testing.assert_allclose(ours.spacing, (2.0, 1.5, 0.5), rtol=1e-6)
        ras_origin = ras.affine[:3, :3] @ ((np.array(ras.shape) - 1) * [1, 1, 0]) + ras.affine[:3, 3]
        np.testing.assert_allclose(ours.origin, ras_origin * [-1, -1, 1], atol=1e-4)


def test_scaling_and_display_range_are_read(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    img.header["cal_min"], img.header["cal_max"] = -1000.0, 1000.0
    nib.save(img, str(tmp_path / "s.nii"))
    vol = read_nifti(tmp_path / "s.nii")
    assert vol.array.dtype == np.float32
    assert sorted(vol.array.ravel().tolist()) == [2.0 * v - 1024.0 for v in range(24)]
    assert vol.window == (0.5, 2001.0)  # the ramp -1000 -> 0 .. 1000 -> 255


# ------------------------------------------------------------------------------- bad files
def _good(path):
    nib.save(nib.Nifti1Image(_phantom()[:4].astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def test_truncated_gzip_is_a_bad_image(tmp_path):
    path = _good(tmp_path / "a.nii.gz")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match=r"a\.nii\.gz.*truncated"):
        read_nifti(path)
    # the header alone is still readable: a dataset counts its slices, then load() fails cleanly
    source = VolumeSource([path], DicomOptions(window=(40, 400)), root=tmp_path, kind="nifti")
    with pytest.raises(BadImageError, match="truncated"):
        source.load(0)


def test_not_gzip_and_wrong_header(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"not gzip at all" * 40)
    (tmp_path / "c.nii").write_bytes(bytes(400))
    for name in ("b.nii.gz", "c.nii"):
        with pytest.raises(BadImageError, match=name.replace(".", r"\.")) as info:
            read_nifti(tmp_path / name)
        assert "\n" not in str(info.value)


def test_four_d_is_refused_but_trailing_singletons_are_not(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), np.eye(4)), str(tmp_path / "t.nii"))
    with pytest.raises(BadImageError, match=r"t\.nii: is 4-D \(4x5x6x3\).*split"):
        read_nifti(tmp_path / "t.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.int16), np.eye(4)), str(tmp_path / "one.nii"))
    assert read_nifti(tmp_path / "one.nii").shape == (6, 5, 4)


def test_non_finite_affine_sheared_affine_and_nan_voxels(tmp_path):
    path = _good(tmp_path / "n.nii")
    raw = bytearray(path.read_bytes())
    raw[280:284] = np.float32(np.nan).tobytes()  # srow_x[0] of the NIfTI-1 header
    path.write_bytes(bytes(raw))
    with pytest.raises(BadImageError, match=r"n\.nii: the affine .* non-finite"):
        read_nifti(path)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), sheared)
    nib.save(img, str(tmp_path / "s.nii"))
    with pytest.raises(InputError, match="sheared"):
        read_nifti(tmp_path / "s.nii")
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii"))
    with pytest.raises(BadImageError, match="1 voxel"):
        read_nifti(tmp_path / "nan.nii")
    with pytest.raises(InputError, match="does not exist"):
        read_nifti(tmp_path / "missing.nii")


# ----------------------------------------------------------------------------- datasets
def test_nifti_folder_and_dicom_subfolders_are_the_same_dataset(tmp_path):
    spacing, origin, _ = GEOMETRIES["axial-anisotropic"]
    (tmp_path / "nii").mkdir()
    for n in range(3):
        hu = _phantom(10 + n)
        _write_dicom(tmp_path / "dcm" / f"case{n}", hu, spacing, origin, np.eye(3), SeriesInstanceUID=f"1.2.3.{n}")
        order, flips = list(LAYOUTS.values())[n]
        _write_nifti(tmp_path / "nii" / f"case{n}.nii.gz", hu, spacing, origin, np.eye(3), order, flips)
    (tmp_path / "nii" / "notes.txt").write_text("not a volume")
    options = DicomOptions(spacing=(1.0, 1.0, 1.0), window=(40, 400), axis="all", slices="central:0.5,every:2")
    nifti = open_volume_source(tmp_path / "nii", options)
    dicom = open_volume_source(tmp_path / "dcm", options)
    assert isinstance(nifti, VolumeSource) and isinstance(dicom, VolumeSource)
    assert len(nifti) == len(dicom) > 0
    for i in range(len(nifti)):
        np.testing.assert_array_equal(nifti.load(i), dicom.load(i))
    # the same slices as the eager DICOM source, plane by plane
    eager = DicomSource(tmp_path / "dcm" / "case1", options)
    first = [i for i in range(len(dicom)) if dicom.item_name(i).startswith("case1 ")]
    assert len(first) == len(eager)
    for i, j in enumerate(first):
        np.testing.assert_array_equal(dicom.load(j), eager.load(i))
    described = nifti.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["volumes"] == 3 and described["planes"] == ["axial", "coronal", "sagittal"]
    per = described["per_volume"][0]
    assert per["resampled_shape"] == [30, 10, 20]  # 12 x 2.5 mm, 14 x 0.75 -> 10.5 -> 10, 16 x 1.25
    assert per["slices"] == {"axial": 8, "coronal": 3, "sagittal": 5}
    assert sum(sum(p["slices"].values()) for p in described["per_volume"]) == len(nifti)
    assert described["per_volume"][1]["axcodes_ras"] == "LAS"  # y flipped: P -> A
    assert described["options"]["axis"] == "all"
    assert dicom.describe()["format"] == "dicom"
    assert open_volume_source(tmp_path / "nii" / "notes.txt") is None
    assert open_volume_source(tmp_path / "dcm" / "case0") is None  # one series: DicomSource's job


def test_same_features_on_a_tiny_random_network(tmp_path):
    """Identical inputs give identical features and statistics (a seeded random conv net)."""
    import torch

    spacing, origin, degrees = GEOMETRIES["oblique"]
    hu = _phantom(5)
    _write_dicom(tmp_path / "dcm" / "a", hu, spacing, origin, _rotation(degrees))
    (tmp_path / "nii").mkdir()
    _write_nifti(tmp_path / "nii" / "a.nii", hu, spacing, origin, _rotation(degrees), (1, 0, 2), (True, True, False))
    options = DicomOptions(spacing=(1.0, 1.0, 1.0), window="abdomen", axis="all")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def stats(source):
        with torch.no_grad():
            feats = torch.cat([net(torch.from_numpy(source.load(i)).permute(2, 0, 1)[None].float() / 255)
                               for i in range(len(source))]).double().numpy()
        return feats.mean(0), np.cov(feats, rowvar=False)

    (mu_a, cov_a), (mu_b, cov_b) = stats(open_volume_source(tmp_path / "dcm", options)), \
        stats(open_volume_source(tmp_path / "nii", options))
    np.testing.assert_array_equal(mu_a, mu_b)
    np.testing.assert_array_equal(cov_a, cov_b)


def test_lazy_reading_keeps_two_volumes(tmp_path):
    for n in range(3):
        _write_nifti(tmp_path / f"v{n}.nii", _phantom(n), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    source = open_volume_source(tmp_path, DicomOptions(spacing=None, window="soft_tissue"))
    assert source._cache == {}
    for i in range(len(source)):
        source.load(i)
    assert sorted(source._cache) == [1, 2]
    with pytest.raises(InputError, match="cal_min/cal_max"):
        open_volume_source(tmp_path, DicomOptions(spacing=None, window="file"))


def test_axis_all_on_the_eager_dicom_source(tmp_path):
    hu = _phantom()
    _write_dicom(tmp_path / "d", hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    source = DicomSource(tmp_path / "d", DicomOptions(spacing=None, window=(40, 400), axis="all"))
    assert len(source) == NZ + NY + NX
    assert "coronal slice 0" in source.item_name(NZ) and "sagittal" in source.item_name(NZ + NY)
