"""The feature runner's paths give the reference network's bits: the blocked CPU copy, decoding
in threads or processes, batched resizing, end to end through the API (layer by layer in
tests/test_blocked.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_images, write_folder

REL_TOL = 1e-5


@pytest.fixture(scope="module")
def model(test_weights):
    from fidkit.extractors.runner import load_model

    net, _ = load_model(str(test_weights), outputs=("2048",), device="cpu")
    return net


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

        plain = run(workers=0, network="reference")
        inline = run(workers=0, network=None)
        pooled = run(workers=2, network="auto")
    finally:
        model.outputs = ("2048",)
    assert plain.shape == (7, 64)
    # the default (blocked) network is the plain one's bits
    assert torch.equal(inline, plain)
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
    exact = fidkit.compute_statistics(str(folder), network="reference", **kwargs)
    net, _ = load_model(str(test_weights), outputs=("64",), device="cpu")
    feats = torch.cat([o["64"] for o in iter_features(FolderSource(folder), net,
                                                       get_convention("tf1"), workers=0,
                                                       network="reference", progress=False)])
    f = feats.double().numpy()
    scale = np.abs(f).max()
    assert np.abs(stats.mu - f.mean(0)).max() <= REL_TOL * scale
    assert np.abs(stats.sigma - np.cov(f, rowvar=False)).max() <= REL_TOL * scale ** 2
    assert np.array_equal(stats.mu, exact.mu) and np.array_equal(stats.sigma, exact.sigma)
    assert stats.meta["network"] == "blocked" and exact.meta["network"] == "reference"
    assert stats.meta["extractor"] == exact.meta["extractor"] == "inception"
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
    batched = _device_batch(groups, convention, torch.device("cpu"))
    one_by_one = torch.stack([convention.prepare_image(im) for im in images])
    assert batched.shape == (5, 3, 299, 299) and batched.is_contiguous()
    assert torch.equal(batched, one_by_one)


def test_decode_only_threads_give_the_same_statistics_and_skip_bad_files(test_weights, tmp_path,
                                                                         monkeypatch):
    """The CUDA pipeline's shape (threads only decode; resize batched after) forced on the CPU:
    same statistics as the per-image path, in order, with a broken file skipped or reported."""
    import fidkit.extractors.runner as features
    from fidkit.errors import BadImageError
    from PIL import Image

    folder = write_folder(tmp_path / "a", make_images(7, (64, 48), seed=31))
    for k, img in enumerate(make_images(3, (40, 40), seed=32)):
        Image.fromarray(img).save(folder / f"img_{k:05d}_b.png")
    (folder / "img_00003_x.png").write_bytes(b"not a png")
    from fidkit.extraction import Pipeline, Runtime, extract

    pipeline = Pipeline(dims=64, weights=str(test_weights))
    runtime = Runtime(device="cpu", progress=False, workers=2, batch_size=4)

    def run(skip_bad=True):
        return extract(folder, pipeline, runtime, skip_bad=skip_bad, keep_features=True)

    threads = run()
    calls = []
    original = features._device_batch
    monkeypatch.setattr(features, "_resize_on_device", lambda device, convention: True)
    monkeypatch.setattr(features, "_device_batch",
                        lambda *a: calls.append(sum(len(p) for p, _ in a[0])) or original(*a))
    batched = run()
    assert sum(calls) == 10 and max(calls) <= 4  # every image went through the batched resize
    assert batched.n == threads.n == 10
    assert np.array_equal(batched.features, threads.features)
    # and with decoding in worker processes, as a CUDA run does
    calls.clear()
    monkeypatch.setattr(features, "_batches", lambda items, size, workers: features._process_batches(
        items, size, workers))
    in_processes = run()
    assert sum(calls) == 10 and np.array_equal(in_processes.features, threads.features)
    with pytest.raises(BadImageError, match="img_00003_x.png"):
        run(skip_bad=False)


def test_inputs_of_several_sizes_run_in_groups_in_order(tmp_path):
    """A convention that does not resize (a user's module taking any size) gets batches of mixed
    sizes: each size runs as its own group and the features come back in the source's order,
    equal to one image at a time through the module itself."""
    import fidkit
    from fidkit.extractors.custom import register_extractor

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    register_extractor("test-any-size", net, input_size=None, replace=True)
    folder = tmp_path / "mixed"
    folder.mkdir()
    from PIL import Image

    images = [make_images(1, size, seed=k)[0] for k, size in
              enumerate([(32, 32), (40, 24), (32, 32), (40, 24), (16, 48)])]
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{k}.png")
    got = fidkit.extract_features(folder, features="test-any-size", batch_size=5, workers=0,
                                  progress=False).features
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = [net((torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - mean) / std)
                    for img in images]
    assert np.allclose(got, torch.cat(expected).numpy(), rtol=0, atol=1e-6)
