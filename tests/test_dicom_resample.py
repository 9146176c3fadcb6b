"""fidkit.dicom.resample: counts, centred grids, real positions, anti-aliasing."""
from __future__ import annotations

import numpy as np
import pytest

from dicom_synth import write_stack
from fidkit.dicom import Volume, read_series, resample
from fidkit.errors import UsageError


def _volume(positions, rows=4, cols=4, spacing_yx=(1.0, 1.0), values=None) -> Volume:
    positions = np.asarray(positions, dtype=float)
    if values is None:
        values = 10 * positions
    array = np.broadcast_to(np.asarray(values, np.float32)[:, None, None], (len(positions), rows, cols))
    return Volume(array=array.copy(), spacing=(float(np.median(np.diff(positions))),) + tuple(spacing_yx),
                  positions=positions, origin=np.array([0.0, 0.0, positions[0]]), orientation=np.eye(3))


def test_notes_example_300_slices_at_0_9_mm_become_270_at_1_mm(tmp_path):
    depths = [0.9 * k for k in range(300)]
    write_stack(tmp_path, depths, rows=2, cols=2)
    (vol,) = read_series(tmp_path)
    assert vol.shape[0] == 300 and vol.spacing[0] == pytest.approx(0.9)
    out = resample(vol, (1.0, None, None))
    assert out.shape == (270, 2, 2) and out.spacing == pytest.approx((1.0, 1.0, 1.0))
    # centred on the slab [-0.45, 269.55]: first sample at 0.05 mm, last at 269.05 mm
    assert out.positions[0] == pytest.approx(0.05) and out.positions[-1] == pytest.approx(269.05)
    assert np.diff(out.positions) == pytest.approx([1.0] * 269)
    # HU = 10 z + column is linear in z: linear interpolation must reproduce it exactly
    np.testing.assert_allclose(out.array[:, 0, 1], 10 * out.positions + 1, atol=1e-3)
    assert out.origin[2] == pytest.approx(0.05)


def test_gap_is_bridged_by_the_real_positions():
    positions = [0, 2, 4, 6, 8, 12, 14, 16, 18]  # slice at 10 mm missing
    vol = _volume(positions)
    out = resample(vol, (2.0, None, None))
    assert out.shape[0] == 10  # 10 slots of 2 mm, the missing one included
    assert out.positions == pytest.approx(np.arange(10) * 2.0)
    assert out.array[5, 0, 0] == pytest.approx(100.0)  # interpolated across the gap, not shifted


def test_variable_spacing_uses_exact_positions():
    positions = np.array([0, 1, 2, 3, 5, 7, 9], float)
    vol = _volume(positions, values=positions ** 2)
    out = resample(vol, (1.0, None, None))
    expected = np.interp(out.positions, positions, positions ** 2)  # numpy's piecewise-linear
    np.testing.assert_allclose(out.array[:, 0, 0], expected, rtol=1e-6, atol=1e-5)


def test_in_plane_resampling_counts_and_values():
    x = np.arange(32) * 0.5
    array = np.broadcast_to((3 * x)[None, None, :], (2, 32, 32)).astype(np.float32)
    vol = Volume(array=array.copy(), spacing=(1.0, 0.5, 0.5), positions=np.array([0.0, 1.0]),
                 origin=np.zeros(3), orientation=np.eye(3))
    out = resample(vol, (None, 1.0, 1.0))
    assert out.shape == (2, 16, 16) and out.spacing == (1.0, 1.0, 1.0)
    centres = 7.75 + (np.arange(16) - 7.5) * 1.0  # slab [-0.25, 15.75] centred at 7.75
    # growing 2x > 1.5x smooths first, which leaves a linear ramp unchanged away from the edges
    np.testing.assert_allclose(out.array[0, 0, 3:-3], 3 * centres[3:-3], atol=1e-3)
    assert out.origin[0] == pytest.approx(centres[0])


def test_antialias_removes_alternating_slices():
    positions = np.arange(64) * 0.5
    values = np.where(np.arange(64) % 2 == 0, 100.0, -100.0)
    vol = _volume(positions, values=values)
    out = resample(vol, (2.0, None, None))
    # Gaussian sigma 0.75 mm against a 1 cycle/mm signal: attenuation exp(-2 pi^2 s^2 f^2) ~ 1.5e-5
    assert np.abs(out.array[2:-2]).max() < 0.1
    nearest = resample(vol, (1.5, None, None), order=0)  # 3x: smoothed too, even for nearest
    assert np.abs(nearest.array[2:-2]).max() < 50


def test_keep_axes_and_single_slice():
    vol = _volume([0.0, 3.0, 6.0])
    same = resample(vol, (None, None, None))
    np.testing.assert_array_equal(same.array, vol.array)
    one = _volume([5.0, 6.0])
    one = one.replace(array=one.array[:1], positions=one.positions[:1], spacing=(5.0, 1.0, 1.0))
    assert resample(one, (1.0, None, None)).shape[0] == 1


@pytest.mark.parametrize("bad", [(0.0, None, None), (-1.0, None, None), (float("nan"), 1, 1), (1.0,)])
def test_bad_spacing_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        resample(_volume([0.0, 1.0]), bad)


def test_absurd_positions_do_not_allocate_the_world():
    from fidkit.errors import InputError

    vol = _volume([0.0, 1.0, 2.0, 3.0, 1e9])  # one slice a thousand kilometres away
    with pytest.raises(InputError, match="positions look wrong"):
        resample(vol, (1.0, None, None))


def test_antialias_filter_is_the_documented_gaussian():
    from scipy.ndimage import gaussian_filter1d

    values = np.random.default_rng(0).normal(size=30) * 100
    vol = _volume(np.arange(30.0), values=values)
    out = resample(vol, (3.0, None, None))  # 3x: sigma = (3 - 1) / 2 = 1 mm = 1 slice
    assert out.positions == pytest.approx(1.0 + 3.0 * np.arange(10))  # on source slices: no blending
    reference = gaussian_filter1d(values, sigma=1.0, truncate=4.0)[1::3]
    np.testing.assert_allclose(out.array[2:-2, 0, 0], reference[2:-2], rtol=1e-5, atol=1e-3)
