"""Feature statistics: mean, covariance, sample count and provenance, in float64.

Features are accumulated in a streaming, mergeable way (Chan, Golub & LeVeque's pairwise update of
the mean and the centred sum of outer products), so that memory is O(d^2) whatever the number of
images, and merging shards gives the same result as one pass over the stacked features.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from fidkit.errors import InputError, StatsFileError, UsageError

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821


@dataclass
class Statistics:
    """Summary of a feature set: ``mu`` (d,) and ``sigma`` (d, d) float64, ``n`` samples,
    and ``meta``, a dict of provenance (see :mod:`fidkit.statistics.provenance`).

    ``sigma`` is the unbiased sample covariance (divided by n - 1), as every FID tool uses.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64).reshape(-1)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise StatsFileError(
                f"statistics have mu of shape ({d},) but sigma of shape {self.sigma.shape}; "
                "sigma must be (d, d)"
            )
        self.n = int(self.n)

    @property
    def dims(self) -> int:
        return int(self.mu.shape[0])

    def save(self, path: str, *, overwrite: bool = True) -> None:
        """Write to ``path`` atomically; ``.npz`` is pytorch-fid readable, anything else a pickle."""
        from fidkit.statistics.statsio import save_statistics

        save_statistics(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> "Statistics":
        """Read a stats file safely (no code from the file ever runs); see :mod:`fidkit.statistics.statsio`."""
        from fidkit.statistics.statsio import load_statistics

        return load_statistics(path)

    def merge(self, other: "Statistics") -> "Statistics":
        """Statistics of the union of both sample sets (meta of ``self``, ``n`` summed)."""
        acc = StatisticsAccumulator.from_statistics(self)
        acc.merge(StatisticsAccumulator.from_statistics(other))
        meta = copy.deepcopy(self.meta)
        meta["n"] = acc.n
        return acc.statistics(meta)


class StatisticsAccumulator:
    """Streaming float64 mean and centred scatter matrix of (N, d) feature batches.

    Accepts numpy arrays or torch tensors. With torch tensors the state lives on the tensor's
    device (so a GPU training loop never copies features to the host); ``statistics()`` returns
    numpy. Batches are merged with Chan et al.'s pairwise formula::

        n = na + nb;  delta = mean_b - mean_a
        mean = mean_a + delta * nb / n
        M2 = M2_a + M2_b + outer(delta, delta) * na * nb / n
    """

    def __init__(self, dims: int | None = None) -> None:
        self._n = 0
        self.mean: Any = None  # (d,) float64
        self.m2: Any = None  # (d, d) float64, sum of centred outer products
        self.dims = dims
        # A CUDA batch waits here, its NaN check not yet read, until the next update or any read
        # of the state: reading the check at once would stall the host until the card finished
        # that batch, so it could not prepare the next one meanwhile.
        self._pending: tuple | None = None

    @property
    def n(self) -> int:
        """Samples folded in (after checking any batch still waiting on the card)."""
        self._flush()
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self._n = int(value)

    def __getstate__(self) -> dict:
        self._flush()
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        if "n" in state:  # pickled before the deferred check existed
            state["_n"] = state.pop("n")
        state.setdefault("_pending", None)
        self.__dict__.update(state)

    def _flush(self) -> None:
        """Fold in the waiting CUDA batch, or raise if it held NaN/inf (it is then dropped)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        nb, mean_b, m2_b, finite = pending
        if not bool(finite):
            raise InputError(
                f"a batch of {nb} features holds NaN or inf (after {self._n} good ones; on CUDA "
                "this is reported at the next update or read, and that batch was left out); "
                "check the images and the model in float32"
            )
        self._combine(nb, mean_b, m2_b)

    @classmethod
    def from_statistics(cls, stats: Statistics) -> "StatisticsAccumulator":
        """An accumulator holding ``stats`` (numpy), ready to be merged or updated."""
        acc = cls(stats.dims)
        acc.n = stats.n
        acc.mean = stats.mu.copy()
        acc.m2 = stats.sigma * max(stats.n - 1, 0)
        return acc

    def update(self, features: ArrayLike) -> None:
        """Add a batch of features, shape (N, d), any float dtype; converted to float64 (on the
        tensor's device for torch tensors).

        The batch is centred on its own mean before its scatter matrix is formed, so the result
        does not lose digits to a large common offset (the textbook sum of x x^T minus n mean
        mean^T loses about log10(|mean|^2 / var) of them).

        Raises:
            UsageError: not 2-D, or another number of dims than earlier batches.
            InputError: the batch holds NaN or inf (one bad image would make every number NaN).
        """
        batch = _as_float64(features)
        if batch.ndim != 2:
            raise UsageError(f"features must be (N, d), got shape {tuple(batch.shape)}")
        nb = int(batch.shape[0])
        if nb == 0:
            return
        if self.dims is not None and int(batch.shape[1]) != self.dims:
            raise UsageError(f"features have {batch.shape[1]} dims, expected {self.dims}")
        deferred = _on_cuda(batch)
        if not deferred and not _all_finite(batch):
            raise InputError(
                f"a batch of {nb} features holds NaN or inf (after {self.n} good ones); "
                "check the images and the model in float32"
            )
        self.dims = int(batch.shape[1])
        mean_b = batch.mean(0)
        centred = batch - mean_b
        m2_b = centred.T @ centred
        if deferred:
            import torch

            waiting = (nb, mean_b, m2_b, torch.isfinite(batch).all())
            try:
                self._flush()  # the previous batch: finished on the card by now
            finally:
                self._pending = waiting
            return
        self._combine(nb, mean_b, m2_b)

    def merge(self, other: "StatisticsAccumulator") -> None:
        """Fold another accumulator (e.g. another shard or rank) into this one."""
        self._flush()
        if other.n == 0:
            return
        if self.dims is not None and other.dims != self.dims:
            raise UsageError(f"cannot merge statistics of {other.dims} and {self.dims} dims")
        self.dims = other.dims
        mean_b, m2_b = other.mean, other.m2
        if self.mean is not None and type(mean_b) is not type(self.mean):
            mean_b, m2_b = _like(mean_b, self.mean), _like(m2_b, self.mean)
        self._combine(other.n, mean_b, m2_b)

    def _combine(self, nb: int, mean_b: Any, m2_b: Any) -> None:
        if self._n == 0:
            self._n, self.mean, self.m2 = nb, mean_b, m2_b
            return
        na = self._n
        n = na + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + _outer(delta) * (na * nb / n)
        self._n = n

    def state(self) -> tuple[int, Any, Any]:
        """``(n, mean (d,), m2 (d, d))``: the whole state, float64, numpy or torch on its device.

        ``m2`` is the centred scatter sum(x - mean)(x - mean)^T, so ``m2 / (n - 1)`` is the
        covariance. Meant for syncing ranks: gather each rank's state and fold them with
        :meth:`merge` of :meth:`from_state` objects (Chan's update is exact in any order up to
        rounding; summing raw moments instead would lose digits to the mean)."""
        self._flush()
        return self._n, self.mean, self.m2

    @classmethod
    def from_state(cls, n: int, mean: Any, m2: Any) -> "StatisticsAccumulator":
        """Rebuild an accumulator from :meth:`state` (n = 0 gives an empty one)."""
        acc = cls(None if mean is None else int(mean.shape[0]))
        if int(n) > 0:
            acc.n, acc.mean, acc.m2 = int(n), _as_float64(mean), _as_float64(m2)
        return acc

    def statistics(self, meta: dict[str, Any] | None = None) -> Statistics:
        """The :class:`Statistics` so far (needs n >= 2 for a covariance)."""
        if self.n < 2:
            raise UsageError(f"need at least 2 images for a covariance, got {self.n}")
        mean = _to_numpy(self.mean)
        m2 = _to_numpy(self.m2)
        sigma = m2 / (self.n - 1)
        sigma = (sigma + sigma.T) / 2  # exact symmetry; the update is symmetric up to rounding
        meta = dict(meta or {})
        meta["n"] = self.n
        return Statistics(mean, sigma, self.n, meta)


def _as_float64(x: ArrayLike) -> Any:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return np.asarray(x, dtype=np.float64)


def _on_cuda(x: Any) -> bool:
    return not isinstance(x, np.ndarray) and getattr(x, "is_cuda", False)


def _all_finite(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return bool(np.isfinite(x).all())
    import torch

    return bool(torch.isfinite(x).all())


def _outer(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return np.outer(v, v)
    return v[:, None] * v[None, :]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def _like(x: Any, ref: Any) -> Any:
    if isinstance(ref, np.ndarray):
        return _to_numpy(x)
    import torch

    return torch.as_tensor(x, dtype=torch.float64, device=ref.device)
