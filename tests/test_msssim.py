"""MS-SSIM diversity equals MONAI's MultiScaleSSIMMetric (2-D and 3-D) and pytorch_msssim (2-D) on
the same seeded pairs."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fidkit.distances.msssim import DEFAULT_WEIGHTS, ms_ssim, msssim_diversity, random_pairs
from fidkit.errors import UsageError

monai_metrics = pytest.importorskip("monai.metrics")
pytorch_msssim = pytest.importorskip("pytorch_msssim")


def _slices(n=6, size=176, seed=0):
    """uint8 slices sharing one smooth structure plus their own blobs and noise, so that the
    MS-SSIM of a pair is well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    base = rng.random((1, 1, size // 16, size // 16)) + 0.5 * rng.random((n, 1, size // 16, size // 16))
    up = torch.nn.functional.interpolate(torch.from_numpy(base), size=(size, size), mode="bilinear")
    noisy = up.numpy() + 0.1 * rng.random((n, 1, size, size))
    return np.clip(noisy / noisy.max() * 255, 0, 255).astype(np.uint8)


def _monai(x, y, spatial_dims, **kw):
    metric = monai_metrics.MultiScaleSSIMMetric(spatial_dims=spatial_dims, **kw)
    return metric(torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))).numpy().ravel()


def test_2d_defaults_equal_monai_and_pytorch_msssim():
    images = _slices()
    div = msssim_diversity(images[:, 0], pairs=10, seed=3)  # uint8 -> data range 255
    i, j = div.index_pairs[:, 0], div.index_pairs[:, 1]
    a, b = images[i].astype(np.float32), images[j].astype(np.float32)
    monai = _monai(a, b, 2, data_range=255.0)
    peer = pytorch_msssim.ms_ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=255, size_average=False).numpy()
    np.testing.assert_allclose(div.values, monai, rtol=0, atol=1e-6)
    np.testing.assert_allclose(div.values, peer, rtol=0, atol=1e-6)
    assert 0.2 < div.mean < 0.99 and div.values.min() > 0.1 and div.std > 0 and div.pairs == 10
    exact = msssim_diversity(images[:, 0], pairs=10, seed=3, precision="float64").values
    np.testing.assert_allclose(exact, monai, rtol=0, atol=2e-5)  # float32 peers vs float64
    assert div.mean == pytest.approx(float(np.mean(monai)), abs=1e-6)
    assert div.to_dict()["weights"] == list(DEFAULT_WEIGHTS) and div.to_dict()["seed"] == 3


def test_3d_small_kernel_equals_monai():
    rng = np.random.default_rng(1)
    volumes = rng.random((4, 32, 32, 32)).astype(np.float32)
    volumes[:, 8:20, 8:20, 8:20] += 1.0
    volumes /= volumes.max()
    params = dict(kernel_size=3, kernel_sigma=0.8, weights=(0.3, 0.3, 0.4))
    div = msssim_diversity(volumes, pairs=6, seed=0, data_range=1.0, spatial_dims=3, **params)
    i, j = div.index_pairs[:, 0], div.index_pairs[:, 1]
    monai = _monai(volumes[i, None], volumes[j, None], 3, data_range=1.0, **params)
    np.testing.assert_allclose(div.values, monai, rtol=0, atol=1e-6)


def test_odd_sizes_and_channels_follow_each_convention():
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 183, 179)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.random(x.shape).astype(np.float32), 0, 1)
    ours_monai = ms_ssim(x, y, data_range=1.0)
    ours_peer = ms_ssim(x, y, data_range=1.0, convention="pytorch_msssim")
    np.testing.assert_allclose(ours_monai, _monai(x, y, 2, data_range=1.0), rtol=0, atol=1e-6)
    peer = pytorch_msssim.ms_ssim(torch.from_numpy(x), torch.from_numpy(y), data_range=1.0, size_average=False)
    np.testing.assert_allclose(ours_peer, peer.numpy(), rtol=0, atol=1e-6)
    assert abs(ours_monai - ours_peer).max() > 1e-6  # the two conventions really differ here


def test_identical_images_score_one_and_pairs_are_seeded():
    x = _slices(2)[:1].astype(np.float64)
    assert ms_ssim(x, x, data_range=255.0)[0] == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(random_pairs(40, 25, 7), random_pairs(40, 25, 7))
    assert not np.array_equal(random_pairs(40, 25, 7), random_pairs(40, 25, 8))
    assert [tuple(p) for p in random_pairs(5, 99)] == list(itertools.combinations(range(5), 2))


@pytest.mark.parametrize("call", [
    lambda: ms_ssim(np.zeros((1, 1, 64, 64)), np.zeros((1, 1, 64, 64)), data_range=1.0),  # too small
    lambda: msssim_diversity(np.zeros((3, 176, 176), np.float32)),  # float without data range
    lambda: msssim_diversity(np.zeros((1, 176, 176), np.uint8)),  # one sample
    lambda: ms_ssim(np.zeros((1, 1, 200, 200)), np.zeros((1, 1, 200, 200)), data_range=1.0, kernel_size=4),
    lambda: ms_ssim(np.zeros((1, 1, 200, 200)), np.zeros((1, 1, 200, 200)), data_range=1.0, convention="x"),
])
def test_bad_arguments(call):
    with pytest.raises(UsageError):
        call()


def test_uint8_hwc_images_are_read_as_channels_last():
    """Decoded images (N, H, W, 3) give the MS-SSIM of their (N, 3, H, W) transpose."""
    import numpy as np

    from fidkit.distances.msssim import msssim_diversity

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 180, 184, 3), dtype=np.uint8)
    hwc = msssim_diversity(images, pairs=3, seed=1)
    chw = msssim_diversity(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), pairs=3, seed=1)
    assert np.allclose(hwc.values, chw.values, rtol=0, atol=1e-12)
