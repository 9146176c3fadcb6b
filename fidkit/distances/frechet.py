"""The Frechet distance between two Gaussians, exact to float64 rounding, with diagnostics.

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)

The cross term is computed through factors rather than a matrix square root. With
S_a = L_a L_a^T and S_b = L_b L_b^T (L of shape (d, r), r the numerical rank),

    tr sqrt(S_a S_b) = sum of the singular values of M = L_a^T L_b   (the nuclear norm of M),

because S_a S_b is similar to L_b^T L_a L_a^T L_b = M^T M. This avoids the non-symmetric
``sqrtm`` / ``eigvals`` of S_a S_b that the peers use, whose error on the small eigenvalues is
about sqrt(eps) * |S_a S_b| each; singular values of M carry an error of eps * |M| instead.

Numerical choices, all measured (``benchmarks/frechet.py``):

* Factor: Cholesky when the covariance is numerically full rank (fast), otherwise a pivoted
  Cholesky (LAPACK ``dpstrf``), truncated at the numerical rank. Truncation matters: a covariance
  of n < d samples has rank n - 1, and the rounding noise in its null space (about eps * |S|)
  would otherwise add sqrt(eps)-sized terms to the cross term, the peers' main error in that
  regime. The factorisation is also the positive semi-definiteness check: what the pivoted
  Cholesky leaves over (the Schur complement of the kept pivots) must be rounding noise, else the
  matrix is not a covariance (``CovarianceFactor.negative``). Loading a stats file therefore does
  only O(d^2) checks.
* Singular values: the eigenvalues of the small Gram matrix M M^T (a symmetric solver, about
  4x faster than an SVD at d = 2048) are used when an error estimate shows their square roots
  are accurate to 1e-11 of the result (:func:`_gram_error`: fifty times the typical effect of a
  backward-stable solver's rounding, capped by the worst case); otherwise (ill-conditioned
  covariances, graded spectra) the singular values of M are computed directly. For two full-rank Cholesky factors, M is formed with
  triangular BLAS (dtrmm), and a pair for which the determinants and the diagonal of M already
  show the check must fail (ill-conditioned covariances; a small distance between large ones)
  goes straight to the SVD without computing the Gram eigenvalues first.
* Threads: the numpy path runs numpy's and scipy's LAPACK with as many threads as there are idle
  cores (:mod:`fidkit.distances.blas_threads`): OpenBLAS's threads wait on each other at every
  step, so one thread without a core of its own stalls all of them (7-10x slower SVDs measured
  with one competing process on 2 cores). The numpy path never imports torch.

``frechet_distance`` keeps the classic signature and returns a float; ``frechet`` takes two
:class:`~fidkit.statistics.Statistics` and returns a :class:`FrechetResult` with the parts, the
ranks and the warnings. A reference ``Statistics`` is factored once per process (see
:func:`clear_factor_cache`).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from fidkit.distances.blas_threads import blas_threads
from fidkit.errors import StatsFileError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from fidkit.statistics import Statistics

_EPS = float(np.finfo(np.float64).eps)
#: Relative error the Gram-matrix shortcut must be estimated to stay under, else the SVD is used
#: (an order of magnitude below the 1e-10 the benchmark holds fidkit to).
_GRAM_TOLERANCE = 1e-11
#: How many times the Gram route's typical error (see :func:`_gram_error`) is taken; the largest
#: ratio of a measured error to that estimate was 8.5.
_GRAM_SAFETY = 50.0
#: Smallest dims for which the LAPACK threads are fitted to the idle cores (see blas_threads);
#: below, one thread.
_THREADED_DIMS = 384
#: How many factors the cache keeps (each is up to d*d*8 bytes: 32 MiB at d = 2048).
_CACHE_SIZE = 4


@dataclass
class FrechetResult:
    """The Frechet distance and how it was made.

    ``value = mean_term + trace_a + trace_b - 2 * cross_term`` (clamped at 0 when rounding makes it
    slightly negative, with a warning), in squared feature units. ``cross_term`` is
    tr sqrt(S_a S_b). ``rank_a`` / ``rank_b`` are the numerical ranks of the covariances
    (eigenvalues below ~d * eps * max diag count as 0). ``n_a`` / ``n_b`` are sample counts, None
    when unknown. ``method`` says how the singular values were computed (``"gram"`` or ``"svd"``).
    ``warnings`` are one-line messages meant for a person (the CLI prints them on stderr).
    """

    value: float
    mean_term: float
    trace_a: float
    trace_b: float
    cross_term: float
    dims: int
    rank_a: int
    rank_b: int
    n_a: Optional[int] = None
    n_b: Optional[int] = None
    method: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return asdict(self)


@dataclass
class CovarianceFactor:
    """``sigma ~= matrix @ matrix.T`` with ``matrix`` of shape (d, rank), float64, on the device
    of the input (numpy or a torch tensor). ``trace`` is tr(sigma); ``negative`` is the largest
    magnitude of a negative eigenvalue (or pivot) dropped beyond rounding, 0.0 for a proper
    covariance; ``finite`` is False when sigma held NaN or inf."""

    matrix: Any
    rank: int
    trace: float
    negative: float = 0.0
    finite: bool = True
    #: True for a full-rank Cholesky factor (square, lower triangular): products with it can use
    #: triangular BLAS, and ``logdet`` = log det(sigma) is known from its diagonal.
    triangular: bool = False
    logdet: float = float("nan")


# --------------------------------------------------------------------------- public functions


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as a Python float.

    Args:
        mu1, mu2: means, shape (d,); numpy arrays, sequences or torch tensors.
        sigma1, sigma2: covariances, shape (d, d), symmetric positive semi-definite.
            Torch tensors are computed in float64 on their own device (GPU when they are there).

    Returns:
        The squared Frechet distance (>= 0, in squared feature units); NaN if an input holds
        NaN or inf. Use :func:`frechet_from_moments` for the parts and the warnings.

    Raises:
        UsageError: the shapes do not agree.
    """
    return frechet_from_moments(mu1, sigma1, mu2, sigma2).value


