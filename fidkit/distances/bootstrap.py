"""How sure a FID is: bootstrap confidence intervals, and FID-infinity (Chong & Forsyth 2020).

FID is a biased estimator: with N generated images, E[FID_N] is about FID_inf + k / N, where k > 0
depends on the model and the reference (Chong & Forsyth, "Effectively Unbiased FID and Inception
Score and where to find them", CVPR 2020). So two FIDs made with different N are not comparable,
and a single FID says nothing about how much it would move with another draw of images.

* :func:`fid_confidence_interval` answers "how much would this FID move if I drew another N
  images from the same generator?": a bootstrap interval for E[FID_N], the mean FID at *this* N.
* :func:`fid_infinity` answers "what would FID be with infinitely many images?": FID at several
  subsample sizes, a least-squares line in 1/N, and its value at 1/N = 0 (FID_inf), comparable
  across N; optionally with a bootstrap interval.

Both need the features themselves (``keep_features=True`` in the API; ``--ci`` / ``--fid-inf`` in
the CLI); statistics alone cannot be resampled. :func:`sample_size_report` does both and is what
the CLI and the API call. Everything is seeded: same inputs and seed, same numbers. See
``docs/sample_size.md`` for a user-level explanation and the cost.

Speed: with the reference held fixed (a :class:`Statistics`), its covariance is factored once,
S_ref = L L^T, and the generated features are projected once, Y = (X - mean) L (N x r). The
cross term of any subset's FID is then the nuclear norm of its centred, weighted rows of Y,
computed from the eigenvalues of whichever of its two Gram matrices is smaller: n x n below
r (a subset of n < d images has a covariance of rank n - 1), r x r above, where the r x r
matrices of nested subsets are running sums (one pass over the features for all sizes). No
subset covariance is formed or factored. Each replicate's value is kept to 1e-8 of the FID
(the Gram route's error estimate; an SVD otherwise), far below any bootstrap spread; the point
estimate (all features) is the exact :func:`~fidkit.distances.frechet.frechet_from_moments`.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from fidkit.distances.blas_threads import blas_threads
from fidkit.distances.frechet import (
    CovarianceFactor,
    covariance_factor,
    frechet_from_moments,
    nuclear_norm_from_gram,
    numpy_backend,
)
from fidkit.errors import UsageError
from fidkit.statistics import Statistics, StatisticsAccumulator

Reference = Union[Statistics, np.ndarray, Any]


@dataclass
class Interval:
    """A bootstrap interval: ``low <= estimate <= high`` typically, at confidence ``level``
    (0..1), from ``n_boot`` replicates (``replicates``, not serialised)."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "level": self.level, "n_boot": self.n_boot}


@dataclass
class FidInfinity:
    """FID extrapolated to infinitely many generated images.

    ``value`` is the intercept of the least-squares line FID_N = value + slope / N fitted to
    ``fids`` measured at ``sizes`` (numbers of generated images); ``slope`` (> 0 normally) is the
    bias coefficient k, so FID at N images is about value + slope / N. ``interval`` is a bootstrap
    interval for ``value`` when asked for. ``warnings`` are one-line notes for a person.
    """

    value: float
    slope: float
    sizes: list[int]
    fids: list[float]
    interval: Optional[Interval] = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "slope": self.slope, "sizes": list(self.sizes),
                "fids": list(self.fids),
                "interval": None if self.interval is None else self.interval.to_dict(),
                "warnings": list(self.warnings)}


@dataclass
class SampleSizeReport:
    """What :func:`sample_size_report` found: the FID of all the features, its interval (when
    asked), FID-infinity (when asked), and warnings. ``to_dict()`` is JSON-ready."""

    fid: float
    n: int
    dims: int
    interval: Optional[Interval] = None
    fid_infinity: Optional[FidInfinity] = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fid": self.fid, "n": self.n, "dims": self.dims,
                "interval": None if self.interval is None else self.interval.to_dict(),
                "fid_infinity": None if self.fid_infinity is None else self.fid_infinity.to_dict(),
                "warnings": list(self.warnings)}


# --------------------------------------------------------------------------- public functions


