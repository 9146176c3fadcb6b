"""The Python API warns (:class:`fidkit.FidkitWarning`) wherever the command line prints
``fidkit: warning:``: non-canonical weights, n <= d, rank-deficient covariances, sides compared
with ``force=True``, a lowered KID subset size, for ``compute_statistics``, ``compare``, ``fid``
and the streaming metrics.

The random test weights are not the canonical file, so every number made with them must say so;
the other warnings are provoked with 6 images at the 64-dim tap (n <= d), a covariance of known
rank, and a reference made with another convention.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images
from fidkit.errors import FidkitWarning, ProvenanceMismatchError
from fidkit.statistics import Statistics

N, D = 6, 64
NON_CANONICAL = "NON-canonical weights"
SMALL_N = f"n = {N} samples for d = {D} dims"


def said(call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``call()``'s result and the FidkitWarning lines it raised (pytest.warns fails on none)."""
    with pytest.warns(FidkitWarning) as record:
        result = call()
    return result, [str(w.message) for w in record if issubclass(w.category, FidkitWarning)]


def has(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


@pytest.fixture(scope="module")
def sides(test_weights) -> dict[str, Any]:
    gen = make_images(N, (32, 32), seed=51)
    ref = make_images(N, (32, 32), seed=52)
    options = dict(weights=test_weights, dims=D, workers=0, progress=False, cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidkitWarning)
        ref_stats = fidkit.compute_statistics(ref, **options)
        other_convention = fidkit.compute_statistics(ref, convention="pytorch-fid", **options)
    return {"gen": gen, "ref": ref, "ref_stats": ref_stats, "other": other_convention,
            "options": options}


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _streaming(metric_class: Any, test_weights, **kwargs: Any) -> Any:
    return metric_class(dims=D, weights=test_weights, device="cpu", **kwargs)


def _rank_deficient(meta: dict[str, Any], rank: int = 3, seed: int = 0) -> Statistics:
    """A d = 64 covariance of rank ``rank`` with n not recorded (as in a pytorch-fid .npz)."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(D, rank))
    return Statistics(rng.normal(size=D), factor @ factor.T, 0, dict(meta))


# ------------------------------------------------------------------------- non-canonical weights


def test_compute_statistics_warns_non_canonical_weights(sides):
    stats, lines = said(lambda: fidkit.compute_statistics(sides["gen"], **sides["options"]))
    assert stats.meta["weights"]["canonical"] is False and has(lines, NON_CANONICAL)


@pytest.mark.parametrize("call", ["compare", "fid"])
def test_compare_and_fid_warn_non_canonical_weights_and_small_n(sides, call):
    function = getattr(fidkit, call)
    _, lines = said(lambda: function(sides["gen"], sides["ref_stats"], **sides["options"]))
    assert has(lines, NON_CANONICAL) and has(lines, SMALL_N)


def test_streaming_fid_warns_non_canonical_weights_and_small_n(sides, test_weights):
    metric = _streaming(fidkit.FID, test_weights, reference=sides["ref_stats"])
    metric.update(_tensor(sides["gen"]))
    value, lines = said(metric.compute)
    assert np.isfinite(value) and has(lines, NON_CANONICAL) and has(lines, SMALL_N)


# ----------------------------------------------------------------- rank-deficient covariances


@pytest.mark.parametrize("call", ["compare", "fid"])
def test_rank_deficient_covariances_warn(sides, call):
    meta = sides["ref_stats"].meta
    a, b = _rank_deficient(meta, seed=1), _rank_deficient(meta, seed=2)
    _, lines = said(lambda: getattr(fidkit, call)(a, b))
    assert has(lines, f"has rank 3 < d = {D} (n not recorded)")


def test_streaming_fid_warns_a_rank_deficient_reference(sides, test_weights):
    reference = _rank_deficient(sides["ref_stats"].meta)
    metric = _streaming(fidkit.FID, test_weights, reference=reference)
    metric.update(_tensor(sides["gen"]))
    _, lines = said(metric.compute)
    assert has(lines, "covariance of the reference side has rank 3")


# -------------------------------------------------------------- forced provenance mismatches


@pytest.mark.parametrize("call", ["compare", "fid"])
def test_forced_mismatch_warns(sides, call):
    function = getattr(fidkit, call)
    with pytest.raises(ProvenanceMismatchError, match="convention differs"):
        function(sides["gen"], sides["other"], **sides["options"])
    _, lines = said(lambda: function(sides["gen"], sides["other"], force=True, **sides["options"]))
    assert has(lines, "convention differs") and has(lines, "pytorch-fid")


def test_streaming_fid_forced_mismatch_warns(sides, test_weights):
    metric = _streaming(fidkit.FID, test_weights, reference=sides["other"], force=True)
    metric.update(_tensor(sides["gen"]))
    _, lines = said(metric.compute)
    assert has(lines, "convention differs")


# ------------------------------------------------------------------------ KID subset lowered


def test_compare_kid_warns_the_lowered_subset_size(sides):
    report, lines = said(lambda: fidkit.compare(sides["gen"], sides["ref"], metrics="kid",
                                                **sides["options"]))
    assert report.values["kid"]["subset_size"] == N
    assert has(lines, f"KID subset size lowered from 1000 to {N}")
    assert has(report.warnings, f"KID subset size lowered from 1000 to {N}")


def test_streaming_kid_warns_the_lowered_subset_size(sides, test_weights):
    metric = _streaming(fidkit.KID, test_weights)
    metric.update(_tensor(sides["gen"]))
    metric.update(_tensor(sides["ref"]), real=True)
    value, lines = said(metric.compute)
    assert np.isfinite(value.mean) and has(lines, f"KID subset size lowered from 1000 to {N}")


def test_streaming_kid_and_inception_score_warn_non_canonical_weights_once(sides, test_weights):
    metric = _streaming(fidkit.InceptionScore, test_weights, is_splits=2)
    metric.update(_tensor(sides["gen"]))
    _, lines = said(metric.compute)
    assert has(lines, NON_CANONICAL)
    both = _streaming(fidkit.FID, test_weights, kid=True)
    both.update(_tensor(sides["gen"]))
    both.update(_tensor(sides["ref"]), real=True)
    _, lines = said(both.compute_all)
    assert sum(NON_CANONICAL in line for line in lines) == 1  # FID and KID, said once