def frechet_from_moments(
    mu1: Any,
    sigma1: Any,
    mu2: Any,
    sigma2: Any,
    *,
    n_a: int | None = None,
    n_b: int | None = None,
    factor_a: CovarianceFactor | None = None,
    factor_b: CovarianceFactor | None = None,
    names: tuple[str, str] = ("side a", "side b"),
) -> FrechetResult:
    """Like :func:`frechet_distance`, returning a :class:`FrechetResult`; ``names`` say which
    side a warning is about (e.g. ``("the generated side", "the reference")``).

    ``n_a`` / ``n_b`` (sample counts) only feed the warnings. ``factor_a`` / ``factor_b``, from
    :func:`covariance_factor`, skip the decomposition of that side (a cached reference).

    Raises:
        UsageError: the shapes do not agree.
    """
    backend = _backend_of(mu1, sigma1, mu2, sigma2)
    m1, s1 = backend.vector(mu1), backend.matrix(sigma1)
    m2, s2 = backend.vector(mu2), backend.matrix(sigma2)
    d = int(m1.shape[0])
    if tuple(m2.shape) != (d,) or tuple(s1.shape) != (d, d) or tuple(s2.shape) != (d, d):
        raise UsageError(
            f"statistics of different shapes: mu {tuple(m1.shape)} / {tuple(m2.shape)}, "
            f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}; compare features of the same layer (dims)"
        )
    with backend.threads(d):
        fa = factor_a if factor_a is not None else backend.factor(s1)
        fb = factor_b if factor_b is not None else backend.factor(s2)
        for name, f in (("a", fa), ("b", fb)):
            if f.rank and int(f.matrix.shape[0]) != d:
                raise UsageError(f"cached factor of side {name} has {f.matrix.shape[0]} dims, expected {d}")
        return _assemble(backend, m1, m2, fa, fb, d, n_a, n_b, names)


