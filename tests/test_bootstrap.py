"""Bootstrap intervals and FID-infinity on synthetic Gaussians whose population FID is known."""
from __future__ import annotations

import numpy as np
import pytest

from fidkit.distances.bootstrap import fid_confidence_interval, fid_infinity, sample_size_report
from fidkit.errors import UsageError
from fidkit.statistics import Statistics


def _population(d: int, seed: int = 123, spread: float = 0.25, shift: float = 0.2):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) * spread
    mu, cov = np.full(d, shift), a @ a.T + 0.5 * np.eye(d)
    # Reference N(0, I), known exactly: the closed form needs only the eigenvalues of cov.
    population_fid = float(mu @ mu + np.trace(cov) + d - 2 * np.sqrt(np.linalg.eigvalsh(cov)).sum())
    ref = Statistics(np.zeros(d), np.eye(d), 10**9)
    return mu, cov, ref, population_fid


def _fid_of(x: np.ndarray, ref: Statistics) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance  # an independent implementation

    return float(calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma))


def test_interval_covers_an_independent_draw_for_most_seeds():
    d, n, seeds = 12, 150, 30
    mu, cov, ref, _ = _population(d)
    hits = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x, y = rng.multivariate_normal(mu, cov, n), rng.multivariate_normal(mu, cov, n)
        iv = fid_confidence_interval(x, ref, n_boot=40, seed=seed)
        assert iv.low <= iv.estimate <= iv.high
        assert iv.estimate == pytest.approx(_fid_of(x, ref), rel=1e-8)
        hits += iv.low <= _fid_of(y, ref) <= iv.high
    # A 95% interval for E[FID_N] holds a second draw ~83% of the time (two draws' spread is
    # sqrt(2) times one's); a too-narrow interval drops well below.
    assert hits >= 0.6 * seeds


def test_interval_narrows_like_one_over_sqrt_n():
    d = 12
    mu, cov, ref, _ = _population(d)
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 3200):
        x = rng.multivariate_normal(mu, cov, n)
        iv = fid_confidence_interval(x, ref, n_boot=60, seed=1)
        widths.append(iv.high - iv.low)
    assert 4 / 1.6 <= widths[0] / widths[1] <= 4 * 1.6  # sqrt(16) = 4


def test_fid_infinity_is_closer_to_the_population_than_the_finite_fid():
    # Here the k / N bias (~1 at N = 600) dominates the draw-to-draw noise, as at d = 2048 with
    # a few thousand images; subsets from 180 = 3.75 d keep to the 1/N regime.
    d, n = 48, 600
    mu, cov, ref, population = _population(d, spread=0.15, shift=0.05)
    err_inf, err_n = [], []
    for seed in range(6):
        x = np.random.default_rng(seed).multivariate_normal(mu, cov, n)
        r = fid_infinity(x, ref, seed=seed, min_fraction=0.3)
        assert r.fids[-1] == pytest.approx(_fid_of(x, ref), rel=1e-8)  # last size is all of x
        assert r.slope > 0  # FID falls with N
        err_inf.append(r.value - population)
        err_n.append(r.fids[-1] - population)
    assert sum(abs(i) < abs(f) for i, f in zip(err_inf, err_n)) >= 5
    assert np.mean(np.abs(err_inf)) < 0.5 * np.mean(np.abs(err_n))
    assert abs(np.mean(err_inf)) < 0.5 * abs(np.mean(err_n))  # the k / N bias is (mostly) gone


def test_report_with_both_and_resampled_reference_features():
    d = 8
    mu, cov, _, _ = _population(d)
    rng = np.random.default_rng(3)
    x, y = rng.multivariate_normal(mu, cov, 300), rng.standard_normal((400, d))
    r = sample_size_report(x, y, ci=True, fid_inf=True, n_boot=10, seed=4)
    assert r.interval is not None and r.fid_infinity is not None
    assert r.fid_infinity.interval is not None and r.fid_infinity.interval.n_boot == 10
    assert r.fid == pytest.approx(_fid_of(x, Statistics(y.mean(0), np.cov(y, rowvar=False), 400)), rel=1e-8)
    again = sample_size_report(x, y, ci=True, fid_inf=True, n_boot=10, seed=4)
    assert again.to_dict() == r.to_dict()  # seeded


def test_small_n_warns_and_bad_arguments_raise():
    d = 40
    x = np.random.default_rng(0).standard_normal((30, d))
    ref = Statistics(np.zeros(d), np.eye(d), 1000)
    r = sample_size_report(x, ref, ci=False, fid_inf=True, n_boot=0)
    assert any("only 30 generated images" in w for w in r.warnings)
    assert any("FID-infinity uses subsets" in w for w in r.fid_infinity.warnings)
    with pytest.raises(UsageError, match="dims"):
        fid_confidence_interval(np.zeros((10, 3)), ref)
    with pytest.raises(UsageError, match="n_boot"):
        fid_confidence_interval(x, ref, n_boot=1)
