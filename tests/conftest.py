"""Shared fixtures: deterministic random FID-Inception weights and small image folders.

The real weights cannot be fetched in the test environment, so the suite makes its own
(``fidkit.extractors.weights.make_test_weights``: canonical key names, batch norm calibrated on synthetic
images so features have a real spread) and feeds the same file to fidkit and to every peer.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Keep tests on the CPU and quiet; never touch the user's caches.
os.environ.setdefault("FIDKIT_OFFLINE", "1")


@pytest.fixture(scope="session")
def test_weights(tmp_path_factory) -> Path:
    """Path of a deterministic random weights file in the canonical state-dict format."""
    from fidkit.extractors.weights import make_test_weights

    path = tmp_path_factory.mktemp("weights") / "test-inception.pth"
    make_test_weights(path, seed=0)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path / "fidkit-cache"))


def make_images(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """uint8 (count, H, W, 3) images with structure (smooth fields + texture), deterministic."""
    import torch

    from fidkit.extractors.weights import synthetic_images

    h, w = size
    side = max(h, w)
    imgs = synthetic_images(count, size=side, generator=torch.Generator().manual_seed(seed))
    return imgs[:, :, :h, :w].permute(0, 2, 3, 1).contiguous().numpy()


def layer_inputs_and_outputs(model, x) -> tuple[dict, dict]:
    """Run ``model`` on ``x`` and return, per convolution + batch norm + ReLU layer
    (``BasicConv2d``) name, a copy of the tensor it was fed and of the tensor it returned."""
    import torch

    from fidkit.extractors.networks.inception import BasicConv2d

    inputs, outputs, hooks = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, BasicConv2d):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: inputs.__setitem__(name, args[0].clone())))
            hooks.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out.clone())))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, outputs


def write_folder(folder: Path, images: np.ndarray, fmt: str = "png") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:05d}.{fmt}")
    return folder


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Pairs of folders (A, B) of PNGs at 32x32, 256x256 and a non-square size."""
    root = tmp_path_factory.mktemp("images")
    out = {}
    for name, size, n in (("32", (32, 32), 8), ("256", (256, 256), 8), ("nonsquare", (90, 140), 8)):
        a = write_folder(root / f"{name}_a", make_images(n, size, seed=10))
        b = write_folder(root / f"{name}_b", make_images(n, size, seed=20))
        out[name] = (a, b)
    return out


@pytest.fixture()
def http_folder(tmp_path):
    """A local HTTP server (127.0.0.1, a free port) serving a fresh folder: yields (folder, base
    URL). Stands in for the weights and dataset hosts in the download tests."""
    import http.server
    import threading

    root = tmp_path / "site"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