def frechet(stats_a: "Statistics", stats_b: "Statistics", *, cache: bool = True,
            names: tuple[str, str] = ("side a", "side b")) -> FrechetResult:
    """Frechet distance between two :class:`~fidkit.statistics.Statistics`, with diagnostics.

    Args:
        stats_a, stats_b: the two sides (mu (d,), sigma (d, d), n).
        cache: keep each side's covariance factor for later calls with the same object (keyed
            by identity and checked against a hash of sigma, so an edited sigma is refactored;
            the factor is dropped when the object is garbage-collected). Comparing many
            generated sets against one reference thus decomposes the reference once.

    Returns:
        A :class:`FrechetResult`; ``warnings`` includes "n < d" notes (the covariance is then
        singular and FID is biased upward; see ``docs/sample_size.md``), and a rank note when
        n is not recorded and the covariance has rank < d.

    Raises:
        UsageError: the two sides have different dims, or an in-memory sigma is not positive
            semi-definite.
        StatsFileError: sigma of a side loaded from a file is not positive semi-definite (the
            load only checks what costs O(d^2); this factorisation is the full check).
    """
    if stats_a.dims != stats_b.dims:
        raise UsageError(
            f"statistics of {stats_a.dims} and {stats_b.dims} dims; compare features of the same layer"
        )
    fa = cached_factor(stats_a) if cache else covariance_factor(stats_a.sigma)
    fb = cached_factor(stats_b) if cache else covariance_factor(stats_b.sigma)
    for side, stats, f in ((names[0], stats_a, fa), (names[1], stats_b, fb)):
        if f.negative > 0:
            _refuse_not_covariance(side, stats, f)
    return frechet_from_moments(
        stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma,
        n_a=stats_a.n, n_b=stats_b.n, factor_a=fa, factor_b=fb, names=names,
    )


def _refuse_not_covariance(side: str, stats: "Statistics", f: CovarianceFactor) -> None:
    loaded = stats.meta.get("loaded_from") if isinstance(stats.meta, dict) else None
    what = (f"sigma is not positive semi-definite (a negative direction of -{f.negative:.3e}; "
            f"trace {f.trace:.3e}); a covariance cannot be negative")
    if isinstance(loaded, dict) and loaded.get("file"):
        raise StatsFileError(f"{loaded['file']}: {what}; recompute the statistics "
                             "(fidkit info shows its eigenvalues)")
    raise UsageError(f"statistics of {side}: {what}")


def covariance_factor(sigma: Any) -> CovarianceFactor:
    """Factor a covariance, (d, d) numpy array or torch tensor, as L L^T with L (d, rank).

    Numerical rank: pivots / eigenvalues at most ``d * eps * max(diag(sigma))`` count as zero (the
    rounding noise of a covariance of fewer than d samples lies below this). Never raises on a
    non-PSD or non-finite input: it reports them in the factor's ``negative`` / ``finite``.
    """
    backend = _backend_of(sigma)
    matrix = backend.matrix(sigma)
    with backend.threads(int(matrix.shape[0])):
        return backend.factor(matrix)


def cached_factor(stats: "Statistics") -> CovarianceFactor:
    """:func:`covariance_factor` of ``stats.sigma``, computed once per object and sigma content."""
    key = id(stats)
    sigma = np.ascontiguousarray(stats.sigma)
    digest = hashlib.blake2b(sigma.view(np.uint8).reshape(-1), digest_size=16).digest()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == digest:
            _CACHE.move_to_end(key)
            return hit[1]
    factor = covariance_factor(sigma)
    with _CACHE_LOCK:
        if key not in _CACHE:
            # ids are reused after collection: drop the entry with the object
            weakref.finalize(stats, _forget, key)
        _CACHE[key] = (digest, factor)
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return factor


