"""Parity with pytorch-fid and torch-fidelity on identical (random, calibrated) weights.

Each peer is fed the same weights file and the same image folders; fidkit must reproduce its
features, statistics and FID (issue 9's tolerances).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fidkit
from fidkit.distances.frechet import frechet_distance

TAPS = ("64", "192", "768", "2048")


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.fixture(scope="module")
def pytorch_fid_model_factory(test_weights):
    """Builds pytorch-fid's InceptionV3 with its weight loading pointed at the test file."""
    from pytorch_fid import inception as pfi

    state = torch.load(test_weights, weights_only=True)

    def build(blocks):
        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *args, **kwargs: state
        try:
            return pfi.InceptionV3(list(blocks)).eval()
        finally:
            pfi.load_state_dict_from_url = original

    return build


@pytest.fixture(scope="module")
def fidkit_model(test_weights):
    from fidkit.extractors.runner import load_model

    model, _ = load_model(str(test_weights), outputs=TAPS, device="cpu")
    return model


@pytest.mark.parametrize("size", [(32, 32), (256, 256), (90, 140)])
def test_features_match_pytorch_fid(size, pytorch_fid_model_factory, fidkit_model):
    from conftest import make_images

    from fidkit.preprocess import get_convention

    images = torch.from_numpy(make_images(4, size, seed=3)).permute(0, 3, 1, 2)
    peer = pytorch_fid_model_factory([0, 1, 2, 3])
    fidkit_model.outputs = TAPS
    with torch.no_grad():
        theirs = peer(images.float() / 255)
        ours = fidkit_model(get_convention("pytorch-fid").prepare(images.float()))
    for tap, t in zip(TAPS, theirs):
        t = torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1)
        assert t.std(0).mean() > 1e-3, "features must vary across images or parity proves nothing"
        assert (ours[tap] - t).abs().max().item() <= 1e-5, tap


@pytest.mark.parametrize("size", [(32, 32), (256, 256), (90, 140)])
def test_features_match_torch_fidelity(size, test_weights, fidkit_model):
    from conftest import make_images
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from fidkit.preprocess import get_convention

    images = torch.from_numpy(make_images(4, size, seed=4)).permute(0, 3, 1, 2).contiguous()
    names = list(TAPS) + ["logits_unbiased", "logits"]
    peer = FeatureExtractorInceptionV3("inception-v3-compat", names,
                                       feature_extractor_weights_path=str(test_weights)).eval()
    fidkit_model.outputs = tuple(names)
    with torch.no_grad():
        theirs = peer(images)
        ours = fidkit_model(get_convention("tf1").prepare(images.float()))
    for name, t in zip(names, theirs):
        assert (ours[name] - t).abs().max().item() <= 1e-4, name


def _pytorch_fid_stats(folder, model, dims):
    from pytorch_fid.fid_score import calculate_activation_statistics

    files = sorted(p for p in folder.iterdir())
    return calculate_activation_statistics(files, model, batch_size=8, dims=dims, device="cpu",
                                           num_workers=0)


#: (statistics, FID) relative tolerances against the peer's features run through the same
#: Frechet function. ``reference`` (``network="reference"``) runs pytorch-fid's float32
#: operations in order; the default (the blocked network on the CPU,
#: fidkit.extractors.networks.inception_blocked) gives the same bits, so it is held to the same
#: tolerance.
PATHS = {"reference": ("reference", 1e-6, 1e-6), "default": (None, 1e-6, 1e-6)}


@pytest.mark.parametrize("name", ["32", "256", "nonsquare"])
@pytest.mark.parametrize("path", list(PATHS))
def test_statistics_and_fid_match_pytorch_fid(name, path, image_folders, test_weights,
                                              pytorch_fid_model_factory):
    from pytorch_fid.fid_score import calculate_frechet_distance

    network, stats_tol, fid_tol = PATHS[path]
    a, b = image_folders[name]
    peer = pytorch_fid_model_factory([3])
    theirs = [_pytorch_fid_stats(f, peer, 2048) for f in (a, b)]
    ours = [fidkit.compute_statistics(f, convention="pytorch-fid", weights=str(test_weights),
                                      workers=0, progress=False, network=network, cache=False)
            for f in (a, b)]
    for (mu, sigma), s in zip(theirs, ours):
        assert rel(s.mu, mu) <= stats_tol
        assert rel(s.sigma, sigma) <= stats_tol
    # Same Frechet function on both sets of statistics.
    fid_ours = frechet_distance(ours[0].mu, ours[0].sigma, ours[1].mu, ours[1].sigma)
    fid_theirs = frechet_distance(*theirs[0], *theirs[1])
    assert fid_ours > 0
    assert abs(fid_ours - fid_theirs) <= fid_tol * fid_theirs
    # The peer's own end-to-end number (its scipy sqrtm), within the 1e-4 budget.
    peer_own = calculate_frechet_distance(*theirs[0], *theirs[1])
    assert abs(fid_ours - peer_own) <= 1e-4 * peer_own


@pytest.mark.parametrize("name", ["32", "256", "nonsquare"])
@pytest.mark.parametrize("path", list(PATHS))
def test_statistics_and_fid_match_torch_fidelity(name, path, image_folders, test_weights):
    import torch_fidelity
    from torch_fidelity.metric_fid import fid_input_id_to_statistics
    from torch_fidelity.utils import create_feature_extractor

    a, b = image_folders[name]
    kwargs = dict(input1=str(a), input2=str(b), cuda=False, cache=False, verbose=False,
                  batch_size=8, feature_extractor_weights_path=str(test_weights),
                  save_cpu_ram=True)
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], **kwargs)
    theirs = [fid_input_id_to_statistics(i, extractor, "2048", **kwargs) for i in (1, 2)]
    network, stats_tol, fid_tol = PATHS[path]
    ours = [fidkit.compute_statistics(f, convention="tf1", weights=str(test_weights), workers=0,
                                      progress=False, network=network, cache=False) for f in (a, b)]
    # torch-fidelity's features equal the exact path's (max abs diff 0 on CPU); its float32
    # statistics then hold them to 1e-5.
    stats_tol, fid_tol = max(stats_tol, 1e-5), max(fid_tol, 1e-5)
    for t, s in zip(theirs, ours):
        assert rel(s.mu, t["mu"]) <= stats_tol
        assert rel(s.sigma, t["sigma"]) <= stats_tol
    fid_ours = frechet_distance(ours[0].mu, ours[0].sigma, ours[1].mu, ours[1].sigma)
    fid_theirs = frechet_distance(theirs[0]["mu"], theirs[0]["sigma"], theirs[1]["mu"], theirs[1]["sigma"])
    assert abs(fid_ours - fid_theirs) <= fid_tol * fid_theirs
    metrics = torch_fidelity.calculate_metrics(fid=True, **kwargs)
    peer_own = metrics["frechet_inception_distance"]
    assert abs(fid_ours - peer_own) <= 1e-4 * peer_own
