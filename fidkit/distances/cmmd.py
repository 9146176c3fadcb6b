"""CMMD (Jayasumana et al., "Rethinking FID: Towards a Better Evaluation Metric for Image
Generation", CVPR 2024): the maximum mean discrepancy between two sets of CLIP image embeddings
under a Gaussian RBF kernel.

    k(x, y) = exp(-|x - y|^2 / (2 sigma^2)),  sigma = 10
    CMMD    = scale * ( mean_{i,j} k(x_i, x_j) + mean_{i,j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j) ),
              scale = 1000

This is the estimator of the reference code (google-research ``cmmd/distance.py``, ``mmd``): the
minimum-variance, *biased* V-statistic of Gretton et al. 2012, Eq. (5), whose means run over every
pair including i = j. ``estimator="unbiased"`` gives the U-statistic (Gretton et al., Eq. (3):
the within-set means leave out i = j) for comparison; the two differ by O(1/n).

The embeddings are expected L2-normalised (the reference's CLIP ViT-L/14@336 model returns unit
vectors; fidkit's CLIP extractor does the same); this function does not normalise them.

Squared distances use the reference's expansion |x|^2 + |y|^2 - 2 x.y, in float64 (the reference
runs in JAX's default float32), and the three kernel means are accumulated in float64 blockwise
(tiles of ``block_rows`` x ``block_rows``) so memory stays O(block_rows^2) for any n; sets small
enough for one tile are done in one step. Identical sets give exactly 0: the three means then go
through the same tiles in the same order.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fidkit.distances.blockwise import (
    DEFAULT_BLOCK_ROWS,
    Backend,
    check_block_rows,
    check_same_dims,
    feature_rows,
)
from fidkit.errors import UsageError

#: The reference's RBF bandwidth (``_SIGMA``) and the factor that makes values readable (``_SCALE``).
DEFAULT_SIGMA = 10.0
DEFAULT_SCALE = 1000.0
ESTIMATORS = ("biased", "unbiased")


def cmmd(embeddings_a: Any, embeddings_b: Any, *, sigma: float = DEFAULT_SIGMA,
         scale: float = DEFAULT_SCALE, estimator: str = "biased", device: str | None = None,
         block_rows: int = DEFAULT_BLOCK_ROWS) -> float:
    """CMMD between two embedding sets, (n, d) and (m, d): numpy arrays, memmaps, torch tensors or
    ``StoredFeatures``, L2-normalised rows (CLIP embeddings).

    Args:
        sigma: RBF bandwidth (the reference's 10).
        scale: factor applied to the MMD^2 (the reference's 1000).
        estimator: ``"biased"`` (the reference code's; default) or ``"unbiased"``.
        device: ``None`` for numpy, else a torch device to compute on.
        block_rows: tile size; memory is about 3 * 8 * block_rows * (block_rows + d) bytes.

    Returns:
        ``scale`` * MMD^2 (float; >= 0 for the biased estimator up to rounding).

    Raises:
        UsageError: shapes that do not match, sigma <= 0, an unknown estimator, fewer than 2 rows
            per side for the unbiased estimator.
        InputError: NaN or inf in the embeddings.
    """
    a = feature_rows(embeddings_a, "first")
    b = feature_rows(embeddings_b, "second")
    check_same_dims(a, b)
    block_rows = check_block_rows(block_rows)
    if not float(sigma) > 0:
        raise UsageError(f"the RBF bandwidth sigma must be > 0, got {sigma!r}")
    if estimator not in ESTIMATORS:
        raise UsageError(f"unknown CMMD estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    unbiased = estimator == "unbiased"
    n, m = int(a.shape[0]), int(b.shape[0])
    if unbiased and min(n, m) < 2:
        raise UsageError(f"the unbiased estimator needs at least 2 embeddings per side, got {n} and {m}")
    backend = Backend(device, tile=min(block_rows, max(n, m)))
    gamma = 1.0 / (2.0 * float(sigma) ** 2)
    norms_a = backend.all_norms(a, block_rows, "first")
    norms_b = backend.all_norms(b, block_rows, "second")
    k_aa = kernel_sum(backend, a, norms_a, a, norms_a, gamma, block_rows, skip_diagonal=unbiased)
    k_bb = kernel_sum(backend, b, norms_b, b, norms_b, gamma, block_rows, skip_diagonal=unbiased)
    k_ab = kernel_sum(backend, a, norms_a, b, norms_b, gamma, block_rows, skip_diagonal=False)
    within_a = n * (n - 1) if unbiased else n * n
    within_b = m * (m - 1) if unbiased else m * m
    return float(scale) * (k_aa / within_a + k_bb / within_b - 2.0 * (k_ab / (n * m)))


def kernel_sum(backend: Backend, x: Any, x_norms: Any, y: Any, y_norms: Any, gamma: float,
               block_rows: int, *, skip_diagonal: bool = False) -> float:
    """sum_{i,j} exp(-gamma |x_i - y_j|^2) over all pairs (leaving out i = j when
    ``skip_diagonal``, for x and y the same set), accumulated in float64 tile by tile."""
    n, m = int(x.shape[0]), int(y.shape[0])
    total = 0.0
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        a = backend.rows(x, r0, r1)
        for c0 in range(0, m, block_rows):
            c1 = min(c0 + block_rows, m)
            b = backend.rows(y, c0, c1)
            # The reference's expansion, unclamped: -2 x.y + |x|^2 + |y|^2 (the tile helper clamps
            # at 0, which changes nothing here: exp of a rounding-sized negative is 1 to 1e-18).
            d2 = backend.squared_distances(a, x_norms[r0:r1], b, y_norms[c0:c1])
            k = _exp_neg(backend, d2, gamma)
            if skip_diagonal and r0 == c0:
                _zero_diagonal(backend, k)
            total += float(k.sum())
    return total


def _exp_neg(xp: Backend, d2: Any, gamma: float) -> Any:
    if xp.torch is None:
        d2 *= -gamma
        return np.exp(d2, out=d2)
    return d2.mul_(-gamma).exp_()


def _zero_diagonal(xp: Backend, k: Any) -> None:
    if xp.torch is None:
        np.fill_diagonal(k, 0.0)
    else:
        k.fill_diagonal_(0.0)