def clear_factor_cache() -> None:
    """Forget every cached covariance factor (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


_CACHE: "OrderedDict[int, tuple[bytes, CovarianceFactor]]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _forget(key: int) -> None:
    with _CACHE_LOCK:
        _CACHE.pop(key, None)


# --------------------------------------------------------------------------- assembly


def _assemble(backend: "_Backend", m1: Any, m2: Any, fa: CovarianceFactor, fb: CovarianceFactor,
              d: int, n_a: int | None, n_b: int | None,
              names: tuple[str, str] = ("side a", "side b")) -> FrechetResult:
    warnings: list[str] = []
    diff = m1 - m2
    mean_term = backend.scalar((diff * diff).sum())
    finite = fa.finite and fb.finite and math.isfinite(mean_term)
    for side, n, f in ((names[0], n_a, fa), (names[1], n_b, fb)):
        if not f.finite:
            warnings.append(f"covariance of {side} holds NaN or inf; FID is undefined (NaN)")
        if f.negative > 0:
            warnings.append(
                f"covariance of {side} has a negative eigenvalue of about -{f.negative:.3g}, "
                "beyond rounding: it is not a covariance; that direction was dropped"
            )
        if n is not None and 0 < n <= d:
            warnings.append(
                f"{side} has n = {n} samples for d = {d} dims: its covariance is singular "
                f"(rank <= {n - 1}) and FID is biased upward at this n; use more samples or "
                "report FID-infinity (see docs/sample_size.md)"
            )
        elif not n and f.finite and f.rank < d:
            warnings.append(
                f"covariance of {side} has rank {f.rank} < d = {d} (n not recorded): it was "
                f"made from about {f.rank + 1} samples or has constant features, and FID is biased "
                "upward; use more samples (see docs/sample_size.md)"
            )
    if not math.isfinite(mean_term) and fa.finite and fb.finite:
        warnings.append("a mean holds NaN or inf; FID is undefined (NaN)")
    if not finite:
        nan = float("nan")
        return FrechetResult(nan, mean_term, fa.trace, fb.trace, nan, d, fa.rank, fb.rank,
                             n_a, n_b, "none", warnings)
    cross, method = _cross_term(backend, fa, fb, mean_term)
    value = mean_term + fa.trace + fb.trace - 2.0 * cross
    if value < 0:
        # Only rounding can do this: cross <= sqrt(tr_a tr_b) <= (tr_a + tr_b) / 2 for PSD factors.
        warnings.append(f"FID of {value:.3g} clamped to 0 (rounding; the two sides are ~equal)")
        value = 0.0
    return FrechetResult(value, mean_term, fa.trace, fb.trace, cross, d, fa.rank, fb.rank,
                         n_a, n_b, method, warnings)


def _cross_term(backend: "_Backend", fa: CovarianceFactor, fb: CovarianceFactor,
                mean_term: float) -> tuple[float, str]:
    """tr sqrt(S_a S_b) = nuclear norm of L_a^T L_b, and which route computed it."""
    if fa.rank == 0 or fb.rank == 0:
        return 0.0, "empty"
    m = backend.cross_matrix(fa, fb)  # (r_a, r_b)
    k = min(fa.rank, fb.rank)
    scale_hi = mean_term + fa.trace + fb.trace
    if _gram_hopeless(backend, m, fa, fb, k, scale_hi):
        return backend.scalar(backend.svdvals(m).sum()), "svd"
    gram = backend.gram(m, rows=fa.rank <= fb.rank)  # (k, k), eigenvalues = singular values^2
    return nuclear_norm_from_gram(backend, m, gram, scale_hi, fa.trace + fb.trace)


def nuclear_norm_from_gram(backend: "_Backend", m: Any, gram: Any, scale_hi: float, traces: float,
                           tolerance: float = _GRAM_TOLERANCE) -> tuple[float, str]:
    """Sum of the singular values of ``m`` from the eigenvalues of ``gram`` (m m^T or m^T m, which
    this may overwrite), or from an SVD of ``m`` when squaring lost too many digits. ``m`` may be
    a function returning the matrix, called only for the SVD.

    The result feeds ``value = scale_hi - 2 * cross`` (``scale_hi`` = mean term + both traces,
    ``traces`` = the two traces); the Gram route is kept when its error estimate is at most
    ``tolerance`` (default 1e-11) of that value. Returns (sum, "gram" or "svd").
    """
    lam = backend.eigvalsh(gram)
    lam_max = max(float(lam[-1]), 0.0)
    delta = 4.0 * _EPS * lam_max
    root = backend.sqrt_clamped(lam)
    cross_gram = backend.scalar(root.sum())
    estimate = _gram_error(backend, root, delta) if delta > 0 else 0.0
    scale = max(scale_hi - 2.0 * cross_gram, 1e-6 * traces)
    if 2.0 * estimate <= tolerance * scale:
        return cross_gram, "gram"
    return backend.scalar(backend.svdvals(m() if callable(m) else m).sum()), "svd"


def _gram_error(backend: "_Backend", root: Any, delta: float) -> float:
    """Error estimate of sum(sqrt(lam)) over k eigenvalues lam = root**2 of the Gram matrix.

    LAPACK's approximate error bound for each symmetric eigenvalue is eps * |G| (Users' Guide,
    "Error Bounds for the Symmetric Eigenproblem"); ``delta`` = 4 eps |G| also covers the rounding
    of forming G. A square root then moves by at most delta * w_i, w_i = 1 / (sqrt(lam_i) +
    sqrt(delta)). The worst case, every eigenvalue off by the whole delta in the same direction,
    is delta * sum(w) (the bound this module used alone before). Rounding errors do not line up:
    a backward-stable solver's error is a small symmetric perturbation, whose effect on each
    eigenvalue behaves like an independent error of size delta / sqrt(k), so the sum moves by
    about delta * sqrt(sum(w^2) / k). Measured on 66 spectra (d = 256..2048: close, well- and
    ill-conditioned, graded; the closed form as truth) the Gram route's error stayed within 8.5x
    of that estimate, and within 0.05x of it wherever the worst case exceeds it most; the
    estimate is therefore taken ``_GRAM_SAFETY`` (50) times over, and never above the worst case.
    """
    w = 1.0 / (root + math.sqrt(delta))
    k = int(root.shape[0])
    worst = delta * backend.scalar(w.sum())
    typical = delta * math.sqrt(backend.scalar((w * w).sum()) / max(k, 1))
    return min(worst, _GRAM_SAFETY * typical)


def _gram_hopeless(backend: "_Backend", m: Any, fa: CovarianceFactor, fb: CovarianceFactor,
                   k: int, scale_hi: float) -> bool:
    """Whether the Gram route's error check is sure to fail, so its eigenvalues (a third of the
    cost at d = 2048) need not be computed. Only a shortcut: when this says no, the check after
    the eigenvalues still decides, and a wrong yes costs time, never accuracy (the SVD is exact).

    The check fails when the error bound exceeds ``_GRAM_TOLERANCE`` times the value. Here a
    lower estimate of the bound is set against an upper bound of the value:

    * error estimate (:func:`_gram_error`): for two full-rank Cholesky factors det(G) =
      det(S_a) det(S_b) is known from their diagonals, so the geometric mean g of G's
      eigenvalues is free, and k eigenvalues all equal to g give a lower estimate of both the
      worst case and the typical error (each is convex in log lam: Jensen); a few power steps
      give a lower estimate of lam_max.
    * value: for any orthogonal Q, tr(M Q) <= |M|_* (the nuclear norm); with Q a diagonal of
      signs, |M|_* >= sum |M_ii|, so value <= scale_hi - 2 sum |M_ii| (O(d), M is at hand). This
      is what lets a small distance between large covariances (FID 4 beside traces of 8000)
      skip the eigenvalues when the check is sure to fail there.

    Both estimates lean the safe way, so a factor of 2 (for the rounding of the estimates
    themselves) suffices."""
    if not (fa.triangular and fb.triangular) or k < 64:
        return False
    logdet = fa.logdet + fb.logdet
    if not math.isfinite(logdet):
        return False
    g = math.exp(logdet / k)
    diagonal = backend.scalar(backend.abs_diagonal_sum(m))
    traces = fa.trace + fb.trace
    value_hi = scale_hi - 2.0 * diagonal if math.isfinite(diagonal) else scale_hi
    value_hi = max(min(value_hi, scale_hi), 1e-6 * traces)

    def hopeless(lam_max: float) -> bool:
        delta = 4.0 * _EPS * lam_max
        estimate = min(k, _GRAM_SAFETY) * delta / (math.sqrt(g) + math.sqrt(delta))
        return 2.0 * estimate > 2.0 * _GRAM_TOLERANCE * value_hi

    # |M|_F^2 >= lam_max costs one pass; only when even it condemns the Gram route are the
    # power steps (a lower estimate, 0.06 s at d = 2048) spent to confirm.
    frobenius = backend.scalar((m * m).sum())
    if not (frobenius > 0 and math.isfinite(frobenius)) or not hopeless(frobenius):
        return False
    return hopeless(backend.largest_gram_eigenvalue(m))


# --------------------------------------------------------------------------- backends


class _Backend:
    def threads(self, dims: int) -> Any:
        """A context in which to run the linear algebra for ``dims``-square matrices."""
        return contextlib.nullcontext()

    def vector(self, x: Any) -> Any: ...
    def matrix(self, x: Any) -> Any: ...
    def factor(self, s: Any) -> CovarianceFactor: ...
    def cross_matrix(self, fa: CovarianceFactor, fb: CovarianceFactor) -> Any: ...
    def gram(self, m: Any, rows: bool) -> Any: ...
    def largest_gram_eigenvalue(self, m: Any) -> float: ...
    def abs_diagonal_sum(self, m: Any) -> Any: ...
    def eigvalsh(self, a: Any) -> Any: ...
    def svdvals(self, a: Any) -> Any: ...
    def sqrt_clamped(self, x: Any) -> Any: ...
    def scalar(self, x: Any) -> float: ...


def _tolerance(diag_max: float, d: int) -> float:
    return d * _EPS * max(diag_max, 0.0)


class _Numpy(_Backend):
    def threads(self, dims: int) -> Any:
        # Small matrices gain nothing from threads, and OpenBLAS still splits some calls (dtrmm
        # at d = 64 took 22 ms with 2 threads on a loaded machine, against 0.05 ms with 1): one
        # thread, without counting the idle cores (~1 ms).
        return blas_threads() if dims >= _THREADED_DIMS else blas_threads(1)

    def vector(self, x: Any) -> np.ndarray:
        return np.asarray(_host(x), dtype=np.float64).reshape(-1)

    def matrix(self, x: Any) -> np.ndarray:
        return np.asarray(_host(x), dtype=np.float64)

    def factor(self, s: np.ndarray) -> CovarianceFactor:
        d = int(s.shape[0])
        if not np.isfinite(s).all():
            return CovarianceFactor(np.zeros((d, 0)), 0, float("nan"), finite=False)
        trace = float(np.trace(s))
        if d == 0:
            return CovarianceFactor(np.zeros((0, 0)), 0, 0.0)
        original = s
        s = _symmetric_part(original)  # the lower triangle alone must stand for the matrix
        tol = _tolerance(float(np.max(np.diag(s))), d)
        if tol == 0.0:
            return CovarianceFactor(np.zeros((d, 0)), 0, trace)
        try:
            low = _cholesky(s, overwrite=True)  # s is ours: no 32 MiB copy at d = 2048
        except np.linalg.LinAlgError:
            low = None
        # Cholesky succeeds on a rank-deficient matrix when rounding keeps its pivots positive;
        # a pivot at noise level means the remaining directions are noise: factor with rank.
        if low is not None and float(np.min(np.diag(low))) ** 2 > tol:
            logdet = 2.0 * float(np.sum(np.log(np.diag(low))))
            return CovarianceFactor(low, d, trace, triangular=True, logdet=logdet)
        s = _symmetric_part(original)  # the attempt above overwrote it
        pivoted = _pivoted_cholesky(s, tol)
        if pivoted is not None:
            low, rank, negative = pivoted
            return CovarianceFactor(low, rank, trace, negative)
        w, v = np.linalg.eigh(s)
        keep = w > tol
        negative = float(-w[0]) if w[0] < -tol else 0.0
        low = v[:, keep] * np.sqrt(w[keep])
        return CovarianceFactor(np.ascontiguousarray(low), int(keep.sum()), trace, negative)

    def cross_matrix(self, fa: CovarianceFactor, fb: CovarianceFactor) -> np.ndarray:
        a, b = fa.matrix, fb.matrix
        if fa.triangular and fb.triangular:
            try:
                from scipy.linalg.blas import dtrmm
            except ImportError:
                return a.T @ b
            # L_a^T L_b with dtrmm: half the flops of a general product (0.09 s against 0.19 s
            # at d = 2048, idle 2 cores). dpotrf's factors are Fortran-ordered already.
            return dtrmm(1.0, np.asfortranarray(a), np.asfortranarray(b), side=0, lower=1,
                         trans_a=1)
        return a.T @ b

    def gram(self, m: np.ndarray, rows: bool) -> np.ndarray:
        # numpy sends m @ m.T to dsyrk itself and mirrors the triangle: 0.11 s at d = 2048,
        # against 0.15 s for scipy's dsyrk alone (idle 2 cores).
        return m @ m.T if rows else m.T @ m

    def largest_gram_eigenvalue(self, m: np.ndarray) -> float:
        """A few power steps on M^T M (matrix-vector products only): a lower estimate of
        its largest eigenvalue, good to a few per cent on the spectra met here."""
        v = np.ones(m.shape[1]) / math.sqrt(m.shape[1])
        lam = 0.0
        for _ in range(6):
            w = m.T @ (m @ v)
            lam = float(np.linalg.norm(w))
            if not lam > 0 or not math.isfinite(lam):
                return lam
            v = w / lam
        return lam

    def abs_diagonal_sum(self, m: np.ndarray) -> float:
        return float(np.abs(np.diagonal(m)).sum())

    def eigvalsh(self, a: np.ndarray) -> np.ndarray:
        try:
            from scipy.linalg import eigvalsh
        except ImportError:
            return np.linalg.eigvalsh(a)
        # dsyevd, values only: 0.32 s against numpy's 0.37 s at d = 2048 (idle, 2 cores). The
        # Gram matrix is ours and symmetric: its Fortran-ordered transpose is worked on in place.
        return eigvalsh(a.T if a.flags.c_contiguous else a, driver="evd", check_finite=False,
                        overwrite_a=True)

    def svdvals(self, a: np.ndarray) -> np.ndarray:
        # scipy's dgesdd, values only: 1.37 s at d = 2048 with 2 threads idle, 2.3 s with 1.
        # (torch's MKL SVD is ~1.4 s, but the numpy path must not import torch.) Under load it
        # is the call that suffers most from a thread without a core: see blas_threads.
        try:
            from scipy.linalg import svdvals
        except ImportError:  # pragma: no cover - scipy is a dependency
            return np.linalg.svd(a, compute_uv=False)
        return svdvals(a, check_finite=False)

    def sqrt_clamped(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(x, 0.0, None))

    def scalar(self, x: Any) -> float:
        return float(x)


def _symmetric_part(s: np.ndarray) -> np.ndarray:
    """(s + s^T) / 2 in one new array (no second temporary)."""
    out = np.add(s, s.T)
    out *= 0.5
    return out


def _cholesky(s: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Lower Cholesky factor of a symmetric s; LAPACK dpotrf through scipy when importable (0.07 s
    against numpy's 0.13 s at d = 2048, idle 2 cores). With ``overwrite`` s is destroyed and its
    memory holds the factor. Raises LinAlgError when s is not positive."""
    try:
        from scipy.linalg import lapack
    except ImportError:
        return np.linalg.cholesky(s)
    # s is symmetric, so its transpose (a Fortran-ordered view) is the same matrix and LAPACK
    # can work on it in place.
    low, info = lapack.dpotrf(s.T if s.flags.c_contiguous else s, lower=1, clean=1,
                              overwrite_a=int(overwrite))
    if info != 0:
        raise np.linalg.LinAlgError(f"dpotrf info {info}")
    return low


