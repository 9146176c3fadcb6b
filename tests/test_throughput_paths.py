"""The folded network (opt-in, ``fast="folded"``) computes the same features as the plain one
within rounding; the default network is the plain one's bits (here end to end, and layer by
layer in tests/test_blocked.py).

References: the unfolded network (real ``nn.BatchNorm2d`` layers, contiguous layout), the same
network in float64, and torch's own ``fuse_conv_bn_eval`` for a single layer. Tolerance: 1e-5 of
the largest feature magnitude. Folding and channels-last only reorder float32 sums; with the
random test weights the plain float32 network is itself about 2e-5 from its float64 self at
pool_3 (the deep random layers amplify rounding), so there the fast path must be as close to the
float64 truth as the plain path is (within a factor 3), and within 1e-5 of the plain path at the
taps where rounding has not yet grown to that size.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import layer_inputs_and_outputs, make_images, write_folder

REL_TOL = 1e-5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def model(test_weights):
    from fidkit.extractors.runner import load_model

    net, _ = load_model(str(test_weights), outputs=("2048",), device="cpu")
    return net


def test_fold_one_layer_matches_torch_fusion():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from fidkit.extractors.runner import fold_batchnorm
    from fidkit.extractors.networks.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3(outputs=("64",))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    layer = net.Conv2d_2a_3x3
    reference = fuse_conv_bn_eval(layer.conv, layer.bn)
    folded = fold_batchnorm(net).Conv2d_2a_3x3
    assert isinstance(folded.bn, torch.nn.Identity)
    torch.testing.assert_close(folded.conv.weight, reference.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded.conv.bias, reference.bias, rtol=1e-6, atol=1e-7)
    # the original network is untouched
    assert isinstance(net.Conv2d_2a_3x3.bn, torch.nn.BatchNorm2d)


def test_inference_copy_matches_plain_network_at_every_output(model):
    from fidkit.extractors.runner import inference_copy
    from fidkit.preprocess import get_convention

    conv = get_convention("tf1")
    images = make_images(4, (64, 64), seed=3)
    x = torch.stack([conv.prepare_image(img) for img in images])
    outputs = ("64", "192", "768", "2048", "logits", "logits_unbiased")
    model.outputs = outputs
    try:
        fast = inference_copy(model)
        with torch.inference_mode():
            plain = model(x)
            quick = fast(x.contiguous(memory_format=torch.channels_last))
            exact = copy.deepcopy(model).double()(x.double())
    finally:
        model.outputs = ("2048",)
    for name in outputs:
        own = _rel_err(plain[name].double(), exact[name])
        err = _rel_err(quick[name].double(), exact[name])
        assert err <= max(REL_TOL, 3 * own), f"{name}: {err:.2e} from float64 (plain: {own:.2e})"
    for name in ("64", "192", "768"):
        err = _rel_err(quick[name], plain[name])
        assert err <= REL_TOL, f"{name}: relative error {err:.2e} from the plain network"
    # the features really vary between images, so agreement is not trivial
    assert float(plain["2048"].std(0).mean()) > 1e-3 * float(plain["2048"].abs().max())


def test_every_fast_block_equals_the_plain_block_on_the_same_input(model):
    """What the optimisations change, layer by layer: each folded channels-last block (conv +
    bias + ReLU) against the unoptimised block (conv, batch norm, ReLU) fed the very tensor the
    plain network fed it. Held to 1e-5 at every one of the 94 blocks; the end-to-end pool_3
    difference is this per-block rounding grown through the depth, as it grows for the plain
    float32 network against float64 (benchmarks/rounding.py)."""
    from fidkit.extractors.runner import inference_copy
    from fidkit.preprocess import get_convention

    conv = get_convention("tf1")
    x = torch.stack([conv.prepare_image(img) for img in make_images(2, (80, 64), seed=11)])
    inputs, outputs = layer_inputs_and_outputs(model, x)
    fast = dict(inference_copy(model).named_modules())
    assert len(inputs) == 94
    worst = {}
    with torch.inference_mode():
        for name, inp in inputs.items():
            block = fast[name]
            assert isinstance(block.bn, torch.nn.Identity), name  # really the folded block
            out = block(inp.contiguous(memory_format=torch.channels_last))
            worst[name] = _rel_err(out, outputs[name])
    name = max(worst, key=worst.get)
    assert worst[name] <= REL_TOL, f"{name}: {worst[name]:.2e} from the plain block"


def test_inference_copy_follows_reloaded_weights(model, test_weights):
    from fidkit.extractors.runner import inference_copy
    from fidkit.extractors.weights import load_state_dict, resolve_weights

    first = inference_copy(model)
    assert inference_copy(model) is first  # memoised
    model.load_weights(load_state_dict(resolve_weights(str(test_weights))))
    second = inference_copy(model)
    assert second is not first  # weights written in place: rebuilt
    model.double()  # .to() swaps .data without bumping version counters
    try:
        third = inference_copy(model)
        assert third is not second  # rebuilt for the new dtype (or device)
    finally:
        model.float()
    assert inference_copy(model) is not third


def test_folder_fast_path_equals_plain_path_and_workers_agree(model, tmp_path):
    from fidkit.extractors.runner import iter_features
    from fidkit.preprocess import get_convention
    from fidkit.sources import FolderSource

    folder = write_folder(tmp_path / "imgs", make_images(7, (48, 40), seed=5))
    source = FolderSource(folder)
    conv = get_convention("tf1")
    model.outputs = ("64",)  # an early tap keeps the test fast; the full depth is checked above
    try:
        def run(**kw):
            return torch.cat([out["64"] for out in iter_features(source, model, conv, batch_size=3,
                                                                 progress=False, **kw)])

        plain = run(workers=0, optimized=False)
        inline = run(workers=0, optimized=None)
        pooled = run(workers=2, optimized=None)
        folded = run(workers=2, optimized="folded")
    finally:
        model.outputs = ("2048",)
    assert plain.shape == (7, 64)
    # the default (blocked) network is the plain one's bits; folding is within rounding
    assert torch.equal(inline, plain)
    assert _rel_err(folded, plain) <= REL_TOL
    assert not torch.equal(folded, plain)  # really another network
    # same batches, same kernels: decoding in workers must not change a single bit or the order
    assert torch.equal(pooled, inline)


def test_compute_statistics_default_path_matches_plain_features(test_weights, tmp_path):
    """End to end through the API (default network, default workers) against the plain
    network's features fed to numpy's mean and covariance, and against the API's own exact run
    (the same bits, so the same statistics); the provenance says which network ran."""
    import fidkit
    from fidkit.extractors.runner import iter_features, load_model
    from fidkit.preprocess import get_convention
    from fidkit.sources import FolderSource

    folder = write_folder(tmp_path / "e2e", make_images(6, (32, 32), seed=8))
    kwargs = dict(dims=64, weights=str(test_weights), device="cpu", progress=False, cache=False)
    stats = fidkit.compute_statistics(str(folder), **kwargs)
    exact = fidkit.compute_statistics(str(folder), fast=False, **kwargs)
    folded = fidkit.compute_statistics(str(folder), fast="folded", **kwargs)
    net, _ = load_model(str(test_weights), outputs=("64",), device="cpu")
    feats = torch.cat([o["64"] for o in iter_features(FolderSource(folder), net,
                                                       get_convention("tf1"), workers=0,
                                                       optimized=False, progress=False)])
    f = feats.double().numpy()
    scale = np.abs(f).max()
    for s in (stats, folded):
        assert np.abs(s.mu - f.mean(0)).max() <= REL_TOL * scale
        assert np.abs(s.sigma - np.cov(f, rowvar=False)).max() <= REL_TOL * scale ** 2
    assert np.array_equal(stats.mu, exact.mu) and np.array_equal(stats.sigma, exact.sigma)
    assert stats.meta["network"] == "blocked" and "fast_path" not in stats.meta
    assert exact.meta["network"] == "reference" and "fast_path" not in exact.meta
    assert folded.meta["network"] == "folded" and "folded" in folded.meta["fast_path"]
    net.outputs = ("2048",)


def test_decoding_threads_stop_when_the_consumer_stops(test_weights, tmp_path):
    """Leaving the feature loop early (an error, a break) must not leave decoding threads
    behind, and every batch comes out in the source's order."""
    import threading

    from fidkit.extractors.runner import _batches, _Prepared
    from fidkit.preprocess import get_convention
    from fidkit.sources import FolderSource

    folder = write_folder(tmp_path / "many", make_images(11, (24, 24), seed=2))
    items = _Prepared(FolderSource(folder), get_convention("tf1"))
    got = [idx for idx, _, _ in _batches(items, 3, threads=3)]
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    gen = _batches(items, 2, threads=2)
    next(gen)
    gen.close()
    alive = [t.name for t in threading.enumerate() if t.name.startswith("fidkit-decode")]
    assert alive == []


