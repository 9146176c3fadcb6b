"""Streaming metrics (fidkit.FID): equal to the batch pipeline and to numpy on the same images,
input-range guard, checkpoints, provenance, eval mode. The 64 tap keeps the network short."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images, write_folder
from fidkit.errors import InputError, UsageError

DIMS = 64


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def images():
    """Two uint8 (N, 3, H, W) batches of 10 images at 32x32."""
    a = make_images(10, (32, 32), seed=31)
    b = make_images(10, (32, 32), seed=32)
    return torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def batch_stats(images, test_weights):
    """compute_statistics of both sides, with their features (the independent route)."""
    out = []
    for x in images:
        result = fidkit.extract_features(x, dims=DIMS, weights=test_weights, workers=0,
                                         progress=False)
        stats = result.statistics()
        stats.features = result.features  # the test's own attribute, for KID below
        out.append(stats)
    return out


def make_metric(test_weights, **options):
    return fidkit.FID(dims=DIMS, weights=test_weights, device="cpu", **options)


def test_streaming_statistics_equal_compute_statistics_and_numpy(images, batch_stats, test_weights):
    a, b = images
    metric = make_metric(test_weights)
    for chunk in (a[:3], a[3:4], a[4:]):  # uneven batches: the Chan merge must not care
        metric.update(chunk)
    metric.update(b[:7], real=True)
    metric.update(b[7:], real=True)
    for real, ref in ((False, batch_stats[0]), (True, batch_stats[1])):
        stream = metric.statistics(real=real)
        assert stream.n == ref.n
        assert rel(stream.mu, ref.mu) <= 1e-10
        assert rel(stream.sigma, ref.sigma) <= 1e-10
        feats = ref.features.astype(np.float64)  # numpy's own mean and covariance
        assert rel(stream.mu, feats.mean(0)) <= 1e-10
        assert rel(stream.sigma, np.cov(feats, rowvar=False)) <= 1e-10
    expected = fidkit.fid(batch_stats[0], batch_stats[1])
    assert abs(metric.compute() - expected) <= 1e-10 * expected


def test_float_inputs_need_their_declared_range(images, batch_stats, test_weights):
    a, _ = images
    tanh_like = a.float() / 127.5 - 1.0  # what a generator with a tanh head gives
    wrong = make_metric(test_weights, reference=batch_stats[1])
    with pytest.raises(InputError, match="input_range"):
        wrong.update(tanh_like)
    with pytest.raises(InputError):
        wrong.update(torch.full((2, 3, 32, 32), float("nan")))
    with pytest.raises(UsageError):
        wrong.update(a.to(torch.int32))

    uint8_route = make_metric(test_weights, reference=batch_stats[1])
    uint8_route.update(a)
    declared = make_metric(test_weights, reference=batch_stats[1], input_range=(-1, 1))
    declared.update(tanh_like)
    unit = make_metric(test_weights, reference=batch_stats[1], input_range=(0, 1))
    unit.update(a.float() / 255.0)
    expected = uint8_route.compute()
    # The float routes differ from the uint8 one only by float32 rounding of the rescale.
    assert abs(declared.compute() - expected) <= 1e-5 * expected
    assert abs(unit.compute() - expected) <= 1e-5 * expected


def test_checkpoint_round_trip_resumes(images, batch_stats, test_weights):
    a, _ = images
    whole = make_metric(test_weights, reference=batch_stats[1])
    whole.update(a)
    first = make_metric(test_weights, reference=batch_stats[1])
    first.update(a[:5])
    resumed = pickle.loads(pickle.dumps(first))
    resumed.update(a[5:])
    fresh = make_metric(test_weights, reference=batch_stats[1])
    fresh.load_state_dict(first.state_dict())
    fresh.update(a[5:])
    for other in (resumed, fresh):
        assert abs(other.compute() - whole.compute()) <= 1e-10 * whole.compute()
    other_dims = fidkit.FID(dims=192, weights=test_weights, device="cpu")
    with pytest.raises(UsageError, match="dims"):
        other_dims.load_state_dict(first.state_dict())


def test_reset_keeps_reference_and_network_stays_in_eval(images, batch_stats, test_weights):
    a, b = images
    metric = make_metric(test_weights, reference=batch_stats[1])
    metric.update(b)
    metric.reset()
    metric.model.train()  # a training loop calling .train() on everything
    assert not metric.model.training
    metric.update(a)
    expected = fidkit.fid(batch_stats[0], batch_stats[1])
    assert abs(metric.compute() - expected) <= 1e-10 * expected
    with pytest.raises(UsageError, match="reference"):
        metric.update(b, real=True)


def test_stream_reference_file_is_accepted_by_compare(images, batch_stats, test_weights, tmp_path,
                                                      capsys):
    """A reference written from a training run compares with folder statistics made the same way."""
    from fidkit.cli import main

    a, b = images
    metric = make_metric(test_weights)
    metric.update(b, real=True)
    stream_ref = metric.statistics(real=True)
    assert set(stream_ref.meta) == set(batch_stats[1].meta)
    assert stream_ref.meta["source"]["kind"] == "tensor-stream"
    stream_ref.save(str(tmp_path / "ref.pkl"))
    folder = write_folder(tmp_path / "fake", a.permute(0, 2, 3, 1).numpy())
    fidkit.compute_statistics(folder, dims=DIMS, weights=test_weights, workers=0,
                              progress=False).save(str(tmp_path / "fake.pkl"))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "fake.pkl"), str(tmp_path / "ref.pkl")]) == 0
    printed = float(capsys.readouterr().out.split("fid:")[1].split()[0])  # then the side labels
    expected = fidkit.fid(batch_stats[0], batch_stats[1])
    assert abs(printed - expected) <= 1e-6 * expected + 1e-6
    other = make_metric(test_weights, convention="pytorch-fid")
    other.update(b, real=True)
    other.statistics(real=True).save(str(tmp_path / "other.pkl"))
    assert main(["compare", str(tmp_path / "fake.pkl"), str(tmp_path / "other.pkl")]) == 4


def test_kid_metric_matches_torch_fidelity_on_its_features(images, batch_stats, test_weights):
    """fidkit.KID against a reference feature array, checked by torch-fidelity's KID on the same
    (float64) features and the same seeded subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    a, _ = images
    metric = fidkit.KID(reference=batch_stats[1].features, dims=DIMS, weights=test_weights,
                        device="cpu", kid_subset_size=6, kid_subsets=4, seed=3)
    metric.update(a)
    ours = metric.compute()
    theirs = kid_features_to_metric(
        torch.from_numpy(batch_stats[0].features.astype(np.float64)),
        torch.from_numpy(batch_stats[1].features.astype(np.float64)), kid_subsets=4,
        kid_subset_size=6, rng_seed=3, verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    scale = abs(theirs["kernel_inception_distance_mean"]) + theirs["kernel_inception_distance_std"]
    assert abs(ours.mean - theirs["kernel_inception_distance_mean"]) <= 1e-6 * scale
    assert abs(ours.std - theirs["kernel_inception_distance_std"]) <= 1e-6 * scale
    restored = pickle.loads(pickle.dumps(fidkit.InceptionScore(weights=test_weights, device="cpu")))
    assert isinstance(restored, fidkit.InceptionScore) and restored.use_is and not restored.use_fid