def _pivoted_cholesky(s: np.ndarray, tol: float) -> tuple[np.ndarray, int, float] | None:
    """LAPACK dpstrf through scipy (about 4x faster than eigh); None when scipy is absent.

    Also the positive semi-definiteness check: dpstrf stops at the first pivot <= tol, and for a
    PSD matrix the Schur complement it leaves (R = S22 - L21 L21^T, at most (d - rank)^2 entries,
    formed explicitly: dpstrf does not return it) then has every entry within rounding of 0
    (|R_ij| <= sqrt(R_ii R_jj)). An entry beyond that means a negative direction; only then are
    the eigenvalues of S computed, to report the most negative one as ``negative``."""
    try:
        from scipy.linalg import lapack
    except ImportError:
        return None
    c, piv, rank, info = lapack.dpstrf(s, lower=1, tol=tol)
    if info < 0:
        return None
    d = s.shape[0]
    rank = int(rank)
    order = piv - 1
    low = np.tril(c)[:, :rank]
    factor = np.empty((d, rank))
    factor[order] = low  # undo the symmetric permutation: S = P L L^T P^T
    negative = 0.0
    if rank < d:
        rest = order[rank:]
        tail = low[rank:]
        residual = s[np.ix_(rest, rest)] - tail @ tail.T
        if float(np.abs(residual).max()) > 10.0 * tol:
            negative = max(-float(np.linalg.eigvalsh(s)[0]), 0.0)
    return np.ascontiguousarray(factor), rank, negative