@pytest.mark.parametrize("name", ["tf1", "pytorch-fid", "antialias"])
def test_batched_device_preprocessing_equals_per_image(name):
    """What a CUDA run does (decoded images stacked by size, resized in one call, put back in
    order) gives exactly the per-image CPU preprocessing; run here on the CPU, where the
    arithmetic is the same elementwise float32 operations (tests/test_cuda.py runs it on a card)."""
    from fidkit.extractors.runner import _collate, _device_batch
    from fidkit.preprocess import get_convention

    convention = get_convention(name)
    sizes = [(64, 48), (299, 299), (64, 48), (120, 90), (64, 48)]
    images = [make_images(1, size, seed=k)[0] for k, size in enumerate(sizes)]
    images[3] = images[3].astype(np.float64) + 0.25  # a non-uint8 array, as the thread gives it
    raw = [(k, im if im.dtype == np.uint8 else im.astype(np.float32), None)
           for k, im in enumerate(images)]
    _, groups, _ = _collate(raw)
    assert sorted(len(positions) for positions, _ in groups) == [1, 1, 3]
    batched = _device_batch(groups, convention, torch.device("cpu"), torch.channels_last)
    one_by_one = torch.stack([convention.prepare_image(im) for im in images])
    assert batched.shape == (5, 3, 299, 299) and batched.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batched, one_by_one)


