"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

    k(x, y) = (x . y / d + 1)^3
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

computed on ``subsets`` random subsets of ``subset_size`` samples of each side, reported as the mean
and the (population, ddof=0) standard deviation over subsets. The subsets are drawn exactly as
torch-fidelity draws them (``numpy.random.RandomState(seed)``; per subset one ``choice`` without
replacement from side A, then one from side B; default seed 2020), so with the same seed both tools
score the same subsets. Everything is float64 (torch-fidelity keeps its float32 features, which
costs it about 1e-6 relative: the three kernel sums nearly cancel).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fidkit.errors import InputError, UsageError

#: torch-fidelity's defaults, so that a plain call reproduces its published numbers.
DEFAULT_SUBSET_SIZE = 1000
DEFAULT_SUBSETS = 100
DEFAULT_SEED = 2020


class MeanStd(NamedTuple):
    """A score over subsets or splits: ``mean`` and population standard deviation ``std``."""

    mean: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x @ y.T / d + coef0) ** degree`` for x (m, d) and y (k, d), float64 (m, k)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 from the three (m, m) kernel matrices (diagonals of k_xx, k_yy excluded;
    the cross term keeps its diagonal, as in Binkowski et al. and torch-fidelity)."""
    m = k_xx.shape[0]
    if m < 2:
        raise UsageError(f"KID needs subsets of at least 2 samples, got {m}")
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features_a: Any, features_b: Any, *, subset_size: int = DEFAULT_SUBSET_SIZE,
        subsets: int = DEFAULT_SUBSETS, seed: int | None = DEFAULT_SEED) -> MeanStd:
    """KID between two feature sets, (Na, d) and (Nb, d), any float dtype (numpy or torch).

    ``subset_size`` is lowered to min(Na, Nb) when a side has fewer samples (torch-fidelity refuses
    instead; pass ``subset_size`` explicitly to match it). Returns :class:`MeanStd` (squared
    feature units; commonly reported x 1000).

    Raises:
        UsageError: shapes that do not match, fewer than 2 samples, subsets < 1.
        InputError: NaN or inf in a feature set (the score would be NaN).
    """
    a = _as_array(features_a)
    b = _as_array(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UsageError(f"KID needs two (N, d) feature sets of the same d, got {a.shape} and {b.shape}")
    check_finite(a, "KID: the first feature set")
    check_finite(b, "KID: the second feature set")
    if int(subsets) < 1:
        raise UsageError(f"KID subsets must be 1 or more, got {subsets}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise UsageError(f"KID needs at least 2 samples per side, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.RandomState(seed)
    scores = np.empty(int(subsets))
    for i in range(int(subsets)):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        scores[i] = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y))
    return MeanStd(float(scores.mean()), float(scores.std()))


def lowered_subset_warning(subset_size: int, n_generated: int, n_reference: int) -> str | None:
    """The warning for a KID whose ``subset_size`` is lowered to the smaller side's sample count
    (None when it is not lowered): the command line and the Python API say the same words."""
    size = min(int(subset_size), int(n_generated), int(n_reference))
    if size >= int(subset_size):
        return None
    smaller = "generated" if n_generated == size else "reference"
    return (f"KID subset size lowered from {subset_size} to {size} (the {smaller} side has {size} "
            "images); every subset of that side is then the whole set, so KID's std understates "
            "its uncertainty")


def check_finite(rows: np.ndarray, what: str) -> None:
    """Raise InputError naming the first row of ``rows`` (N, d) that holds NaN or inf."""
    finite = np.isfinite(rows).all(axis=tuple(range(1, rows.ndim)))
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"{what}: row {row} of {len(rows)} holds NaN or inf; check the images "
                         "and the model in float32")


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
