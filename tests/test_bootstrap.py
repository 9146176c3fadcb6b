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
    r = sample_size_report(x, y, ci=True, fid_inf=True, n_boot=10, fid_inf_boot=6, seed=4)
    assert r.interval is not None and r.fid_infinity is not None
    assert r.interval.n_boot == 10
    assert r.fid_infinity.interval is not None and r.fid_infinity.interval.n_boot == 6
    assert r.fid == pytest.approx(_fid_of(x, Statistics(y.mean(0), np.cov(y, rowvar=False), 400)), rel=1e-8)
    again = sample_size_report(x, y, ci=True, fid_inf=True, n_boot=10, fid_inf_boot=6, seed=4)
    assert again.to_dict() == r.to_dict()  # seeded
    assert sample_size_report(x, y, ci=False, fid_inf=True, seed=4).fid_infinity.interval is None


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


# --------------------------------------------------------------------------- the fast path
# Replicates and nested sizes are recomputed the straightforward way: the subset's own covariance
# (np.cov of the gathered rows) and mean, then the exact Frechet distance on them. The draws follow
# the order sample_size_report documents.


def _straight(rows: np.ndarray, ref: Statistics) -> float:
    from fidkit.distances.frechet import frechet_from_moments

    return frechet_from_moments(rows.mean(0), np.cov(rows, rowvar=False), ref.mu, ref.sigma).value


def _reference(d: int, seed: int, condition: float = 10.0) -> Statistics:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig = np.logspace(0, -np.log10(condition), d)
    sigma = (q * eig) @ q.T
    return Statistics(rng.standard_normal(d) * 0.1, (sigma + sigma.T) / 2, 10**6)


@pytest.mark.parametrize("n,d,condition,route", [
    (30, 48, 10.0, "gram"),    # n < d: n x n Gram matrices
    (240, 24, 10.0, "gram"),   # n > d: d x d Gram matrices, running sums across sizes
    (240, 24, 1e12, "gram"),   # an ill-conditioned reference
    (30, 48, 1e12, "svd"),     # the SVD fallback, forced, on both shapes
    (240, 24, 1e12, "svd"),
])
def test_fast_replicates_equal_the_straightforward_ones(n, d, condition, route, monkeypatch):
    import fidkit.distances.bootstrap as bootstrap

    if route == "svd":
        monkeypatch.setattr(bootstrap, "REPLICATE_TOLERANCE", -1.0)
    routes = []
    real = bootstrap.nuclear_norm_from_gram
    monkeypatch.setattr(bootstrap, "nuclear_norm_from_gram",
                        lambda *a, **k: routes.append(real(*a, **k)) or routes[-1])
    ref = _reference(d, seed=d, condition=condition)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d)) * np.linspace(0.5, 1.5, d) + 0.3
    seed, sizes_wanted = 5, 6
    r = sample_size_report(x, ref, ci=True, fid_inf=True, n_boot=4, fid_inf_boot=2, seed=seed,
                           n_points=sizes_wanted, min_fraction=0.3)
    draws = np.random.default_rng(seed)
    order = draws.permutation(n)
    sizes = r.fid_infinity.sizes
    assert {how for _, how in routes} == {route}
    expected = [_straight(x[order[:s]], ref) for s in sizes]
    np.testing.assert_allclose(r.fid_infinity.fids, expected, rtol=1e-11)
    assert r.fid == pytest.approx(_straight(x, ref), rel=1e-12)
    boot = [_straight(x[draws.integers(0, n, n)], ref) for _ in range(4)]
    np.testing.assert_allclose(r.interval.replicates, boot, rtol=1e-11)
    from fidkit.distances.bootstrap import _fit

    for value in r.fid_infinity.interval.replicates:
        idx = draws.integers(0, n, n)
        fits = _fit(sizes, [_straight(x[idx[:s]], ref) for s in sizes])[0]
        assert value == pytest.approx(fits, rel=1e-9, abs=1e-10)


def test_fast_path_agrees_with_pytorch_fid():
    # the same replicate against an independent implementation (well-conditioned: its sqrtm is
    # good to ~1e-10 here)
    from pytorch_fid.fid_score import calculate_frechet_distance

    d, n = 16, 120
    ref = _reference(d, seed=1)
    x = np.random.default_rng(2).standard_normal((n, d)) + 0.2
    r = sample_size_report(x, ref, ci=True, n_boot=3, seed=9)
    draws = np.random.default_rng(9)
    for value in r.interval.replicates:
        rows = x[draws.integers(0, n, n)]
        peer = calculate_frechet_distance(rows.mean(0), np.cov(rows, rowvar=False), ref.mu, ref.sigma)
        assert value == pytest.approx(float(peer), rel=1e-8)


def test_progress_goes_to_stderr(capsys):
    d = 8
    x = np.random.default_rng(0).standard_normal((50, d))
    ref = Statistics(np.zeros(d), np.eye(d), 1000)
    sample_size_report(x, ref, ci=True, fid_inf=True, n_boot=3, n_points=4, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "fidkit: FID bootstrap" in err and "fidkit: FID-infinity sizes" in err
    sample_size_report(x, ref, ci=True, n_boot=3)
    assert capsys.readouterr().err == ""
