"""CMMD against direct float64 evaluations of its formula (pairwise differences, no expansion),
a transcription of the reference code's operations, and closed forms.

The reference (google-research ``cmmd/distance.py``) is JAX and not installable here; its ``mmd``
is a few array expressions, re-evaluated below in numpy float64 as ``_reference_ops``.
"""
from __future__ import annotations

import numpy as np
import pytest

from fidkit.distances.cmmd import DEFAULT_SCALE, DEFAULT_SIGMA, cmmd
from fidkit.errors import InputError, UsageError
from fidkit.statistics.featurestore import open_features, write_features


def _unit(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)) + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _kernel(x: np.ndarray, y: np.ndarray, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    diff = x[:, None, :] - y[None, :, :]
    return np.exp(-(diff * diff).sum(-1) / (2 * sigma ** 2))


def _direct(x: np.ndarray, y: np.ndarray, unbiased: bool = False, sigma: float = DEFAULT_SIGMA) -> float:
    kxx, kyy, kxy = _kernel(x, x, sigma), _kernel(y, y, sigma), _kernel(x, y, sigma)
    n, m = len(x), len(y)
    if unbiased:
        within = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:
        within = kxx.mean() + kyy.mean()
    return DEFAULT_SCALE * (within - 2 * kxy.mean())


def _reference_ops(x: np.ndarray, y: np.ndarray) -> float:
    """The reference's expressions: norms from diag(x x^T), expansion, three plain means."""
    gamma = 1 / (2 * 10 ** 2)
    xs, ys = np.diag(x @ x.T), np.diag(y @ y.T)
    k_xx = np.mean(np.exp(-gamma * (-2 * (x @ x.T) + xs[:, None] + xs[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * (x @ y.T) + xs[:, None] + ys[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * (y @ y.T) + ys[:, None] + ys[None, :])))
    return 1000 * (k_xx + k_yy - 2 * k_xy)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_equals_direct_formula_and_reference_ops(device):
    x, y = _unit(150, 48, 0), _unit(110, 48, 1, shift=0.2)
    value = cmmd(x, y, device=device)
    assert value > 0.1  # a real difference, not rounding
    assert abs(value - _direct(x, y)) <= 1e-10 * max(1.0, value)
    assert abs(value - _reference_ops(x, y)) <= 1e-10 * max(1.0, value)
    unbiased = cmmd(x, y, estimator="unbiased", device=device)
    assert abs(unbiased - _direct(x, y, unbiased=True)) <= 1e-10
    assert abs(unbiased - value) > 1e-3  # the two estimators are different numbers


def test_other_sigma_and_scale():
    x, y = _unit(40, 8, 2), _unit(30, 8, 3, shift=0.5)
    assert abs(cmmd(x, y, sigma=0.7, scale=1.0) - _direct(x, y, sigma=0.7) / DEFAULT_SCALE) <= 1e-13


def test_closed_form_for_single_points():
    x, y = _unit(1, 5, 4), _unit(1, 5, 5)
    expected = 1000 * (2 - 2 * np.exp(-np.sum((x - y) ** 2) / 200))
    assert abs(cmmd(x, y) - expected) <= 1e-12


@pytest.mark.parametrize("device", [None, "cpu"])
def test_identical_sets_give_zero(device):
    x = _unit(90, 16, 6)
    assert cmmd(x, x.copy(), device=device) == 0.0
    assert cmmd(x, x, device=device, block_rows=13) == 0.0


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_blockwise_agrees_with_single_block(estimator):
    x, y = _unit(301, 32, 7), _unit(257, 32, 8, shift=0.1)
    single = cmmd(x, y, estimator=estimator)  # one tile: n, m < block_rows
    for block_rows in (7, 64, 300):
        assert abs(cmmd(x, y, estimator=estimator, block_rows=block_rows) - single) <= 1e-10
        assert abs(cmmd(x, y, estimator=estimator, block_rows=block_rows, device="cpu") - single) <= 1e-10


def test_memmapped_embeddings(tmp_path):
    x, y = _unit(120, 24, 9), _unit(80, 24, 10, shift=0.3)
    write_features(tmp_path / "a.features", x)
    write_features(tmp_path / "b.features", y)
    a, b = open_features(tmp_path / "a.features"), open_features(tmp_path / "b.features")
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    assert abs(cmmd(a, b, block_rows=31) - _direct(x32, y32)) <= 1e-10


def test_errors():
    x, y = _unit(10, 4, 0), _unit(10, 4, 1)
    with pytest.raises(UsageError, match="sigma"):
        cmmd(x, y, sigma=0)
    with pytest.raises(UsageError, match="estimator"):
        cmmd(x, y, estimator="mean")
    with pytest.raises(UsageError, match="dims"):
        cmmd(x, y[:, :3])
    with pytest.raises(UsageError, match="at least 2"):
        cmmd(x[:1], y, estimator="unbiased")
    bad = y.copy()
    bad[3, 0] = np.inf
    with pytest.raises(InputError, match="row 3"):
        cmmd(x, bad)
