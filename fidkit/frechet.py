"""The Frechet distance between two Gaussians, in float64.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

This first version computes tr sqrt(S1 S2) from a symmetric eigendecomposition of S1:
with S1 = V diag(w) V^T and A = sqrt(S1) = V diag(sqrt w) V^T, tr sqrt(S1 S2) equals
tr sqrt(A S2 A), whose matrix is symmetric PSD, so its eigenvalues are real and non-negative.
"""
from __future__ import annotations

import numpy as np

from fidkit.errors import UsageError


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); arrays of shape (d,), (d, d)."""
    mu1 = np.asarray(mu1, dtype=np.float64).reshape(-1)
    mu2 = np.asarray(mu2, dtype=np.float64).reshape(-1)
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise UsageError(
            f"statistics of different shapes: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ ((s2 + s2.T) / 2) @ root
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    cross = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(value, 0.0)
