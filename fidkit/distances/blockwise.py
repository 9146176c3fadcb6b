"""Blocks of pairwise squared Euclidean distances, float64, on numpy or on a torch device.

The sample-based metrics (:mod:`fidkit.distances.prdc`, :mod:`fidkit.distances.cmmd`) need all
N x M distances between two feature sets but never hold them: they walk the matrix in tiles of
``block_rows`` x ``block_rows`` and reduce each tile at once. Features may be numpy arrays,
memmaps (a :class:`~fidkit.statistics.featurestore.StoredFeatures` file), or torch tensors on any
device; only the rows of the current tile are read and cast to float64.

Squared distances use the expansion the peers use (scikit-learn's ``euclidean_distances``, hence
``prdc``; torch's ``cdist``; the CMMD reference), in scikit-learn's order of operations::

    d2[i, j] = max(((-2 * (a_i . b_j)) + |a_i|^2) + |b_j|^2, 0)

so that in float64 fidkit rounds each entry as ``prdc`` does (same BLAS: bit for bit). Float64
matters: in float32 this expansion loses about eps32 * |x|^2 / d^2 of each distance, enough to flip
``d <= radius`` decisions that the metrics count.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fidkit.errors import InputError, UsageError

#: Rows (and columns) per tile. A tile is block_rows^2 float64 (128 MiB at 4096), plus its rows
#: (block_rows x d float64 each side: 64 MiB at d = 2048) and a few same-sized temporaries.
DEFAULT_BLOCK_ROWS = 4096


def feature_rows(features: Any, label: str) -> Any:
    """The (N, d) array behind ``features`` (numpy array, memmap, torch tensor or
    :class:`~fidkit.statistics.featurestore.StoredFeatures`), checked to be 2-D with N, d > 0."""
    array = getattr(features, "features", features)  # StoredFeatures -> its memmap
    if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
        array = np.asarray(array)
    shape = tuple(array.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise UsageError(f"{label} features must be (N, d) with N, d > 0, got shape {shape}")
    return array


class Backend:
    """float64 tile arithmetic: numpy (``device=None``) or torch on ``device`` ("cpu", "cuda", ...)."""

    def __init__(self, device: str | None = None, tile: int = DEFAULT_BLOCK_ROWS) -> None:
        self.device = device
        self.tile = int(tile)
        self.torch: Any = None
        if device is not None:
            import torch

            self.torch = torch
            self._device = torch.device(device)

    def rows(self, features: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of ``features`` as a float64 tile on this backend."""
        block = features[start:stop]
        if self.torch is None:
            if hasattr(block, "detach"):
                block = block.detach().cpu().numpy()
            return np.asarray(block, dtype=np.float64)
        torch = self.torch
        if not isinstance(block, torch.Tensor):  # a copy: memmap rows are read-only
            block = torch.from_numpy(np.array(block, dtype=np.float64, order="C"))
        block = block.to(device=self._device, dtype=torch.float64)
        if block.shape[0] < self.tile:
            # Every product on a torch backend has the same (tile, d) x (d, tile) shape: MKL (and
            # possibly cuBLAS) round an entry differently in products of different shapes, which
            # would break exact ties between duplicated rows met in different tiles.
            block = torch.cat([block, block.new_zeros(self.tile - block.shape[0], block.shape[1])])
        return block

    def squared_norms(self, block: Any) -> Any:
        """|x_i|^2 of each row (scikit-learn's ``row_norms``: an einsum, on numpy)."""
        if self.torch is None:
            return np.einsum("ij,ij->i", block, block)
        return (block * block).sum(dim=1)

    def all_norms(self, features: Any, block_rows: int, label: str) -> Any:
        """Squared norms of every row, read in blocks; refuses NaN/inf (a non-finite entry makes
        its row's squared norm non-finite, so one check covers the whole set)."""
        n = int(features.shape[0])
        parts = [self.squared_norms(self.rows(features, s, min(s + block_rows, n)))[:min(block_rows, n - s)]
                 for s in range(0, n, block_rows)]
        norms = self.concat(parts)
        finite = np.isfinite(norms).all() if self.torch is None else bool(self.torch.isfinite(norms).all())
        if not finite:
            bad = self.to_numpy(norms)
            row = int(np.argmax(~np.isfinite(bad)))
            raise InputError(f"{label} features: row {row} holds NaN or inf; check the images and the "
                             "model in float32")
        return norms

    def squared_distances(self, a: Any, a_norms: Any, b: Any, b_norms: Any) -> Any:
        """(len(a_norms), len(b_norms)) squared distances between the rows of tiles ``a`` and ``b``
        (which may hold padding rows beyond their norms), clamped at 0, in scikit-learn's order of
        operations."""
        if self.torch is None:
            out = a @ b.T
            out *= -2.0
            out += a_norms[:, None]
            out += b_norms[None, :]
            np.maximum(out, 0.0, out=out)
            return out
        out = (a @ b.T)[: a_norms.shape[0], : b_norms.shape[0]]
        out.mul_(-2.0).add_(a_norms[:, None]).add_(b_norms[None, :]).clamp_(min=0.0)
        return out

    def concat(self, parts: list[Any], axis: int = 0) -> Any:
        if self.torch is None:
            return np.concatenate(parts, axis=axis)
        return self.torch.cat(parts, dim=axis)

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.torch is None:
            return np.asarray(x)
        return x.detach().cpu().numpy()


def check_block_rows(block_rows: int) -> int:
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        raise UsageError(f"block_rows must be a positive integer, got {block_rows!r}")
    return int(block_rows)


def check_same_dims(a: Any, b: Any) -> None:
    if int(a.shape[1]) != int(b.shape[1]):
        raise UsageError(f"the two feature sets have {a.shape[1]} and {b.shape[1]} dims; they must come "
                         "from the same extractor and layer")
