"""The Frechet core against closed forms, an independent nuclear norm, and a peer."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fidkit.errors import UsageError
from fidkit.distances.frechet import (
    clear_factor_cache,
    covariance_factor,
    frechet,
    frechet_distance,
    frechet_from_moments,
)
from fidkit.statistics import Statistics


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def _commuting(d: int, a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
    q = _rotation(d, rng)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    return (s1 + s1.T) / 2, (s2 + s2.T) / 2


def test_equal_covariances_give_the_mean_term():
    rng = np.random.default_rng(0)
    d = 48
    x = rng.standard_normal((200, d))
    sigma = np.cov(x, rowvar=False)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((mu1 - mu2) ** 2).sum())
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spread", [(0.5, 2.0), (1e-10, 1e2)])
def test_commuting_covariances_match_the_closed_form(spread):
    rng = np.random.default_rng(1)
    d = 96
    lo, hi = spread
    a = np.exp(rng.uniform(math.log(lo), math.log(hi), d))
    b = a * rng.uniform(0.5, 2.0, d)  # same eigenbasis: sqrt(S1 S2) has eigenvalues sqrt(a b)
    s1, s2 = _commuting(d, a, b, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum())
    got = frechet_from_moments(mu1, s1, mu2, s2)
    assert got.value == pytest.approx(expected, rel=1e-10)
    assert got.cross_term == pytest.approx(float(np.sqrt(a * b).sum()), rel=1e-10)
    assert got.rank_a == got.rank_b == d


def test_rank_deficient_closed_form():
    rng = np.random.default_rng(2)
    d, r = 80, 30
    a = np.r_[rng.uniform(0.5, 2, r), np.zeros(d - r)]
    b = np.r_[rng.uniform(0.5, 2, r), np.zeros(d - r)]
    s1, s2 = _commuting(d, a, b, rng)
    mu = np.zeros(d)
    got = frechet_from_moments(mu, s1, mu, s2)
    assert got.value == pytest.approx(float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()), rel=1e-10)
    assert got.rank_a == got.rank_b == r


@pytest.mark.parametrize("n", [40, 300])  # n < d and n > d
def test_sampled_against_the_nuclear_norm_of_the_features(n):
    # The truth from the features themselves: with centred X (n, d), S = X^T X / (n - 1), so
    # tr sqrt(S1 S2) = |X1 X2^T|_* / (n - 1), an SVD of an n x n matrix that never forms S.
    rng = np.random.default_rng(3)
    d = 120
    x = rng.standard_normal((n, d)) * np.linspace(0.1, 3, d)
    y = rng.standard_normal((n, d)) * np.linspace(0.3, 2, d) + 0.2
    xc, yc = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / (n - 1)
    truth = (((x.mean(0) - y.mean(0)) ** 2).sum() + (xc**2).sum() / (n - 1)
             + (yc**2).sum() / (n - 1) - 2 * cross)
    a = Statistics(x.mean(0), np.cov(x, rowvar=False), n)
    b = Statistics(y.mean(0), np.cov(y, rowvar=False), n)
    got = frechet(a, b, cache=False)
    assert got.value == pytest.approx(truth, rel=1e-10)
    if n < d:
        assert got.rank_a == got.rank_b == n - 1
        assert sum("n = 40 samples" in w for w in got.warnings) == 2
    else:
        assert got.warnings == []


def test_agrees_with_pytorch_fid_on_a_well_conditioned_case():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(4)
    d = 64
    x, y = rng.standard_normal((500, d)), rng.standard_normal((500, d)) * 1.3 + 0.1
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(float(calculate_frechet_distance(*args)), rel=1e-9)


def test_torch_tensors_give_the_numpy_value():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    d = 32
    x, y = rng.standard_normal((20, d)), rng.standard_normal((100, d)) + 0.5
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    tensors = [torch.tensor(v, dtype=torch.float32 if i == 0 else torch.float64) for i, v in enumerate(args)]
    expected = frechet_distance(*[np.asarray(t.double()) for t in tensors])
    got = frechet_from_moments(*tensors)
    assert got.value == pytest.approx(expected, rel=1e-10)
    assert got.rank_a == 19  # the torch path finds the rank too (by eigh: no pivoted Cholesky)


def test_cached_reference_factor_is_reused_and_refreshed():
    rng = np.random.default_rng(6)
    d = 40
    ref = Statistics(np.zeros(d), np.cov(rng.standard_normal((100, d)), rowvar=False), 100)
    gen = Statistics(np.ones(d), np.cov(rng.standard_normal((100, d)), rowvar=False), 100)
    clear_factor_cache()
    first = frechet(gen, ref).value
    import fidkit.distances.frechet as core

    calls = []
    original = core.covariance_factor
    core.covariance_factor = lambda s: calls.append(1) or original(s)
    try:
        assert frechet(gen, ref).value == first
        assert calls == []  # both sides came from the cache
        ref.sigma = ref.sigma * 4.0  # an edited reference is refactored, not served stale
        moved = frechet(gen, ref).value
        assert len(calls) == 1
    finally:
        core.covariance_factor = original
    assert moved == pytest.approx(frechet(gen, ref, cache=False).value, rel=1e-12)


def test_parts_add_up_and_serialise():
    rng = np.random.default_rng(7)
    d = 16
    a = Statistics(rng.standard_normal(d), np.cov(rng.standard_normal((50, d)), rowvar=False), 50)
    b = Statistics(rng.standard_normal(d), np.cov(rng.standard_normal((50, d)), rowvar=False), 50)
    r = frechet(a, b)
    assert r.mean_term == pytest.approx(float(((a.mu - b.mu) ** 2).sum()), rel=1e-14)
    assert r.trace_a == pytest.approx(float(np.trace(a.sigma)), rel=1e-14)
    assert r.value == pytest.approx(r.mean_term + r.trace_a + r.trace_b - 2 * r.cross_term, rel=1e-12)
    import json

    assert json.loads(json.dumps(r.to_dict()))["dims"] == d


def test_non_finite_and_non_psd_inputs_are_reported_not_hidden():
    d = 8
    bad = np.eye(d)
    bad[2, 2] = np.nan
    r = frechet_from_moments(np.zeros(d), bad, np.zeros(d), np.eye(d))
    assert math.isnan(r.value) and any("NaN" in w for w in r.warnings)
    not_psd = np.diag([1.0] * (d - 1) + [-0.5])
    r = frechet_from_moments(np.zeros(d), not_psd, np.zeros(d), np.eye(d))
    assert any("negative eigenvalue" in w for w in r.warnings)
    assert r.rank_a == d - 1


def test_tiny_negative_result_is_clamped_with_a_warning():
    rng = np.random.default_rng(8)
    d = 200
    s = np.cov(rng.standard_normal((400, d)) * 1e3, rowvar=False)
    # equal sides: the exact answer is 0 and rounding lands on either side of it
    values = [frechet_from_moments(np.zeros(d), s * k, np.zeros(d), s * k) for k in (1.0, 1.1, 1.3, 1.7)]
    for r in values:
        assert r.value >= 0.0 and r.value <= 1e-9 * (r.trace_a + r.trace_b)
        if any("clamped" in w for w in r.warnings):
            assert r.value == 0.0


def test_shape_mismatch_is_a_usage_error():
    with pytest.raises(UsageError, match="different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_factor_reconstructs_the_covariance_at_its_rank():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 50))
    s = np.cov(x, rowvar=False)
    f = covariance_factor(s)
    assert f.rank == 29
    assert np.abs(f.matrix @ f.matrix.T - s).max() <= 1e-12 * np.abs(s).max()


def test_triangular_product_equals_the_general_one():
    # Full-rank Cholesky factors are multiplied with dtrmm; the general product is the reference.
    from fidkit.distances.frechet import _Numpy

    rng = np.random.default_rng(7)
    d = 200
    s1, s2 = (np.cov(rng.standard_normal((600, d)), rowvar=False) for _ in range(2))
    fa, fb = covariance_factor(s1), covariance_factor(s2)
    assert fa.triangular and fb.triangular
    assert fa.logdet == pytest.approx(np.linalg.slogdet(s1)[1], rel=1e-12)
    fast = _Numpy().cross_matrix(fa, fb)
    plain = np.asarray(fa.matrix).T @ np.asarray(fb.matrix)
    assert np.abs(fast - plain).max() <= 1e-13 * np.abs(plain).max()


def test_gram_shortcut_skip_changes_route_cost_not_value(monkeypatch):
    # An ill-conditioned pair (condition 1e12) is recognised before the Gram eigenvalues are
    # formed; the value equals the one reached by trying Gram first and falling back, and the
    # closed form; a well-conditioned pair is not skipped.
    import fidkit.distances.frechet as frechet_module

    rng = np.random.default_rng(3)
    d = 256
    a = np.logspace(-10, 2, d)
    b = a * rng.uniform(0.5, 2.0, d)
    s1, s2 = _commuting(d, a, b, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    truth = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum())
    calls = []
    real = frechet_module._gram_hopeless
    monkeypatch.setattr(frechet_module, "_gram_hopeless",
                        lambda *args: calls.append(real(*args)) or calls[-1])
    skipped = frechet_from_moments(mu1, s1, mu2, s2)
    assert calls == [True] and skipped.method == "svd"
    monkeypatch.setattr(frechet_module, "_gram_hopeless", lambda *args: False)
    tried = frechet_from_moments(mu1, s1, mu2, s2)
    assert tried.method == "svd" and tried.value == skipped.value
    assert abs(skipped.value - truth) <= 1e-10 * truth

    monkeypatch.setattr(frechet_module, "_gram_hopeless",
                        lambda *args: calls.append(real(*args)) or calls[-1])
    well = np.exp(rng.uniform(np.log(0.1), np.log(10.0), d))
    w1, w2 = _commuting(d, well, well * rng.uniform(0.5, 2.0, d), rng)
    assert frechet_from_moments(mu1, w1, mu2, w2).method == "gram" and calls[-1] is False


def test_gram_route_is_taken_only_where_it_is_as_accurate_as_the_svd(monkeypatch):
    # Commuting covariances of many spectra (the closed form is the truth), d = 384: whichever
    # route the error estimate picks, the value is within 1e-11 of the truth plus the floor the
    # float64 inputs set (a few eps of the traces); where it picks the Gram route, the SVD of the
    # same matrix is no closer to the truth. "near" (FID ~0.5 % of the traces) is where the
    # typical-error estimate takes the Gram route and the worst case alone would not; graded and
    # ill-conditioned spectra, and a distance of 0.04 % of the traces at this d, take the SVD.
    import fidkit.distances.frechet as frechet_module

    d = 384
    rng = np.random.default_rng(7)
    spectra = {
        "well": lambda: _log_uniform(rng, d, 0.1, 10.0, 0.5, 2.0),
        "near": lambda: _log_uniform(rng, d, 0.1, 10.0, 0.7, 1.4),
        "close": lambda: _log_uniform(rng, d, 0.1, 10.0, 0.9, 1.1),
        "graded": lambda: (lambda a: (a, a * rng.uniform(0.9, 1.1, d)))(np.logspace(-3, 2, d)),
        "ill": lambda: (lambda a: (a, a * rng.uniform(0.5, 2.0, d)))(np.logspace(-8, 2, d)),
    }
    routes: dict[str, set] = {}
    worst_case_routes: dict[str, set] = {}
    for name, make in spectra.items():
        for _ in range(3):
            a, b = make()
            s1, s2 = _commuting(d, a, b, rng)
            zero = np.zeros(d)
            truth = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
            floor = 8 * np.finfo(float).eps * (a.sum() + b.sum())
            got = frechet_from_moments(zero, s1, zero, s2)
            routes.setdefault(name, set()).add(got.method)
            assert abs(got.value - truth) <= 1e-11 * truth + floor, (name, got.method)
            with monkeypatch.context() as patch:
                patch.setattr(frechet_module, "_GRAM_SAFETY", float("inf"))  # worst case only
                worst_case_routes.setdefault(name, set()).add(
                    frechet_from_moments(zero, s1, zero, s2).method)
            if got.method == "gram":
                with monkeypatch.context() as patch:
                    patch.setattr(frechet_module, "_GRAM_TOLERANCE", 0.0)  # force the SVD
                    svd = frechet_from_moments(zero, s1, zero, s2)
                assert svd.method == "svd"
                assert abs(got.value - truth) <= 2 * abs(svd.value - truth) + 1e-12 * truth + floor
    assert routes == {"well": {"gram"}, "near": {"gram"}, "close": {"svd"}, "graded": {"svd"},
                      "ill": {"svd"}}
    assert worst_case_routes["near"] == {"svd"}


def _log_uniform(rng, d, lo, hi, f_lo, f_hi):
    a = np.exp(rng.uniform(np.log(lo), np.log(hi), d))
    return a, a * rng.uniform(f_lo, f_hi, d)


def test_rank_below_d_warns_when_n_is_not_recorded():
    # A peer's .npz (mu, sigma only) made from 30 samples in 64 dims: rank 29, n unknown (0).
    rng = np.random.default_rng(10)
    d = 64
    x, y = rng.standard_normal((30, d)), rng.standard_normal((500, d))
    low = Statistics(x.mean(0), np.cov(x, rowvar=False), 0)
    full = Statistics(y.mean(0), np.cov(y, rowvar=False), 0)
    assert np.linalg.matrix_rank(low.sigma) == 29  # the independent count
    r = frechet(low, full, cache=False)
    assert r.rank_a == 29 and r.rank_b == d
    assert [w for w in r.warnings if "rank" in w] == [
        w for w in r.warnings if "side a has rank 29 < d = 64" in w.replace("covariance of ", "")]
    assert len(r.warnings) == 1
    assert frechet(full, full, cache=False).warnings == []
    # with n recorded the n <= d note says it instead, once
    assert sum("n = 30 samples" in w for w in frechet(
        Statistics(low.mu, low.sigma, 30), full, cache=False).warnings) == 1


def test_a_sigma_that_is_not_psd_is_refused_by_the_distance():
    # Positive diagonal and |s_ij| <= sqrt(s_ii s_jj) everywhere, yet an eigenvalue of -0.3: only a
    # factorisation finds it. Raw arrays get a warning; a Statistics from a file is refused, naming
    # the file, as loading used to.
    from fidkit.errors import StatsFileError

    rng = np.random.default_rng(11)
    d = 40
    q = _rotation(d, rng)
    sigma = (q * np.r_[rng.uniform(1, 2, d - 1), -0.3]) @ q.T
    sigma = (sigma + sigma.T) / 2
    root = np.sqrt(np.diag(sigma))
    assert np.diag(sigma).min() > 0 and (np.abs(sigma) <= np.outer(root, root) * (1 + 1e-12)).all()
    good = Statistics(np.zeros(d), np.eye(d), 100)
    warned = frechet_from_moments(np.zeros(d), sigma, np.zeros(d), np.eye(d))
    assert any("negative eigenvalue of about -0.3" in w for w in warned.warnings)
    bad = Statistics(np.zeros(d), sigma, 100, {"loaded_from": {"file": "bad.npz"}})
    with pytest.raises(StatsFileError, match=r"^bad.npz: sigma is not positive semi-definite.*-3.000e-01"):
        frechet(bad, good)
    with pytest.raises(UsageError, match="side b"):
        frechet(good, Statistics(np.zeros(d), sigma, 100), cache=False)


def test_pivoted_factor_sees_a_negative_direction_hidden_in_the_schur_complement():
    # [[1, 0, 0], [0, 0, 1], [0, 1, 0]] after the first pivot: every remaining diagonal entry is
    # 0 (so the pivoted Cholesky stops), yet the matrix has eigenvalue -1.
    sigma = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    f = covariance_factor(sigma)
    assert f.negative == pytest.approx(-np.linalg.eigvalsh(sigma)[0], rel=1e-12)
    # and a PSD matrix of rank n - 1 < d shows none (rounding stays within the tolerance)
    x = np.random.default_rng(12).standard_normal((20, 60)) * 1e3
    assert covariance_factor(np.cov(x, rowvar=False)).negative == 0.0


def test_numpy_path_does_not_import_torch(tmp_path):
    # Comparing two stats files must not pay for torch: load both .npz files and take the
    # distance through every route (Gram, SVD, pivoted and full-rank factors) in a fresh process.
    import subprocess
    import sys

    rng = np.random.default_rng(13)
    d = 96
    a = np.logspace(-10, 2, d)
    s1, s2 = _commuting(d, a, a * rng.uniform(0.5, 2.0, d), rng)
    np.savez(tmp_path / "a.npz", mu=np.zeros(d), sigma=s1)
    np.savez(tmp_path / "b.npz", mu=np.ones(d), sigma=s2)
    x = rng.standard_normal((30, d))
    np.savez(tmp_path / "c.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from fidkit.statistics.statsio import load_statistics\n"
        "from fidkit.distances.frechet import frechet\n"
        "import fidkit.distances.bootstrap\n"
        "a, b, c = (load_statistics(sys.argv[i]) for i in (1, 2, 3))\n"
        "methods = {frechet(a, b).method, frechet(a, a).method, frechet(c, b).method}\n"
        "print(sorted(methods), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script] + [str(tmp_path / f"{k}.npz") for k in "abc"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['gram',", "'svd']", "False"]
