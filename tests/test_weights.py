"""Weights: download from a local HTTP server (hash-checked, atomic, cached), offline paths,
wrong architecture, and the make-test file's compatibility with the peers' loaders."""
from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from fidkit.defaults import FID_WEIGHTS, WeightsSpec
from fidkit.errors import WeightsError
from fidkit.extractors.weights import cache_dir, resolve_weights


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int | None]] = {}

    def do_GET(self):  # noqa: N802
        body, length = self.routes.get(self.path, (None, None))
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.routes
    httpd.shutdown()
    _Handler.routes.clear()


def _spec(base: str, payload: bytes, *paths: str) -> WeightsSpec:
    return WeightsSpec(filename="w.pth", sha256=hashlib.sha256(payload).hexdigest(),
                       size=len(payload), urls=tuple(base + p for p in paths))


def test_download_caches_the_verified_file(server, tmp_path, monkeypatch):
    base, routes = server
    payload = os.urandom(300_000)
    routes["/w.pth"] = (payload, None)
    spec = _spec(base, payload, "/w.pth")
    got = resolve_weights(spec=spec, offline=False, progress=False)
    assert got.canonical and got.path == cache_dir() / "w.pth"
    assert got.path.read_bytes() == payload
    # A second call is a cache hit: the server is gone, it still works.
    routes.clear()
    assert resolve_weights(spec=spec, offline=False, progress=False).path == got.path
    assert [p.name for p in cache_dir().iterdir()] == ["w.pth"]


def test_wrong_hash_leaves_nothing_in_cache(server):
    base, routes = server
    payload = os.urandom(1000)
    routes["/w.pth"] = (os.urandom(1000), None)  # same size, other bytes
    spec = _spec(base, payload, "/w.pth")
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve_weights(spec=spec, offline=False, progress=False)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_truncated_transfer_leaves_nothing_in_cache(server):
    base, routes = server
    payload = os.urandom(5000)
    routes["/w.pth"] = (payload[:3000], 3000)
    spec = _spec(base, payload, "/w.pth")
    with pytest.raises(WeightsError, match="truncated|expected"):
        resolve_weights(spec=spec, offline=False, progress=False)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_connection_closed_before_content_length_is_truncated(server):
    base, routes = server
    payload = os.urandom(5000)
    routes["/w.pth"] = (payload[:3000], 5000)  # promises 5000, sends 3000, closes
    spec = _spec(base, payload, "/w.pth")
    with pytest.raises(WeightsError, match="truncated transfer"):
        resolve_weights(spec=spec, offline=False, progress=False)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_published_hash_decides_over_a_recorded_size(server):
    # Several recorded sizes are third-party records: a file whose published SHA-256 matches is
    # taken (and later found in the cache) even when the recorded size is off by a few bytes...
    base, routes = server
    payload = os.urandom(4000)
    routes["/w.pth"] = (payload, None)
    spec = WeightsSpec(filename="w.pth", sha256=hashlib.sha256(payload).hexdigest(),
                       size=len(payload) - 7, urls=(base + "/w.pth",))
    got = resolve_weights(spec=spec, offline=False, progress=False)
    assert got.canonical and got.path.read_bytes() == payload
    routes.clear()
    assert resolve_weights(spec=spec, offline=False, progress=False).path == got.path


def test_a_server_sending_far_more_than_recorded_is_stopped(server):
    # ...but a server that keeps sending is cut off 5 % / 1 MiB beyond the recorded size.
    base, routes = server
    payload = os.urandom(3 << 20)
    routes["/w.pth"] = (payload, None)
    spec = WeightsSpec(filename="w.pth", sha256=hashlib.sha256(payload).hexdigest(),
                       size=1 << 20, urls=(base + "/w.pth",))
    with pytest.raises(WeightsError, match="sent more than"):
        resolve_weights(spec=spec, offline=False, progress=False)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_mirror_is_used_when_the_first_url_fails(server):
    base, routes = server
    payload = os.urandom(2000)
    routes["/mirror.pth"] = (payload, None)
    spec = _spec(base, payload, "/missing.pth", "/mirror.pth")
    assert resolve_weights(spec=spec, offline=False, progress=False).path.read_bytes() == payload


def test_corrupted_cache_is_refetched(server):
    base, routes = server
    payload = os.urandom(2000)
    routes["/w.pth"] = (payload, None)
    spec = _spec(base, payload, "/w.pth")
    cache_dir().mkdir(parents=True)
    (cache_dir() / "w.pth").write_bytes(b"garbage")
    got = resolve_weights(spec=spec, offline=False, progress=False)
    assert got.path.read_bytes() == payload


def test_offline_error_says_what_to_download(monkeypatch):
    monkeypatch.delenv("FIDKIT_WEIGHTS", raising=False)
    with pytest.raises(WeightsError) as info:
        resolve_weights(offline=True)
    msg = str(info.value)
    assert FID_WEIGHTS.sha256 in msg and FID_WEIGHTS.urls[0] in msg
    assert str(cache_dir() / FID_WEIGHTS.filename) in msg and "\n" not in msg


def test_env_variable_points_at_weights(test_weights, monkeypatch):
    monkeypatch.setenv("FIDKIT_WEIGHTS", str(test_weights))
    got = resolve_weights()
    assert got.path == Path(test_weights) and not got.canonical


def test_wrong_architecture_is_refused(tmp_path, test_weights):
    from fidkit.extractors.runner import load_model

    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(WeightsError, match="not an FID Inception"):
        load_model(str(bad), device="cpu")
    state = torch.load(test_weights, weights_only=True)
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "wrongfc.pth")
    with pytest.raises(WeightsError, match="shape"):
        load_model(str(tmp_path / "wrongfc.pth"), device="cpu")


def test_test_weights_load_in_torchvision_layout(test_weights):
    # The key set is exactly pytorch-fid's network minus num_batches_tracked, like the real file.
    from pytorch_fid import inception as pfi

    model = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(torch.load(test_weights, weights_only=True)) == expected
