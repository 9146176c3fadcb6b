"""Inception Score (Salimans et al. 2016) in torch-fidelity's convention.

    IS = exp( E_x KL( p(y|x) || p(y) ) )

with p(y|x) the softmax of the 1008-way logits *without the classifier bias* (``logits_unbiased``,
torch-fidelity's choice), computed over ``splits`` consecutive chunks of the samples after one seeded
shuffle (``numpy.random.RandomState(seed).permutation``; chunk i is ``[i N // splits, (i + 1) N //
splits)``), reported as mean and population (ddof=0) standard deviation over the chunks, in float64.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fidkit.errors import UsageError
from fidkit.distances.kid import MeanStd, check_finite

DEFAULT_SPLITS = 10
DEFAULT_SEED = 2020


def inception_score(logits: Any, *, splits: int = DEFAULT_SPLITS, shuffle: bool = True,
                    seed: int | None = DEFAULT_SEED) -> MeanStd:
    """Inception Score of (N, C) logits (numpy or torch, any float dtype; C = 1008 for the FID
    Inception). Returns :class:`MeanStd`; the score lies in [1, C].

    Raises:
        UsageError: not 2-D, or fewer samples than splits.
        InputError: NaN or inf in the logits (the score would be NaN).
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise UsageError(f"Inception Score needs (N, C) logits, got shape {z.shape}")
    check_finite(z, "Inception Score: the logits")
    n = z.shape[0]
    splits = int(splits)
    if splits < 1 or n < splits:
        raise UsageError(f"Inception Score with {splits} splits needs at least {max(splits, 1)} "
                         f"samples, got {n}; lower the number of splits")
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    # log-softmax through the max shift: exp of raw logits overflows float64 above ~709.
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_chunk, log_p_chunk = p[lo:hi], log_p[lo:hi]
        # A class no sample of the chunk puts mass on underflows to q = 0; its terms are 0, not NaN.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q = np.log(p_chunk.mean(axis=0, keepdims=True))
            terms = np.where(p_chunk > 0, p_chunk * (log_p_chunk - log_q), 0.0)
        kl = terms.sum(axis=1).mean()
        scores.append(np.exp(kl))
    scores_arr = np.asarray(scores)
    return MeanStd(float(scores_arr.mean()), float(scores_arr.std()))
