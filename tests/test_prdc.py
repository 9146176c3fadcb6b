"""Precision/recall against torch-fidelity 0.4.0's PRC functions and density/coverage against
``prdc.compute_prdc`` 0.2, on the same feature arrays: continuous features, integer-valued features
(exact ties, where ``<`` and ``<=`` differ) and duplicated rows, N != M, small tiles so that every
pass crosses tile edges, on numpy, on torch (CPU) and from memmapped features files.

prdc is given float64 arrays: on float32 input scikit-learn rounds every distance to float32, which
makes ties of its own (fidkit keeps float64 distances; see docs/sample_metrics.md).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from prdc.prdc import compute_nearest_neighbour_distances, compute_pairwise_distance
from torch_fidelity.metric_prc import (
    calculate_precision_recall_full,
    calculate_precision_recall_part,
    prc_features_to_metric,
)

from fidkit.distances.prdc import (
    DEFAULT_DC_K,
    DEFAULT_PR_K,
    density_coverage,
    nearest_neighbour_radii,
    precision_recall,
    precision_recall_density_coverage,
)
from fidkit.errors import InputError, UsageError
from fidkit.statistics.featurestore import open_features, write_features

DEVICES = [None, "cpu"]  # numpy, torch


def _sets(kind: str, n: int = 230, m: int = 170, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(real, fake) float32-representable feature sets of one of three kinds."""
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, d)).astype(np.float32)
    fake = (rng.normal(size=(m, d)) * 1.15 + 0.2).astype(np.float32)
    if kind == "integer":  # few distinct distances: exact ties everywhere
        real, fake = np.rint(real * 1.2), np.rint(fake * 1.2)
    elif kind == "duplicates":  # rows repeated within each set, and fakes that copy reals
        real = np.concatenate([real[: n // 2], real[: n - n // 2]])
        fake = np.concatenate([fake[: m // 3], real[5: 5 + m // 3], fake[: m - 2 * (m // 3)]])
    return real.astype(np.float64), fake.astype(np.float64)


def _prdc_peer(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
        return compute_prdc(real, fake, k)


def _fidelity(real: np.ndarray, fake: np.ndarray, k: int, dtype=torch.float32, part: bool = False):
    fn = calculate_precision_recall_part if part else calculate_precision_recall_full
    # torch-fidelity's convention: features_1 is the generated set, features_2 the real one
    return fn(torch.from_numpy(fake).to(dtype), torch.from_numpy(real).to(dtype), k, 64)


# ------------------------------------------------------------------------- radii

@pytest.mark.parametrize("kind", ["continuous", "integer", "duplicates"])
def test_radii_equal_prdc(kind):
    real, _ = _sets(kind)
    mine = nearest_neighbour_radii(real, [1, 3, 5], block_rows=37)
    for k in (1, 3, 5):
        # Same formula, same order of operations; OpenBLAS rounds edge tiles of odd sizes a little
        # differently, so an ulp may differ (decisions near a radius are rechecked, see prdc.py).
        np.testing.assert_allclose(mine[k], compute_nearest_neighbour_distances(real, k), rtol=1e-15, atol=0)
    on_torch = nearest_neighbour_radii(real, [5], device="cpu", block_rows=37)[5]
    np.testing.assert_allclose(on_torch, mine[5], rtol=1e-13, atol=1e-12)
    # torch-fidelity's radii: kthvalue(k + 1) of each row of cdist, self included
    t = torch.from_numpy(real)
    np.testing.assert_allclose(torch.cdist(t, t).kthvalue(4).values.numpy(), mine[3], rtol=1e-12, atol=1e-6)


# ------------------------------------------------------------------------- density / coverage

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["continuous", "integer", "duplicates"])
def test_density_coverage_equal_prdc(kind, device):
    real, fake = _sets(kind)
    for k in (DEFAULT_DC_K, 3):
        peer = _prdc_peer(real, fake, k)
        mine = density_coverage(real, fake, k=k, device=device, block_rows=37)
        assert abs(mine.density - peer["density"]) <= 1e-9, (kind, k)
        assert abs(mine.coverage - peer["coverage"]) <= 1e-9, (kind, k)
        assert (mine.n_real, mine.n_fake, mine.k) == (len(real), len(fake), k)


@pytest.mark.parametrize("device", DEVICES)
def test_duplicate_ties_across_tiles(device):
    """A case where MKL (torch on the CPU) rounds a fake copy of a real row one ulp away from the
    radius it equals in exact arithmetic (found by search; fails without the near-tie recheck)."""
    real, fake = _sets("duplicates", n=400, m=300, d=16, seed=1)
    peer = _prdc_peer(real, fake, 5)
    mine = density_coverage(real, fake, device=device, block_rows=50)
    assert (mine.density, mine.coverage) == (peer["density"], peer["coverage"])
    precision, recall = _fidelity(real, fake, 3, torch.float64)
    pr = precision_recall(real, fake, device=device, block_rows=50)
    assert abs(pr.precision - precision) <= 1e-6 and abs(pr.recall - recall) <= 1e-6


def test_density_coverage_swapped_sizes_and_one_tile():
    real, fake = _sets("continuous", n=120, m=260, seed=3)
    peer = _prdc_peer(real, fake, 5)
    for block_rows in (1000, 50, 7):
        mine = density_coverage(real, fake, block_rows=block_rows)
        assert (mine.density, mine.coverage) == (peer["density"], peer["coverage"])


def test_ties_are_really_there():
    """The integer and duplicate sets hold exact ties between a cross distance and a radius (in
    prdc's own matrices), so the tests above do check which comparison each peer uses; on the
    integer set prdc's strict < and torch-fidelity's <= even give different precision."""
    for kind in ("integer", "duplicates"):
        real, fake = _sets(kind)
        cross = compute_pairwise_distance(real, fake)
        for k in (3, 5):
            radii = compute_nearest_neighbour_distances(real, k)
            assert (cross == radii[:, None]).sum() > 0, (kind, k)
    real, fake = _sets("integer")
    assert abs(_prdc_peer(real, fake, 3)["precision"] - _fidelity(real, fake, 3)[0]) > 1e-3


# ------------------------------------------------------------------------- precision / recall

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["continuous", "integer", "duplicates"])
def test_precision_recall_equal_torch_fidelity(kind, device):
    real, fake = _sets(kind)
    mine = precision_recall(real, fake, device=device, block_rows=37)
    for dtype in (torch.float32, torch.float64):
        precision, recall = _fidelity(real, fake, DEFAULT_PR_K, dtype)
        # torch-fidelity averages in float32: its fractions carry ~1e-8 of rounding
        assert abs(mine.precision - precision) <= 1e-6, (kind, dtype)
        assert abs(mine.recall - recall) <= 1e-6, (kind, dtype)


def test_precision_recall_other_k_part_path_and_public_entry():
    real, fake = _sets("continuous", n=150, m=210, seed=5)
    for k in (1, 5):
        precision, recall = _fidelity(real, fake, k, part=True)
        mine = precision_recall(real, fake, k=k, block_rows=64)
        assert abs(mine.precision - precision) <= 1e-6 and abs(mine.recall - recall) <= 1e-6
    out = prc_features_to_metric(torch.from_numpy(fake).float(), torch.from_numpy(real).float(),
                                 prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    mine = precision_recall(real, fake)
    for key in ("precision", "recall", "f_score"):
        assert abs(getattr(mine, key) - out[key]) <= 1e-6, key


def test_all_four_in_one_call_match_the_separate_calls():
    real, fake = _sets("duplicates", seed=2)
    pr, dc = precision_recall_density_coverage(real, fake, block_rows=41)
    assert pr == precision_recall(real, fake, block_rows=41)
    assert dc == density_coverage(real, fake, block_rows=41)
    assert set(pr.to_dict()) == {"precision", "recall", "f_score", "k", "n_real", "n_fake"}


def test_memmapped_features_files(tmp_path):
    real, fake = _sets("duplicates", seed=4)
    write_features(tmp_path / "real.features", real)
    write_features(tmp_path / "fake.features", fake)
    stored_real = open_features(tmp_path / "real.features")
    stored_fake = open_features(tmp_path / "fake.features")
    assert isinstance(stored_real.features, np.memmap)
    pr, dc = precision_recall_density_coverage(stored_real, stored_fake, block_rows=29)
    peer = _prdc_peer(real, fake, 5)
    precision, recall = _fidelity(real, fake, 3)
    assert abs(dc.density - peer["density"]) <= 1e-9 and abs(dc.coverage - peer["coverage"]) <= 1e-9
    assert abs(pr.precision - precision) <= 1e-6 and abs(pr.recall - recall) <= 1e-6
    pr_t, dc_t = precision_recall_density_coverage(stored_real.features, torch.from_numpy(fake),
                                                   device="cpu", block_rows=29)
    assert (pr_t, dc_t) == (pr, dc)


def test_identical_sets():
    real, _ = _sets("continuous", n=90)
    pr, dc = precision_recall_density_coverage(real, real.copy(), block_rows=32)
    assert pr.precision == pr.recall == 1.0 and dc.coverage == 1.0
    assert dc.density == _prdc_peer(real, real.copy(), 5)["density"]


# ------------------------------------------------------------------------- errors

def test_usage_errors():
    real, fake = _sets("continuous", n=10, m=10)
    with pytest.raises(UsageError, match="at least 6 fake"):
        density_coverage(real, fake[:5])
    with pytest.raises(UsageError, match="dims"):
        precision_recall(real, fake[:, :3])
    with pytest.raises(UsageError, match="positive integer"):
        precision_recall(real, fake, k=0)
    with pytest.raises(UsageError, match=r"\(N, d\)"):
        precision_recall(real[0], fake)
    with pytest.raises(UsageError, match="block_rows"):
        precision_recall(real, fake, block_rows=0)
    bad = fake.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InputError, match="row 7"):
        precision_recall(real, bad)
