"""KID and Inception Score: the math against torch-fidelity's functions on the same arrays, a closed
form, and end to end (same random weights, same images) against torch_fidelity.calculate_metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images, write_folder
from fidkit.distances.inception_score import inception_score
from fidkit.distances.kid import kid


def close(ours: float, theirs: float, tol: float) -> bool:
    return abs(ours - theirs) <= tol * abs(theirs)


@pytest.mark.parametrize("n_a,n_b,size,subsets", [(120, 90, 40, 5), (30, 30, 30, 1)])
def test_kid_matches_torch_fidelity_on_the_same_features(n_a, n_b, size, subsets):
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(n_a)
    a = rng.normal(0.3, 0.5, size=(n_a, 48))
    b = rng.normal(0.0, 0.6, size=(n_b, 48))
    ours = kid(a, b, subset_size=size, subsets=subsets, seed=7)
    theirs = kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets, kid_subset_size=size,
        rng_seed=7, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    assert close(ours.mean, theirs["kernel_inception_distance_mean"], 1e-10)
    assert close(ours.std + 1.0, theirs["kernel_inception_distance_std"] + 1.0, 1e-12)


@pytest.mark.parametrize("n,splits", [(103, 10), (40, 3), (7, 1)])
def test_inception_score_matches_torch_fidelity_on_the_same_logits(n, splits):
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(n).normal(0, 4, size=(n, 1008))
    ours = inception_score(logits, splits=splits)
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=True, rng_seed=2020)
    assert close(ours.mean, theirs["inception_score_mean"], 1e-12)
    assert abs(ours.std - theirs["inception_score_std"]) <= 1e-12 * ours.mean


def test_inception_score_closed_form():
    """Confident predictions spread evenly over k classes: IS = k exactly (KL = log k)."""
    k, per_class = 8, 5
    logits = np.full((k * per_class, 1008), -1e4)
    logits[np.arange(k * per_class), np.repeat(np.arange(k), per_class)] = 1e4
    score = inception_score(logits, splits=1)
    assert abs(score.mean - k) <= 1e-9 * k and score.std == 0.0


def test_kid_of_a_set_with_itself_is_unbiased_zero_in_expectation():
    """Unbiased MMD^2 averages to ~0 for two samples of one distribution (the biased one does not)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    far = kid(a, b + 1.0, subset_size=100, subsets=20, seed=1)
    near = kid(a, b, subset_size=100, subsets=20, seed=1)
    assert abs(near.mean) < 3 * near.std / np.sqrt(20) + 1e-3 * far.mean


def test_kid_and_is_end_to_end_match_torch_fidelity(tmp_path, test_weights, capsys):
    """Same weights, same PNGs: fidkit compare --metrics fid,kid,is and the streaming metric
    against torch_fidelity.calculate_metrics (KID over one subset of all images, IS with 2 splits)."""
    import torch_fidelity

    from fidkit.cli import main

    n = 4
    a_imgs, b_imgs = make_images(n, (32, 32), seed=41), make_images(n, (32, 32), seed=42)
    a = write_folder(tmp_path / "a", a_imgs)
    b = write_folder(tmp_path / "b", b_imgs)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a), input2=str(b), kid=True, isc=True, kid_subset_size=n, kid_subsets=1,
        isc_splits=2, cuda=False, cache=False, verbose=False, batch_size=n, save_cpu_ram=True,
        feature_extractor_weights_path=str(test_weights))
    # torch-fidelity runs its KID kernel on float32 features: each kernel value carries ~1e-7 of
    # relative rounding, and KID is a near-cancelling difference of kernel means (here KID/K ~ 1e-4),
    # so its number is only good to ~1e-6 of the kernel's scale K (the float64 math is checked to
    # 1e-10 above). IS is computed in float64 by both.
    is_tol = 1e-5

    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--metrics", "fid,kid,is", "--json", "--weights",
                 str(test_weights), "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kid"]["subset_size"] == n
    # The CLI splits min(10, N) ways: one image per split here, whose KL to itself is 0.
    assert report["is"]["splits"] == n and abs(report["is"]["mean"] - 1.0) <= 1e-12

    metric = fidkit.FID(dims=2048, weights=test_weights, device="cpu", kid=True,
                        inception_score=True, kid_subset_size=n, kid_subsets=1, is_splits=2)
    metric.update(torch.from_numpy(a_imgs).permute(0, 3, 1, 2))
    metric.update(torch.from_numpy(b_imgs).permute(0, 3, 1, 2), real=True)
    result = metric.compute_all()
    mu_a, mu_b = metric.statistics().mu, metric.statistics(real=True).mu
    kernel_scale = (mu_a @ mu_b / mu_a.size + 1.0) ** 3
    theirs_kid = theirs["kernel_inception_distance_mean"]
    assert abs(result["kid"].mean - theirs_kid) <= 1e-6 * kernel_scale
    # The CLI uses 100 subsets; with subsets of the whole set every draw is the same set. Its
    # features come from another batching of the same network, equal only to float32 rounding.
    assert abs(report["kid"]["mean"] - theirs_kid) <= 1e-6 * kernel_scale
    assert close(result["is"].mean, theirs["inception_score_mean"], is_tol)
    assert close(result["is"].std + result["is"].mean,
                 theirs["inception_score_std"] + theirs["inception_score_mean"], is_tol)
    # 4 samples in 2048 dims: a rank-3 covariance magnifies float32 rounding of the features.
    assert close(result["fid"], report["fid"], 1e-4)