def fid_confidence_interval(
    features: Any,
    ref: Reference,
    *,
    n_boot: int = 50,
    level: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> Interval:
    """Bootstrap confidence interval for the mean FID at this number of generated images.

    Each replicate redraws the N generated feature rows with replacement (and the reference rows
    too when ``ref`` is a feature array) and recomputes FID. Resampling with replacement repeats
    about 37% of the rows, which inflates FID by about its own small-sample bias k / N; the
    replicates are therefore re-centred on their mean, and the interval is the estimate plus the
    (1 - level) / 2 and (1 + level) / 2 quantiles of the centred replicates. Its width shrinks
    about as 1 / sqrt(N).

    Meaning: with 95% confidence, E[FID_N] (FID averaged over redraws of N images from the same
    generator, against this reference) lies in [low, high]. It is not an interval for FID_inf:
    see :func:`fid_infinity`. With ``ref`` a :class:`Statistics`, the reference is held fixed
    (the usual case: a published reference file) and only the generated side's variability counts.

    Args:
        features: generated features, (N, d) float array or tensor, N >= 2.
        ref: a :class:`Statistics` (held fixed) or reference features (M, d) (resampled too).
        n_boot: replicates. Cost with a fixed reference, per replicate: 0.63 N d^2 multiply-adds
            and the eigenvalues of a min(0.63 N, d)-square matrix (about 0.7 s at N = 10,000,
            d = 2048 on 2 idle cores); see ``docs/sample_size.md``.
        level: confidence level in (0, 1).
        seed: seeds numpy's default generator.
        progress: a progress bar with the time left on stderr.

    Raises:
        UsageError: shapes disagree, N < 2, n_boot < 2 or level outside (0, 1).
    """
    return sample_size_report(features, ref, ci=True, fid_inf=False, n_boot=n_boot,
                              level=level, seed=seed, progress=progress).interval  # type: ignore[return-value]


def fid_infinity(
    features: Any,
    ref: Reference,
    *,
    n_points: int = 15,
    min_fraction: float = 0.1,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> FidInfinity:
    """FID_inf (Chong & Forsyth 2020): FID extrapolated linearly in 1/N to 1/N = 0.

    FID is measured against the full reference on ``n_points`` subsets of the generated features
    whose sizes are evenly spaced from ``min_fraction * N`` to N (the paper uses 15 sizes from
    5,000 to 50,000), and a least-squares line FID = a + k / size gives FID_inf = a. The subsets
    are nested prefixes of one random permutation, so all sizes cost one pass over the features;
    each prefix is still a uniform random subset of its size.

    Meaning: FID_inf estimates the FID one would get with unlimited generated images, removing
    the k / N bias that makes FIDs at different N incomparable. It is only as good as the linear
    model: keep the smallest size well above d (a warning says when it is not). The reference
    statistics keep their own bias (their N is fixed), as in the paper.

    Args:
        features: generated features (N, d).
        ref: a :class:`Statistics` or reference features (M, d) (summarised once, not resampled).
        n_points: number of subset sizes (>= 2).
        min_fraction: smallest size as a fraction of N, in (0, 1).
        n_boot: if > 0, also a bootstrap interval for FID_inf: each replicate redraws the N rows
            with replacement and repeats the extrapolation (cost about ``n_points`` times a
            replicate of :func:`fid_confidence_interval` each); the replicates are re-centred on
            their mean like :func:`fid_confidence_interval`.
        level, seed, progress: as in :func:`fid_confidence_interval`.

    Raises:
        UsageError: shapes disagree or the sizes cannot be made (N too small).
    """
    report = sample_size_report(features, ref, ci=False, fid_inf=True, n_boot=0,
                                fid_inf_boot=n_boot, level=level, seed=seed, n_points=n_points,
                                min_fraction=min_fraction, progress=progress)
    return report.fid_infinity  # type: ignore[return-value]


def sample_size_report(
    features: Any,
    ref: Reference,
    *,
    ci: bool = True,
    fid_inf: bool = False,
    n_boot: int = 50,
    fid_inf_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_points: int = 15,
    min_fraction: float = 0.1,
    progress: bool = False,
) -> SampleSizeReport:
    """FID of ``features`` against ``ref`` with, as asked, its bootstrap interval (``ci``, from
    ``n_boot`` replicates) and FID_inf (``fid_inf``), the latter with a bootstrap interval of
    ``fid_inf_boot`` replicates when that is > 0; the entry point for ``--ci`` / ``--fid-inf``.

    Arguments and errors as in :func:`fid_confidence_interval` and :func:`fid_infinity`. Random
    draws, in this order from ``numpy.random.default_rng(seed)``: the FID-infinity permutation
    (when ``fid_inf``), then per FID replicate the generated rows (``integers(0, N, N)``) and,
    for reference features, the reference rows, then per FID-infinity replicate the rows.
    ``progress`` shows one bar per stage on stderr, with the time left.
    """
    x = _features(features, "features")
    n, d = x.shape
    resample_ref = not isinstance(ref, Statistics)
    ref_x = None if not resample_ref else _features(ref, "reference features")
    ref_stats = ref if isinstance(ref, Statistics) else _stats(ref_x)
    if ref_stats.dims != d:
        raise UsageError(f"features have {d} dims but the reference has {ref_stats.dims}; "
                         "use features of the same layer")
    if n < 2:
        raise UsageError(f"need at least 2 generated feature rows, got {n}")
    if not 0.0 < level < 1.0:
        raise UsageError(f"confidence level must be in (0, 1), got {level}")
    if ci and n_boot < 2:
        raise UsageError(f"a bootstrap interval needs n_boot >= 2, got {n_boot}")
    if fid_inf and fid_inf_boot == 1:
        raise UsageError("a FID-infinity interval needs fid_inf_boot >= 2 (or 0 for none)")
    sizes = _sizes(n, n_points, min_fraction) if fid_inf else []
    # BLAS threads are fitted to the idle cores step by step (blas_threads): load changes in minutes
    rng = np.random.default_rng(seed)
    warnings: list[str] = []
    with blas_threads():
        ref_factor = covariance_factor(ref_stats.sigma)
        fid = _fid(_stats(x), ref_stats, ref_factor)
        projected = _Projected(x, ref_stats, ref_factor)
    del x
    infinity = None
    if fid_inf:
        if sizes[0] <= d:
            warnings.append(
                f"FID-infinity uses subsets from {sizes[0]} images, not more than d = {d}: "
                "there the 1/N law is rough; use more images for a reliable extrapolation")
        order = rng.permutation(n)
        with _bar(progress, len(sizes), "FID-infinity sizes") as step, blas_threads():
            fids = projected.nested_fids(order, sizes, step)
        value, slope = _fit(sizes, fids)
        infinity = FidInfinity(value, slope, sizes, fids, None, list(warnings))

    interval = None
    if ci:
        boot: list[float] = []
        with _bar(progress, n_boot, "FID bootstrap") as step:
            for _ in range(n_boot):
                idx = rng.integers(0, n, n)
                with blas_threads():
                    if resample_ref:
                        r_stats = _stats(ref_x[rng.integers(0, len(ref_x), len(ref_x))])  # type: ignore[index]
                        boot.append(_fid(projected.weighted_stats(idx), r_stats, None))
                    else:
                        boot.append(projected.weighted_fid(idx))
                step()
        interval = _interval(fid, boot, level)

    if infinity is not None and fid_inf_boot > 0:
        boot_inf: list[float] = []
        with _bar(progress, fid_inf_boot * len(sizes), "FID-infinity bootstrap") as step:
            for _ in range(fid_inf_boot):
                idx = rng.integers(0, n, n)
                with blas_threads():
                    boot_inf.append(_fit(sizes, projected.nested_fids(idx, sizes, step))[0])
        infinity.interval = _interval(infinity.value, boot_inf, level)
    if n <= d:
        warnings.insert(0, f"only {n} generated images for d = {d} dims: the covariance is "
                           "singular and FID is strongly biased upward at this N")
    return SampleSizeReport(fid, n, d, interval, infinity, warnings)


# --------------------------------------------------------------------------- the fast path

#: Relative error (of the FID) each replicate's cross term is held to: bootstrap spreads are
#: percent-level, so 1e-8 is invisible in an interval and keeps the Gram route for all but very
#: ill-conditioned pairs.
REPLICATE_TOLERANCE = 1e-8


class _Projected:
    """Generated features seen through the fixed reference's factor: any subset's FID without
    forming its covariance.

    With X0 = X - mean(X) (N x d), L the reference factor (d x r, S_ref ~= L L^T) and Y = X0 L, a
    subset with multiplicities c (sum n) has covariance S = X0c^T C X0c / (n - 1) (X0c: rows
    centred on the subset mean), so tr S comes from row norms of X0, and tr sqrt(S_ref S) =
    tr sqrt(L^T S L) is the nuclear norm of C^(1/2) Yc / sqrt(n - 1), Yc the rows of Y centred
    on the subset's mean of Y."""

    def __init__(self, x: np.ndarray, ref: Statistics, ref_factor: CovarianceFactor) -> None:
        self.center = x.mean(0)
        self.x0 = x - self.center
        self.sq = np.einsum("ij,ij->i", self.x0, self.x0)  # |x0_i|^2
        self.y0 = self.x0 @ np.asarray(ref_factor.matrix)  # (N, r)
        self.offset = self.center - ref.mu
        self.ref = ref
        self.ref_factor = ref_factor
        self.backend = numpy_backend()

    def weighted_stats(self, idx: np.ndarray) -> Statistics:
        """Statistics of ``x[idx]`` from the multiplicities, without gathering the copy (the
        straightforward path, used when the reference is resampled too)."""
        n = len(idx)
        counts = np.bincount(idx, minlength=len(self.x0)).astype(np.float64)
        mean0 = counts @ self.x0 / n
        scaled = (self.x0 - mean0) * np.sqrt(counts)[:, None]
        sigma = scaled.T @ scaled / (n - 1)
        return Statistics(self.center + mean0, (sigma + sigma.T) / 2, n)

    def weighted_fid(self, idx: np.ndarray) -> float:
        """FID of the rows ``idx`` (repeats allowed) against the reference."""
        n = len(idx)
        counts = np.bincount(idx, minlength=len(self.x0)).astype(np.float64)
        mean0 = counts @ self.x0 / n  # no gathered copy of the rows
        rows = np.flatnonzero(counts)
        c = counts[rows]
        trace = (float(c @ self.sq[rows]) - n * float(mean0 @ mean0)) / (n - 1)
        y = self.y0[rows]
        y -= c @ y / n
        y *= np.sqrt(c / (n - 1))[:, None]
        if len(rows) <= y.shape[1]:
            y = _drop_null_row(y, np.sqrt(c))
            gram = y @ y.T
        else:
            gram = y.T @ y
        return self._assemble(mean0, trace, gram, lambda: y)

    def nested_fids(self, order: np.ndarray, sizes: Sequence[int],
                    step: Callable[[], None] = lambda: None) -> list[float]:
        """FIDs of the prefixes ``order[:size]`` (repeats allowed) for increasing ``sizes``. A
        prefix of at most r distinct rows goes through :meth:`weighted_fid` (its n x n Gram
        matrix); above, the r x r Gram matrices are running sums, one pass for all sizes."""
        r = self.y0.shape[1]
        raw = np.zeros((r, r)) if sizes[-1] > r else None  # sum of y y^T over the prefix
        sum_y, sum_x, sum_sq = np.zeros(r), np.zeros(self.x0.shape[1]), 0.0
        fids, start = [], 0
        for size in sizes:
            chunk = order[start:size]
            start = size
            if raw is not None:
                y = self.y0[chunk]
                raw += y.T @ y
                sum_y += y.sum(0)
                sum_x += self.x0[chunk].sum(0)
                sum_sq += float(self.sq[chunk].sum())
            prefix = order[:size]
            if raw is None or len(np.unique(prefix)) <= r:
                fids.append(self.weighted_fid(prefix))
            else:
                mean0 = sum_x / size
                trace = (sum_sq - size * float(mean0 @ mean0)) / (size - 1)
                mean_y = sum_y / size
                # rows centred on the mean of all N: the prefix mean is small, and subtracting
                # it from the raw sum loses no digits worth having
                gram = (raw - size * np.outer(mean_y, mean_y)) / (size - 1)

                def rows(prefix: np.ndarray = prefix, mean_y: np.ndarray = mean_y,
                         size: int = size) -> np.ndarray:
                    return (self.y0[prefix] - mean_y) / math.sqrt(size - 1)

                fids.append(self._assemble(mean0, trace, gram, rows))
            step()
        return fids

    def _assemble(self, mean0: np.ndarray, trace: float, gram: np.ndarray,
                  rows: Callable[[], np.ndarray]) -> float:
        diff = self.offset + mean0
        mean_term = float(diff @ diff)
        traces = trace + self.ref_factor.trace
        cross, _ = nuclear_norm_from_gram(self.backend, rows, gram, mean_term + traces, traces,
                                          tolerance=REPLICATE_TOLERANCE)
        return max(mean_term + traces - 2.0 * cross, 0.0)


# --------------------------------------------------------------------------- helpers


def _features(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise UsageError(f"{what} must be (N, d), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise UsageError(f"{what} hold NaN or inf; check the images and the model")
    return arr


def _stats(x: np.ndarray) -> Statistics:
    acc = StatisticsAccumulator(x.shape[1])
    acc.update(x)
    return acc.statistics()


def _fid(stats: Statistics, ref: Statistics, ref_factor: CovarianceFactor | None) -> float:
    return frechet_from_moments(stats.mu, stats.sigma, ref.mu, ref.sigma,
                                factor_b=ref_factor).value


def _sizes(n: int, n_points: int, min_fraction: float) -> list[int]:
    if n_points < 2:
        raise UsageError(f"FID-infinity needs n_points >= 2, got {n_points}")
    if not 0.0 < min_fraction < 1.0:
        raise UsageError(f"min_fraction must be in (0, 1), got {min_fraction}")
    sizes = sorted({int(round(s)) for s in np.linspace(min_fraction * n, n, n_points)})
    sizes = [s for s in sizes if s >= 2]
    if len(sizes) < 2:
        raise UsageError(f"{n} generated images are too few for FID-infinity; use at least 20")
    return sizes


def _drop_null_row(w: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``w`` (u, r) with ``null @ w == 0`` (rows centred with weights ``null**2``) rotated so that
    that combination is its first row, which is dropped: (u - 1, r), the same nonzero singular
    values. Without this, the Gram matrix's exact zero eigenvalue comes out as rounding noise of
    eps * |w|^2, whose square root (~1e-8 |w|) would be added to the cross term."""
    v = null / np.linalg.norm(null)
    # Householder reflection H = I - 2 h h^T / (h^T h) with h = v + sign(v_0) e_0 maps v to
    # -sign(v_0) e_0 without cancellation.
    h = v.copy()
    h[0] += math.copysign(1.0, v[0])
    out = w - np.outer(h, (2.0 / float(h @ h)) * (h @ w))
    return out[1:]


@contextlib.contextmanager
def _bar(show: bool, total: int, what: str) -> Iterator[Callable[[], None]]:
    """A tqdm bar on stderr (elapsed and time left) when ``show``; yields its step function."""
    if not show or total <= 0:
        yield lambda: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=f"fidkit: {what}", file=sys.stderr, unit="FID",
              mininterval=1.0, leave=True) as bar:
        yield lambda: bar.update(1)


def _fit(sizes: Sequence[int], fids: Sequence[float]) -> tuple[float, float]:
    """Least-squares FID = a + k / N; returns (a, k)."""
    design = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, dtype=np.float64)], axis=1)
    (a, k), *_ = np.linalg.lstsq(design, np.asarray(fids, dtype=np.float64), rcond=None)
    return float(a), float(k)


def _interval(estimate: float, replicates: Sequence[float], level: float) -> Interval:
    reps = np.asarray(replicates, dtype=np.float64)
    centred = reps - reps.mean()
    lo, hi = np.quantile(centred, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, max(estimate + float(lo), 0.0) if estimate >= 0 else estimate + float(lo),
                    estimate + float(hi), level, len(reps), reps)
