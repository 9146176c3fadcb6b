"""Every registered extractor's weights go through the same download: from its own URLs (here a
local HTTP server standing in for them), hash-checked, atomic, cached, and offline a one-line
error naming the file, its hash and where to put it. Files without a published hash are pinned
to the hash of their first download (trust on first use) and checked after."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from fidkit.errors import WeightsError
from fidkit.extractors import get_extractor, iter_extractors

NAMES = [e.name for e in iter_extractors() if e.weights is not None]


def _served(spec, root, base, payload: bytes, *, published: bool = True):
    """The spec with its URL paths moved to the local server (same file names) and, for this
    payload, its hash and size (or none, like a file whose hash is unpublished)."""
    from urllib.parse import urlparse

    name = urlparse(spec.urls[0]).path.rsplit("/", 1)[-1]
    (root / name).write_bytes(payload)
    return dataclasses.replace(
        spec, urls=(f"{base}/missing/{name}", f"{base}/{name}"),  # the mirror is used too
        sha256=hashlib.sha256(payload).hexdigest() if published else "",
        size=len(payload) if published else 0)


@pytest.mark.parametrize("name", NAMES)
def test_each_extractor_downloads_verifies_and_caches(name, http_folder, tmp_path, monkeypatch):
    from fidkit.extractors.weights import resolve_weights

    root, base = http_folder
    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FIDKIT_WEIGHTS", raising=False)
    monkeypatch.delenv("FIDKIT_OFFLINE", raising=False)
    spec = get_extractor(name).weights
    payload = hashlib.sha256(name.encode()).digest() * 512
    local = _served(spec, root, base, payload)
    got = resolve_weights(None, spec=local, progress=False)
    assert got.path == tmp_path / "cache" / spec.filename and got.canonical
    assert got.path.read_bytes() == payload
    # A second call is a cache hit (the server is not needed), and a bit flip is caught.
    (root / local.urls[1].rsplit("/", 1)[-1]).unlink()
    assert resolve_weights(None, spec=local, progress=False).sha256 == got.sha256
    got.path.write_bytes(payload[:-1] + b"\0")
    with pytest.raises(WeightsError, match="could not download"):
        resolve_weights(None, spec=local, progress=False)
    assert (tmp_path / "cache" / (spec.filename + ".corrupt")).is_file()
    assert not got.path.exists()


@pytest.mark.parametrize("name", NAMES)
def test_offline_error_names_file_hash_and_place(name, tmp_path, monkeypatch, capsys):
    from fidkit.cli import main

    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FIDKIT_OFFLINE", "1")
    monkeypatch.delenv("FIDKIT_WEIGHTS", raising=False)
    images = tmp_path / "imgs"
    images.mkdir()
    from conftest import make_images, write_folder

    write_folder(images, make_images(2, (32, 32), seed=1))
    extractor = get_extractor(name)
    if extractor.options.get("volumetric"):
        pytest.skip("a 3-D extractor takes volumes, not an image folder")
    code = main(["stats", str(images), "-o", str(tmp_path / "out.pkl"), "--features", name])
    err = capsys.readouterr().err
    spec = extractor.weights
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err
    assert spec.urls[0] in err and str(tmp_path / "cache" / spec.filename) in err
    assert (spec.sha256 in err) if spec.sha256 else ("SHA-256 not published" in err)


def test_unpublished_hash_is_pinned_on_first_download(http_folder, tmp_path, monkeypatch, capsys):
    from fidkit.extractors.weights import resolve_weights

    root, base = http_folder
    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FIDKIT_OFFLINE", raising=False)
    spec = get_extractor("dinov2-vit-s-14").weights
    payload = b"dinov2 stand-in" * 1000
    local = _served(spec, root, base, payload, published=False)
    first = resolve_weights(None, spec=local, progress=False)
    assert first.canonical and not first.hash_published
    assert first.describe()["hash_published"] is False
    assert "no SHA-256 is published" in capsys.readouterr().err
    pin = tmp_path / "cache" / (spec.filename + ".sha256")
    assert pin.read_text().strip() == hashlib.sha256(payload).hexdigest()
    assert resolve_weights(None, spec=local, progress=False).sha256 == first.sha256
    # The file changes behind fidkit's back: refused and fetched again from the official URL.
    first.path.write_bytes(b"tampered")
    again = resolve_weights(None, spec=local, progress=False)
    assert again.sha256 == first.sha256 and again.path.read_bytes() == payload


def test_a_users_file_for_an_unpublished_hash_is_not_canonical(tmp_path):
    from fidkit.extractors.weights import resolve_weights

    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"whatever")
    got = resolve_weights(mine, spec=get_extractor("dinov2-vit-s-14").weights, progress=False)
    assert not got.canonical and not got.hash_published
