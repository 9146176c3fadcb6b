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
the CLI); statistics alone cannot be resampled. :func:`sample_size_report` does both in one pass of
replicates and is what the CLI and the API call. Everything is seeded: same inputs and seed, same
numbers. See ``docs/sample_size.md`` for a user-level explanation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from fidkit.errors import UsageError
from fidkit.distances.frechet import CovarianceFactor, covariance_factor, frechet_from_moments
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
        n_boot: replicates (cost: n_boot * (N d^2 + a Frechet distance, ~1 s at d = 2048)).
        level: confidence level in (0, 1).
        seed: seeds numpy's default generator.

    Raises:
        UsageError: shapes disagree, N < 2, n_boot < 2 or level outside (0, 1).
    """
    return sample_size_report(features, ref, ci=True, fid_inf=False, n_boot=n_boot,
                              level=level, seed=seed).interval  # type: ignore[return-value]


def fid_infinity(
    features: Any,
    ref: Reference,
    *,
    n_points: int = 15,
    min_fraction: float = 0.1,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
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
            with replacement and repeats the extrapolation (cost n_boot * n_points Frechet
            distances); the replicates are re-centred on their mean like
            :func:`fid_confidence_interval`.
        level, seed: as in :func:`fid_confidence_interval`.

    Raises:
        UsageError: shapes disagree or the sizes cannot be made (N too small).
    """
    report = sample_size_report(features, ref, ci=False, fid_inf=True, n_boot=n_boot,
                                level=level, seed=seed, n_points=n_points,
                                min_fraction=min_fraction)
    return report.fid_infinity  # type: ignore[return-value]


def sample_size_report(
    features: Any,
    ref: Reference,
    *,
    ci: bool = True,
    fid_inf: bool = False,
    n_boot: int = 50,
    level: float = 0.95,
    seed: int = 0,
    n_points: int = 15,
    min_fraction: float = 0.1,
) -> SampleSizeReport:
    """FID of ``features`` against ``ref`` with, as asked, its bootstrap interval (``ci``) and
    FID_inf with its interval (``fid_inf``); the entry point for ``--ci`` / ``--fid-inf``.

    When both are asked, each replicate's full-size FID (the last nested size) serves the FID
    interval, so the FID interval costs nothing extra. Arguments and errors as in
    :func:`fid_confidence_interval` and :func:`fid_infinity`. ``n_boot`` defaults to 50 when
    ``ci`` is asked and to 0 otherwise, so ``fid_inf`` alone gives FID_inf without an interval
    (its interval costs ``n_boot * n_points`` Frechet distances: ~12 min at d = 2048, 2 cores).
    """
    if n_boot is None:
        n_boot = 50 if ci else 0
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
    ref_factor = covariance_factor(ref_stats.sigma)
    rng = np.random.default_rng(seed)
    warnings: list[str] = []

    fid = _fid(_stats(x), ref_stats, ref_factor)
    sizes: list[int] = []
    if fid_inf:
        sizes = _sizes(n, n_points, min_fraction)
        if sizes[0] <= d:
            warnings.append(
                f"FID-infinity uses subsets from {sizes[0]} images, not more than d = {d}: "
                "there the 1/N law is rough; use more images for a reliable extrapolation")

    infinity = None
    if fid_inf:
        order = rng.permutation(n)
        fids = _nested_fids(x, order, sizes, ref_stats, ref_factor)
        value, slope = _fit(sizes, fids)
        infinity = FidInfinity(value, slope, sizes, fids, None, list(warnings))

    boot_fid: list[float] = []
    boot_inf: list[float] = []
    reps = n_boot if (ci or (fid_inf and n_boot > 0)) else 0
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        if resample_ref:
            r_stats = _stats(ref_x[rng.integers(0, len(ref_x), len(ref_x))])  # type: ignore[index]
            r_factor = None
        else:
            r_stats, r_factor = ref_stats, ref_factor
        if fid_inf:
            fids_b = _nested_fids(x, idx, sizes, r_stats, r_factor)
            boot_fid.append(fids_b[-1])
            boot_inf.append(_fit(sizes, fids_b)[0])
        else:
            boot_fid.append(_fid(_weighted_stats(x, idx), r_stats, r_factor))

    interval = _interval(fid, boot_fid, level) if ci else None
    if infinity is not None and boot_inf:
        infinity.interval = _interval(infinity.value, boot_inf, level)
    if n <= d:
        warnings.insert(0, f"only {n} generated images for d = {d} dims: the covariance is "
                           "singular and FID is strongly biased upward at this N")
    return SampleSizeReport(fid, n, d, interval, infinity, warnings)


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


def _weighted_stats(x: np.ndarray, idx: np.ndarray) -> Statistics:
    """Statistics of ``x[idx]`` from the multiplicities, without gathering the copy."""
    n = len(idx)
    counts = np.bincount(idx, minlength=len(x)).astype(np.float64)
    mean = counts @ x / n
    centred = x - mean
    scaled = centred * np.sqrt(counts)[:, None]
    sigma = scaled.T @ scaled / (n - 1)
    return Statistics(mean, (sigma + sigma.T) / 2, n)


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


def _nested_fids(x: np.ndarray, order: np.ndarray, sizes: Sequence[int], ref: Statistics,
                 ref_factor: CovarianceFactor | None) -> list[float]:
    acc = StatisticsAccumulator(x.shape[1])
    fids, start = [], 0
    for size in sizes:
        acc.update(x[order[start:size]])
        start = size
        fids.append(_fid(acc.statistics(), ref, ref_factor))
    return fids


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