def test_decode_only_threads_give_the_same_statistics_and_skip_bad_files(test_weights, tmp_path,
                                                                         monkeypatch):
    """The CUDA pipeline's shape (threads only decode; resize batched after) forced on the CPU:
    same statistics as the per-image path, in order, with a broken file skipped or reported."""
    import fidkit
    import fidkit.extractors.runner as features
    from fidkit.errors import BadImageError
    from PIL import Image

    folder = write_folder(tmp_path / "a", make_images(7, (64, 48), seed=31))
    for k, img in enumerate(make_images(3, (40, 40), seed=32)):
        Image.fromarray(img).save(folder / f"img_{k:05d}_b.png")
    (folder / "img_00003_x.png").write_bytes(b"not a png")
    kwargs = dict(dims=64, weights=str(test_weights), device="cpu", cache=False, progress=False,
                  workers=2, batch_size=4, skip_bad=True, keep_features=True)
    threads = fidkit.compute_statistics(folder, **kwargs)
    calls = []
    original = features._device_batch
    monkeypatch.setattr(features, "_resize_on_device", lambda device, convention: True)
    monkeypatch.setattr(features, "_device_batch",
                        lambda *a: calls.append(sum(len(p) for p, _ in a[0])) or original(*a))
    batched = fidkit.compute_statistics(folder, **kwargs)
    assert sum(calls) == 10 and max(calls) <= 4  # every image went through the batched resize
    assert batched.n == threads.n == 10
    assert np.array_equal(batched.features, threads.features)
    # and with decoding in worker processes, as a CUDA run does
    calls.clear()
    monkeypatch.setattr(features, "_batches", lambda items, size, workers: features._process_batches(
        items, size, workers))
    in_processes = fidkit.compute_statistics(folder, **kwargs)
    assert sum(calls) == 10 and np.array_equal(in_processes.features, threads.features)
    with pytest.raises(BadImageError, match="img_00003_x.png"):
        fidkit.compute_statistics(folder, **dict(kwargs, skip_bad=False))
