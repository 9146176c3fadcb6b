"""Precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020):
k-nearest-neighbour estimates of how much of each feature set lies on the other's manifold.

Each sample x gets a radius r_k(x), the distance to its k-th nearest neighbour *in its own set*,
counting itself as the first one (so r_k is the (k+1)-th smallest distance from x to its own set,
0 included; a duplicated row counts as a neighbour at distance 0). With real samples R, fake
(generated) samples F and d the Euclidean distance::

    precision = 1/|F| #{f in F : exists r in R, d(f, r) <= r_k(r)}      torch-fidelity 0.4.0, k = 3
    recall    = 1/|R| #{r in R : exists f in F, d(r, f) <= r_k(f)}
    f_score   = 2 precision recall / max(1e-5, precision + recall)
    density   = 1/(k |F|) #{(f, r) : d(f, r) < r_k(r)}                  prdc 0.2, k = 5
    coverage  = 1/|R| #{r in R : min_f d(r, f) < r_k(r)}

Ties follow each peer: torch-fidelity's ``calculate_precision_recall_*`` compares with ``<=``,
``prdc.compute_prdc`` with ``<`` (for all four of its numbers; only its density and coverage are
reproduced here). Precision and recall use the same radii definition in both peers (``kthvalue(k +
1)`` / ``argpartition`` to k + 1), with the self-distance set to exactly 0 as scikit-learn does
(torch's ``cdist`` leaves it at rounding noise; that matters only for rows duplicated k or more
times).

Distances are float64, computed as scikit-learn computes them (see
:mod:`fidkit.distances.blockwise`), blockwise: radii come from a running top-(k+1) over column
blocks, and the cross pass reduces each real x fake tile at once (OR for precision/recall, counts
for density, a running minimum for coverage). Memory is O(block_rows^2 + block_rows d) whatever N
and M: about 0.5 GiB at the default 4096-row tiles, against the N x M matrices the peers hold
(prdc holds three float64 matrices; at 50k x 50k that is 60 GB).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from fidkit.distances.blockwise import (
    DEFAULT_BLOCK_ROWS,
    Backend,
    check_block_rows,
    check_same_dims,
    feature_rows,
)
from fidkit.errors import UsageError

#: torch-fidelity's ``prc_neighborhood`` (Kynkaanniemi et al. use k = 3).
DEFAULT_PR_K = 3
#: Naeem et al.'s recommended k for density and coverage (prdc's README example).
DEFAULT_DC_K = 5


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision and recall, fractions in [0, 1]; ``f_score`` as torch-fidelity reports it."""

    precision: float
    recall: float
    f_score: float
    k: int
    n_real: int
    n_fake: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DensityCoverage:
    """Density (>= 0, about 1 when the two sets share a distribution; unbounded above) and coverage
    (a fraction in [0, 1])."""

    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precision_recall(real: Any, fake: Any, *, k: int = DEFAULT_PR_K, device: str | None = None,
                     block_rows: int = DEFAULT_BLOCK_ROWS) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real``, exactly as torch-fidelity 0.4.0's
    ``prc`` metric defines them (``<=`` against the k-NN radii of the other set).

    Args:
        real: (N, d) real features: numpy array, memmap, torch tensor or ``StoredFeatures``.
        fake: (M, d) generated features, same d.
        k: neighbourhood size; each set needs at least k + 1 rows.
        device: ``None`` for numpy, else a torch device (``"cpu"``, ``"cuda"``) to compute on.
        block_rows: tile size; memory is about 4 * 8 * block_rows * (block_rows + d) bytes.

    Raises:
        UsageError: shapes that do not match, k < 1, a set with fewer than k + 1 rows.
        InputError: NaN or inf in the features.
    """
    pr, _ = _compute(real, fake, pr_k=k, dc_k=None, device=device, block_rows=block_rows)
    assert pr is not None
    return pr


def density_coverage(real: Any, fake: Any, *, k: int = DEFAULT_DC_K, device: str | None = None,
                     block_rows: int = DEFAULT_BLOCK_ROWS) -> DensityCoverage:
    """Density and coverage of ``fake`` against ``real``, exactly as ``prdc.compute_prdc`` (0.2)
    defines them (``<`` against the real set's k-NN radii). Arguments as :func:`precision_recall`."""
    _, dc = _compute(real, fake, pr_k=None, dc_k=k, device=device, block_rows=block_rows)
    assert dc is not None
    return dc


def precision_recall_density_coverage(
    real: Any, fake: Any, *, pr_k: int = DEFAULT_PR_K, dc_k: int = DEFAULT_DC_K,
    device: str | None = None, block_rows: int = DEFAULT_BLOCK_ROWS,
) -> tuple[PrecisionRecall, DensityCoverage]:
    """All four numbers in three passes over the data (real radii for both k at once, fake radii,
    one cross pass) instead of the five :func:`precision_recall` and :func:`density_coverage`
    take together. Arguments as :func:`precision_recall`."""
    pr, dc = _compute(real, fake, pr_k=pr_k, dc_k=dc_k, device=device, block_rows=block_rows)
    assert pr is not None and dc is not None
    return pr, dc


def nearest_neighbour_radii(features: Any, ks: Sequence[int], *, device: str | None = None,
                            block_rows: int = DEFAULT_BLOCK_ROWS) -> dict[int, np.ndarray]:
    """For each k in ``ks``, the (N,) float64 distances from every row to its k-th nearest
    neighbour in the same set, the row itself counting as the first (distance 0): the (k+1)-th
    smallest distance, as ``prdc.compute_nearest_neighbour_distances`` and torch-fidelity's
    ``kthvalue(k + 1)`` give it."""
    rows = feature_rows(features, "the")
    block_rows = check_block_rows(block_rows)
    backend = Backend(device, tile=min(block_rows, int(rows.shape[0])))
    ks = _check_ks(ks, {"the": rows})
    norms = backend.all_norms(rows, block_rows, "the")
    radii, _ = _radii(backend, rows, norms, ks, block_rows)
    return {k: backend.to_numpy(r) for k, r in radii.items()}


# --------------------------------------------------------------------------- passes

def _compute(real: Any, fake: Any, *, pr_k: int | None, dc_k: int | None, device: str | None,
             block_rows: int) -> tuple[PrecisionRecall | None, DensityCoverage | None]:
    real_rows = feature_rows(real, "real")
    fake_rows = feature_rows(fake, "fake")
    check_same_dims(real_rows, fake_rows)
    block_rows = check_block_rows(block_rows)
    sets = {"real": real_rows, "fake": fake_rows}
    real_ks = _check_ks([k for k in (pr_k, dc_k) if k is not None], sets)
    backend = Backend(device, tile=min(block_rows, max(int(real_rows.shape[0]), int(fake_rows.shape[0]))))
    real_norms = backend.all_norms(real_rows, block_rows, "real")
    fake_norms = backend.all_norms(fake_rows, block_rows, "fake")
    real_radii, real_nn = _radii(backend, real_rows, real_norms, real_ks, block_rows)
    fake_radii, fake_nn = (_radii(backend, fake_rows, fake_norms, [pr_k], block_rows)
                           if pr_k is not None else ({}, {}))
    ties = _Ties(backend, real_rows, fake_rows, real_norms, fake_norms, real_nn, fake_nn)
    counts = _cross(backend, ties, real_rows, real_norms, fake_rows, fake_norms, block_rows,
                    pr_k=pr_k, dc_k=dc_k, real_radii=real_radii, fake_radii=fake_radii)
    n_real, n_fake = int(real_rows.shape[0]), int(fake_rows.shape[0])
    pr = dc = None
    if pr_k is not None:
        precision = counts["precision"] / n_fake
        recall = counts["recall"] / n_real
        f_score = 2 * precision * recall / max(1e-5, precision + recall)
        pr = PrecisionRecall(precision, recall, f_score, pr_k, n_real, n_fake)
    if dc_k is not None:
        # prdc's order of operations: the mean count per fake sample, then times 1/k.
        density = (1.0 / float(dc_k)) * (counts["density"] / n_fake)
        dc = DensityCoverage(density, counts["coverage"] / n_real, dc_k, n_real, n_fake)
    return pr, dc


def _check_ks(ks: Sequence[int], sets: dict[str, Any]) -> list[int]:
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UsageError(f"the neighbourhood size k must be a positive integer, got {k!r}")
        for label, rows in sets.items():
            if int(rows.shape[0]) < k + 1:
                raise UsageError(f"k = {k} needs at least {k + 1} {label} samples (each one's k-th "
                                 f"neighbour besides itself), got {rows.shape[0]}")
        out.append(int(k))
    return sorted(set(out))


def _radii(backend: Backend, rows: Any, norms: Any, ks: Sequence[int],
           block_rows: int) -> tuple[dict[int, Any], dict[int, np.ndarray]]:
    """k-NN radii of every row of ``rows`` within its own set, by a running top-(k+1) per row;
    also the index of each row's k-th neighbour (numpy int64), to recheck near-ties."""
    n = int(rows.shape[0])
    keep = max(ks) + 1
    values, indices = [], []
    for r0 in range(0, n, block_rows):
        r1 = min(r0 + block_rows, n)
        a = backend.rows(rows, r0, r1)
        best = best_at = None
        for c0 in range(0, n, block_rows):
            c1 = min(c0 + block_rows, n)
            b = a if c0 == r0 else backend.rows(rows, c0, c1)
            d2 = backend.squared_distances(a, norms[r0:r1], b, norms[c0:c1])
            if c0 == r0:
                # The self-distance is exactly 0, as scikit-learn sets it: the expansion leaves
                # rounding noise of about eps * |x|^2 there.
                _zero_diagonal(backend, d2)
            d = _sqrt(backend, d2)
            at = _column_indices(backend, d.shape[0], c0, c1)
            if best is not None:
                d = backend.concat([best, d], axis=1)
                at = backend.concat([best_at, at], axis=1)
            best, best_at = _smallest(backend, d, at, keep)
        best, best_at = _sorted_rows(backend, best, best_at)
        values.append(best)
        indices.append(best_at)
    ordered, ordered_at = backend.concat(values), backend.concat(indices)
    return ({k: ordered[:, k] for k in ks},
            {k: backend.to_numpy(ordered_at[:, k]).astype(np.int64) for k in ks})


class _Ties:
    """Decides the comparisons that rounding could flip, the same way wherever they occur.

    A duplicated row makes exact ties: d(f, r) equals r's radius d(r', r) when f == r'. The peers
    see them as ties because OpenBLAS rounds an entry of a matrix product the same wherever it
    sits; MKL (torch on the CPU) and possibly cuBLAS do not, so a tile can see the two as one ulp
    apart. Any comparison within a rounding bound of its radius is therefore redone from the rows
    themselves with a per-pair formula (same expansion, einsum dot products on the CPU), for the
    distance and for the radius (from the recorded k-th neighbour), so equal inputs give equal
    numbers. The bound is the worst-case error of a d-term dot product, (d + 8) eps max|x|^2,
    doubled for the two sides and again for safety: in practice only true ties fall inside it.
    """

    def __init__(self, backend: Backend, real: Any, fake: Any, real_norms: Any, fake_norms: Any,
                 real_nn: dict[int, np.ndarray], fake_nn: dict[int, np.ndarray]) -> None:
        self.backend = backend
        self.sets = {"real": real, "fake": fake}
        self.nn = {("real", k): v for k, v in real_nn.items()}
        self.nn.update({("fake", k): v for k, v in fake_nn.items()})
        largest = max(float(backend.to_numpy(real_norms).max()), float(backend.to_numpy(fake_norms).max()))
        dims = int(real.shape[1])
        self.window = 4.0 * (dims + 8) * float(np.finfo(np.float64).eps) * 2.0 * largest
        self.rechecked = 0
        self._radius_cache: dict[tuple[str, int], dict[int, float]] = {}

    def compare(self, d: Any, radius: Any, *, owner: str, k: int, strict: bool,
                r0: int, c0: int) -> Any:
        """``d < radius`` (strict) or ``d <= radius`` for a real-rows x fake-columns tile ``d``;
        ``radius`` broadcasts along the owner's axis (rows for real radii, columns for fake)."""
        mask = d < radius if strict else d <= radius
        near = abs(d - radius) * (d + radius) <= self.window
        if not bool(near.any()):
            return mask
        rows_at, cols_at = np.nonzero(self.backend.to_numpy(near))
        real_idx, fake_idx = rows_at + r0, cols_at + c0
        exact_d = self._distances(self.sets["real"], real_idx, self.sets["fake"], fake_idx)
        owners = real_idx if owner == "real" else fake_idx
        exact_r = self._radii(owner, k, owners)
        fixed = exact_d < exact_r if strict else exact_d <= exact_r
        self.rechecked += int(rows_at.size)
        if self.backend.torch is None:
            mask[rows_at, cols_at] = fixed
        else:
            torch = self.backend.torch
            mask[torch.from_numpy(rows_at).to(mask.device), torch.from_numpy(cols_at).to(mask.device)] = \
                torch.from_numpy(fixed).to(mask.device)
        return mask

    @staticmethod
    def _distances(a_set: Any, a_idx: np.ndarray, b_set: Any, b_idx: np.ndarray) -> np.ndarray:
        a = _gather(a_set, a_idx)
        b = _gather(b_set, b_idx)
        d2 = ((-2.0 * np.einsum("ij,ij->i", a, b)) + np.einsum("ij,ij->i", a, a)) + np.einsum("ij,ij->i", b, b)
        return np.sqrt(np.maximum(d2, 0.0))

    def _radii(self, owner: str, k: int, idx: np.ndarray) -> np.ndarray:
        cache = self._radius_cache.setdefault((owner, k), {})
        missing = np.array(sorted({int(i) for i in idx} - set(cache)), dtype=np.int64)
        if missing.size:
            nn = self.nn[(owner, k)][missing]
            values = self._distances(self.sets[owner], missing, self.sets[owner], nn)
            values[nn == missing] = 0.0  # the row itself: distance exactly 0
            cache.update(zip(missing.tolist(), values.tolist()))
        return np.array([cache[int(i)] for i in idx], dtype=np.float64)


def _gather(rows: Any, idx: np.ndarray) -> np.ndarray:
    if hasattr(rows, "detach"):
        import torch

        return rows[torch.as_tensor(idx, device=rows.device)].detach().cpu().numpy().astype(np.float64)
    order = np.argsort(idx, kind="stable")  # a memmap reads best in order
    out = np.empty((idx.size, int(rows.shape[1])), dtype=np.float64)
    out[order] = np.asarray(rows[idx[order]], dtype=np.float64)
    return out


def _cross(backend: Backend, ties: _Ties, real: Any, real_norms: Any, fake: Any, fake_norms: Any,
           block_rows: int, *, pr_k: int | None, dc_k: int | None, real_radii: dict[int, Any],
           fake_radii: dict[int, Any]) -> dict[str, int]:
    """One pass over the real x fake distances (real rows, fake columns, prdc's orientation)."""
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    xp = backend
    precision_hit = _zeros_bool(xp, n_fake)
    recall_hits = density = coverage_hits = 0
    for r0 in range(0, n_real, block_rows):
        r1 = min(r0 + block_rows, n_real)
        a = xp.rows(real, r0, r1)
        recall_hit = _zeros_bool(xp, r1 - r0)
        covered = _zeros_bool(xp, r1 - r0)
        for c0 in range(0, n_fake, block_rows):
            c1 = min(c0 + block_rows, n_fake)
            b = xp.rows(fake, c0, c1)
            d = _sqrt(xp, xp.squared_distances(a, real_norms[r0:r1], b, fake_norms[c0:c1]))
            if pr_k is not None:
                # torch-fidelity: a fake sample inside some real sample's ball (<=), and vice versa
                inside_real = ties.compare(d, real_radii[pr_k][r0:r1, None], owner="real", k=pr_k,
                                           strict=False, r0=r0, c0=c0)
                precision_hit[c0:c1] |= _any(xp, inside_real, axis=0)
                inside_fake = ties.compare(d, fake_radii[pr_k][None, c0:c1], owner="fake", k=pr_k,
                                           strict=False, r0=r0, c0=c0)
                recall_hit |= _any(xp, inside_fake, axis=1)
            if dc_k is not None:
                # prdc: strict <; coverage's min_f d(r, f) < r_k(r) is "some fake inside r's ball"
                inside = ties.compare(d, real_radii[dc_k][r0:r1, None], owner="real", k=dc_k,
                                      strict=True, r0=r0, c0=c0)
                density += int(inside.sum())
                covered |= _any(xp, inside, axis=1)
        recall_hits += int(recall_hit.sum())
        coverage_hits += int(covered.sum())
    return {"precision": int(precision_hit.sum()), "recall": recall_hits, "density": density,
            "coverage": coverage_hits}


# --------------------------------------------------------------------------- numpy / torch ops

def _zero_diagonal(xp: Backend, d2: Any) -> None:
    if xp.torch is None:
        np.fill_diagonal(d2, 0.0)
    else:
        d2.fill_diagonal_(0.0)


def _sqrt(xp: Backend, d2: Any) -> Any:
    if xp.torch is None:
        return np.sqrt(d2, out=d2)
    return d2.sqrt_()


def _column_indices(xp: Backend, rows: int, c0: int, c1: int) -> Any:
    if xp.torch is None:
        return np.broadcast_to(np.arange(c0, c1, dtype=np.int64), (rows, c1 - c0))
    return xp.torch.arange(c0, c1, device=xp._device).expand(rows, c1 - c0)


def _smallest(xp: Backend, values: Any, at: Any, keep: int) -> tuple[Any, Any]:
    """The ``keep`` smallest values of each row (as a multiset, unordered) and their indices."""
    if values.shape[1] <= keep:
        return values, at
    if xp.torch is None:
        pick = np.argpartition(values, keep - 1, axis=1)[:, :keep]
        return np.take_along_axis(values, pick, axis=1), np.take_along_axis(at, pick, axis=1)
    top = xp.torch.topk(values, keep, dim=1, largest=False, sorted=False)
    return top.values, at.gather(1, top.indices)


def _sorted_rows(xp: Backend, values: Any, at: Any) -> tuple[Any, Any]:
    if xp.torch is None:
        order = np.argsort(values, axis=1, kind="stable")
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(at, order, axis=1)
    ordered = xp.torch.sort(values, dim=1, stable=True)
    return ordered.values, at.gather(1, ordered.indices)


def _zeros_bool(xp: Backend, n: int) -> Any:
    if xp.torch is None:
        return np.zeros(n, dtype=bool)
    return xp.torch.zeros(n, dtype=xp.torch.bool, device=xp._device)


def _any(xp: Backend, mask: Any, axis: int) -> Any:
    return mask.any(axis=axis) if xp.torch is None else mask.any(dim=axis)