class _Torch(_Backend):
    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = device

    def _t(self, x: Any) -> Any:
        torch = self.torch
        if isinstance(x, torch.Tensor):
            return x.detach().to(device=self.device, dtype=torch.float64)
        return torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device)

    def vector(self, x: Any) -> Any:
        return self._t(x).reshape(-1)

    def matrix(self, x: Any) -> Any:
        return self._t(x)

    def factor(self, s: Any) -> CovarianceFactor:
        torch = self.torch
        d = int(s.shape[0])
        if not bool(torch.isfinite(s).all()):
            return CovarianceFactor(s.new_zeros((d, 0)), 0, float("nan"), finite=False)
        trace = float(torch.trace(s)) if d else 0.0
        if d == 0:
            return CovarianceFactor(s.new_zeros((0, 0)), 0, 0.0)
        s = (s + s.T) * 0.5
        tol = _tolerance(float(torch.diagonal(s).max()), d)
        if tol == 0.0:
            return CovarianceFactor(s.new_zeros((d, 0)), 0, trace)
        low, info = torch.linalg.cholesky_ex(s)
        if int(info) == 0 and float(torch.diagonal(low).min()) ** 2 > tol:
            return CovarianceFactor(low, d, trace)
        # torch has no pivoted Cholesky: the eigendecomposition gives the rank on any device.
        w, v = torch.linalg.eigh(s)
        keep = w > tol
        negative = float(-w[0]) if float(w[0]) < -tol else 0.0
        low = v[:, keep] * torch.sqrt(w[keep])
        return CovarianceFactor(low.contiguous(), int(keep.sum()), trace, negative)

    def cross_matrix(self, fa: CovarianceFactor, fb: CovarianceFactor) -> Any:
        return fa.matrix.T @ fb.matrix

    def gram(self, m: Any, rows: bool) -> Any:
        return m @ m.T if rows else m.T @ m

    def largest_gram_eigenvalue(self, m: Any) -> float:
        return float("nan")  # torch factors are not marked triangular: never asked

    def abs_diagonal_sum(self, m: Any) -> Any:
        return self.torch.diagonal(m).abs().sum()

    def eigvalsh(self, a: Any) -> Any:
        return self.torch.linalg.eigvalsh(a)

    def svdvals(self, a: Any) -> Any:
        return self.torch.linalg.svdvals(a)

    def sqrt_clamped(self, x: Any) -> Any:
        return self.torch.sqrt(self.torch.clamp(x, min=0.0))

    def scalar(self, x: Any) -> float:
        return float(x)


def numpy_backend() -> _Backend:
    """The float64 numpy/scipy backend (for callers that build their own matrices)."""
    return _Numpy()


def _host(x: Any) -> Any:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


def _backend_of(*values: Any) -> _Backend:
    """Torch (on the first tensor's device) if any value is a torch tensor, else numpy."""
    for v in values:
        if type(v).__module__.startswith("torch") and hasattr(v, "device"):
            return _Torch(v.device)
        if isinstance(v, CovarianceFactor) and not isinstance(v.matrix, np.ndarray):
            return _Torch(v.matrix.device)
    return _Numpy()
