"""maisi-2.5d: fidkit's numpy pipeline equals MONAI's transforms as compute_fid_2-5d_ct.py chains
them (LoadImaged, EnsureChannelFirstd, Orientationd RAS, Spacingd, SpatialPadd -1000,
CenterSpatialCropd, ScaleIntensityRanged) and the script's slicing/normalisation, written below in
torch from its description, on small synthetic volumes."""
from __future__ import annotations

import numpy as np
import pytest

monai = pytest.importorskip("monai")
torch = pytest.importorskip("torch")
import nibabel as nib  # noqa: E402

from dicom_synth import write_stack  # noqa: E402
from fidkit.dicom import read_series  # noqa: E402
from fidkit.dicom.maisi import (MaisiOptions, PLANES, maisi_inputs, maisi_volume,  # noqa: E402
                                montage_planes)
from fidkit.dicom.nifti import read_nifti  # noqa: E402
from fidkit.errors import UsageError  # noqa: E402


def _volume(seed=0, shape=(18, 22, 14)):
    """HU in (i, j, k) with values beyond the clip range on both sides and an off-centre block."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1400, 1600, size=shape).astype(np.int16)
    data[1:5, 2:7, 3:6] = 2000
    return data


def _write(path, data, affine):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return str(path)


AFFINES = {
    "ras-anisotropic": np.array([[0.75, 0, 0, -10], [0, 1.25, 0, 4], [0, 0, 2.5, 7], [0, 0, 0, 1.0]]),
    "lps-flipped": np.array([[-1.5, 0, 0, 30], [0, -0.5, 0, 20], [0, 0, 1.0, -5], [0, 0, 0, 1.0]]),
    "permuted": np.array([[0, 0, -2.0, 9], [1.0, 0, 0, -3], [0, -1.5, 0, 11], [0, 0, 0, 1.0]]),
}


def _monai_volume(path, options: MaisiOptions) -> np.ndarray:
    t = monai.transforms
    chain = [t.LoadImaged(keys=["image"]), t.EnsureChannelFirstd(keys=["image"]),
             t.Orientationd(keys=["image"], axcodes="RAS")]
    if options.spacing is not None:
        chain.append(t.Spacingd(keys=["image"], pixdim=options.spacing, mode=["bilinear"]))
    if options.pad:
        chain.append(t.SpatialPadd(keys=["image"], spatial_size=options.target_shape, mode="constant", value=-1000))
    if options.crop:
        chain.append(t.CenterSpatialCropd(keys=["image"], roi_size=options.target_shape))
    chain.append(t.ScaleIntensityRanged(keys=["image"], a_min=-1000, a_max=1000, b_min=-1000, b_max=1000, clip=True))
    out = t.Compose(chain)({"image": path})["image"]
    return out.as_tensor()[0].numpy()


def _script_planes(volume_xyz: np.ndarray, ratio) -> dict:
    """The script's get_features_2p5d up to the network, from its text: (B, C, H, W, D) tensor,
    channels repeated then reordered [2, 1, 0], unbind along D / H / W (centre slices by int()),
    cat, min-max over the stack, minus (0.406, 0.456, 0.485) on channels 0, 1, 2."""
    image = torch.from_numpy(volume_xyz)[None, None].repeat(1, 3, 1, 1, 1)[:, [2, 1, 0]]
    _, _, h, w, d = image.shape
    out = {}
    for plane, dim, n in (("xy", 4, d), ("yz", 2, h), ("zx", 3, w)):
        part = image
        if ratio is not None:
            start, end = int((1.0 - ratio) / 2.0 * n), int((1.0 + ratio) / 2.0 * n)
            part = image.narrow(dim, start, end - start)
        stack = torch.cat(torch.unbind(part, dim=dim), dim=0)
        stack = (stack - stack.min()) / (stack.max() - stack.min() + 1e-10)
        for channel, mean in enumerate((0.406, 0.456, 0.485)):
            stack[:, channel] -= mean
        out[plane] = stack.numpy()
    return out


CASES = [
    ("ras-anisotropic", MaisiOptions(target_shape=(16, 24, 20))),
    ("lps-flipped", MaisiOptions(target_shape=(21, 13, 30), center_slices_ratio=0.4)),
    ("permuted", MaisiOptions(target_shape=(16, 16, 16), spacing=(1.0, 1.0, 1.0))),
    ("ras-anisotropic", MaisiOptions(target_shape=(40, 32, 24), spacing=(1.0, 1.0, 1.0), center_slices_ratio=0.5)),
    ("lps-flipped", MaisiOptions(target_shape=(12, 12, 12), pad=False, crop=False, spacing=(0.7, 1.1, 1.3))),
]


@pytest.mark.parametrize("affine_name,options", CASES)
def test_volume_and_planes_equal_monai(tmp_path, affine_name, options):
    path = _write(tmp_path / "v.nii.gz", _volume(), AFFINES[affine_name])
    expected = _monai_volume(path, options)
    ours = maisi_volume(read_nifti(path), options)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    if options.spacing is None:
        np.testing.assert_array_equal(ours, expected)  # flips, pads, crops, clip: bit for bit
    else:
        # equal here (max diff 0 measured); a float32 interpolation backend may differ by ~1e-4 HU
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)
    planes = maisi_inputs(read_nifti(path), options)
    reference = _script_planes(expected, options.center_slices_ratio)
    for plane in PLANES:
        assert planes[plane].shape == reference[plane].shape, plane
        np.testing.assert_allclose(planes[plane], reference[plane], rtol=0,
                                   atol=1e-6, err_msg=plane)


def test_dicom_series_gives_the_same_inputs_as_its_nifti(tmp_path):
    """A DICOM series (LPS, axial) and the NIfTI of the same volume give the same MAISI inputs."""
    data = _volume(1, (12, 10, 8))  # (i=x towards L, j=y towards P, k=z towards S) in the DICOM frame
    write_stack(tmp_path / "dcm", [2.0 * k for k in range(8)], origin=(5.0, -3.0, 1.0), rows=10, cols=12,
                spacing=(1.5, 0.75), content=lambda d, k: (data[:, :, k].T.astype(np.int32) + 1000).astype(np.int16))
    affine_lps = np.array([[0.75, 0, 0, 5.0], [0, 1.5, 0, -3.0], [0, 0, 2.0, 1.0], [0, 0, 0, 1.0]])
    path = _write(tmp_path / "v.nii", data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    (series,) = read_series(tmp_path / "dcm")
    options = MaisiOptions(target_shape=(16, 8, 10))
    np.testing.assert_array_equal(maisi_volume(series, options), _monai_volume(path, options))


def test_options_and_montage(tmp_path):
    with pytest.raises(UsageError):
        MaisiOptions(target_shape=(0, 4, 4))
    with pytest.raises(UsageError):
        MaisiOptions(center_slices_ratio=1.5)
    meta = MaisiOptions().to_meta()
    assert meta["name"] == "maisi-2.5d" and meta["target_shape"] == [512, 512, 512] and meta["spacing_mm"] is None
    path = _write(tmp_path / "m.nii", _volume(), AFFINES["ras-anisotropic"])
    shown = montage_planes(read_nifti(path), MaisiOptions(target_shape=(16, 24, 20)))
    assert {k: v.shape for k, v in shown.items()} == {"xy": (16, 24, 3), "yz": (24, 20, 3), "zx": (16, 20, 3)}
    assert all(v.dtype == np.uint8 for v in shown.values())
