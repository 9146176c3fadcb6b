"""Fuzzing the three readers of untrusted files: stats files, images and DICOM.

Hypothesis mutates valid files (byte flips, interesting values, cuts, insertions, deletions) and
also draws plain random bytes. A reader may accept the input or raise a
:class:`fidkit.errors.FidkitError`; any other exception is a failure (the CLI would print an
"internal error"), and so is a result of the wrong type, shape or dtype, or a payload that runs.

The default run is bounded to stay well under a minute on a shared 2-core machine. For a long run
set ``FIDKIT_FUZZ_EXAMPLES`` (examples per target, default 60)::

    FIDKIT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fidkit.errors import FidkitError

EXAMPLES = int(os.environ.get("FIDKIT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """A seed file (by name) with up to 8 random edits."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("flip", "set", "cut", "insert", "delete")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from(_INTERESTING) | st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
    return name, bytes(data)


def _inputs(seeds: dict[str, bytes]):
    # a mutated seed most of the time, plain noise (under a seed's name, so its suffix) sometimes
    noise = st.tuples(st.sampled_from(sorted(seeds)), st.binary(max_size=600))
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), noise)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="fidkit-fuzz-") as folder:
        yield Path(folder)


# --------------------------------------------------------------------------- stats files


def _stats_seeds() -> dict[str, bytes]:
    from fidkit.statistics import Statistics
    from fidkit.statistics.statsio import save_statistics

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6))
    stats = Statistics(x.mean(0), np.cov(x, rowvar=False), 20,
                       {"convention": "tf1", "weights": {"sha256": "0" * 64, "canonical": False}})
    seeds = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("fidkit.pkl", "fidkit.npz"):
            save_statistics(stats, Path(folder) / name)
            seeds[name] = (Path(folder) / name).read_bytes()
        buf = io.BytesIO()
        np.savez(buf, mu=stats.mu, sigma=stats.sigma)  # pytorch-fid / TTUR layout
        seeds["cifar10_legacy_tensorflow_train_32.npz"] = buf.getvalue()
        # an old protocol-2 pickle, as numpy 1.x and Python 2 era tools wrote
        seeds["old.pkl"] = pickle.dumps({"mu": stats.mu.astype(np.float32), "sigma": stats.sigma}, protocol=2)
        import torch  # torch-fidelity's cached statistics: a torch zip read with weights_only=True

        pt = Path(folder) / "cifar10-train-inception-v3-compat-stat-fid-2048.pt"
        torch.save({"mu": stats.mu, "sigma": stats.sigma}, pt)
        seeds[pt.name] = pt.read_bytes()
    return seeds


STATS_SEEDS = _stats_seeds()


# The first fuzzing find, kept as a fixed example: a mutated fidkit pickle (a BINUNICODE8 whose
# length is ~7.5e18, after an array was built) made numpy 2.4 raise SystemError and print a
# traceback from a destructor. zlib + base64 of the exact bytes.
_SYSTEM_ERROR_PICKLE = (
    "eNprYJn6jYkBDGqnaPSwpeUX5SaWTOkRTMtMyc4s0S0uSSzJLC7JTC6e0sMHkYwvSy0qzszPm+LN2MOUWzqlRyyvNLeg"
    "Ui8+Ob8oVS+3NKckM7GoKLFySg9PfFFqcn5ecUlRaXLJlMlTeljBKqf0sOelQJRMnuLN0DrFmTFpSvuUoCka3ozebK1T"
    "Mjh6WFNKKgtSQVqY0iymdHZAZJl7GG2m+Pn5ef0HAjDhzVgyJanT2UB5Qtwn2Xn9+6UWODArP7toz8XzYs5K1TP208R1"
    "AnmPX96/rySmct3rU/uPJ21c773jgf0UoLZe1uLM9NzEKRnsGVwgV2TwwN3gzdY2JUOk00mBkYFBsXtqxJ5f3+ynzVH+"
    "OuXPBftz1pvur6+7YP+z4u70Kcce7U/7UjtdzO6C/eLvva3f1pyHq5uRYDdLKuaVvcKjWnvl8Av7pVvXPYkL37g/pfe2"
    "ENuDyv2qScerJi7bsh9mHkxdQWH6Gq4TL+2PRcsYTFx/0P5o2za9/qX9+xMerY+N6DsAtxdmHkydTYULb92pj/ZMMf99"
    "oucf3d95ZYHr9msH7GHug9kLMw+m7ugXydUyfnftt008vuHYrmNwf8DcB7MXZh5MnTuP5jUB+cfgoOxhBKYGkR6W3NSS"
    "xCmgdMQFjPay1LwSUDLpYS5JMwTGeXlqZnpGSTFYnq04I9HI1GxKj4MBhWBKD2dyYl5+XmZyYs6UztIMxgymDGZgyuSD"
    "JGB4Yu1hNdAz1DOYkqEAcmhKZm7xFG+20lI9AMCiT5I="
)


def _bad_length_pickle() -> tuple[str, bytes]:
    import base64
    import zlib

    return "fidkit.pkl", zlib.decompress(base64.b64decode("".join(_SYSTEM_ERROR_PICKLE)))


# A traceback printed from a destructor reaches the user's terminal: fail on it too.
_NO_UNRAISABLE = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@_NO_UNRAISABLE
@FUZZ
@given(case=_inputs(STATS_SEEDS))
@example(case=_bad_length_pickle())
def test_fuzz_stats_loader(scratch, case):
    from fidkit.statistics import Statistics
    from fidkit.statistics.statsio import load_statistics

    name, data = case
    path = scratch / name
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stats = load_statistics(path)
        except FidkitError as exc:
            assert "\n" not in str(exc)
            return
    assert isinstance(stats, Statistics)
    d = stats.mu.shape[0]
    assert stats.mu.dtype == np.float64 and stats.sigma.shape == (d, d)
    assert np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()


# --------------------------------------------------------------------------- images


def _image_seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    seeds = {}
    for name, img, fmt, kw in (
        ("a.png", rgb, "PNG", {}),
        ("a.jpg", rgb, "JPEG", {"quality": 80}),
        ("a.gif", rgb.convert("P"), "GIF", {}),
        ("a.bmp", rgb, "BMP", {}),
        ("a.tif", rgb, "TIFF", {}),
        ("cmyk.tif", rgb.convert("CMYK"), "TIFF", {}),
        ("a.webp", rgb, "WEBP", {"lossless": True}),
        ("a.ppm", rgb, "PPM", {}),
        ("la.png", rgb.convert("LA"), "PNG", {}),
        ("p.png", rgb.convert("P"), "PNG", {}),
        ("g16.png", Image.fromarray(rng.integers(0, 65536, (9, 7)).astype(np.uint16)), "PNG", {}),
    ):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        seeds[name] = buf.getvalue()
    seeds["rgb16.png"] = _rgb16_png(rng.integers(0, 65536, (5, 6, 3)).astype(np.uint16))
    return seeds


def _rgb16_png(values: np.ndarray) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = values.shape
    rows = b"".join(b"\0" + values[r].reshape(-1).astype(">u2").tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


IMAGE_SEEDS = _image_seeds()


@_NO_UNRAISABLE
@FUZZ
@given(case=_inputs(IMAGE_SEEDS))
def test_fuzz_image_reader(scratch, case):
    from fidkit.sources.images import decode_image

    name, data = case
    path = scratch / name
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = decode_image(path)
        except FidkitError as exc:
            assert "\n" not in str(exc) and name in str(exc)
            return
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0


# --------------------------------------------------------------------------- DICOM


def _dicom_seeds() -> dict[str, bytes]:
    from dicom_synth import ramp, write_enhanced, write_slice

    seeds = {}
    with tempfile.TemporaryDirectory() as folder:
        path = write_slice(Path(folder) / "s.dcm", ramp(0.0, 6, 6), ipp=(0, 0, 0),
                           WindowCenter="40", WindowWidth="400")
        seeds["slice.dcm"] = path.read_bytes()
        path = write_enhanced(Path(folder) / "e.dcm", [0.0, 1.0, 2.0], rows=4, cols=4)
        seeds["enhanced.dcm"] = path.read_bytes()
    # compressed pixel data goes through native decoders (RLE, JPEG, JPEG-LS): pydicom's own files
    from pydicom.data import get_testdata_file

    for name in ("SC_rgb_rle.dcm", "SC_rgb_small_odd_jpeg.dcm", "JPEGLSNearLossless_16.dcm"):
        seeds[name] = Path(get_testdata_file(name)).read_bytes()
    return seeds


DICOM_SEEDS = _dicom_seeds()


@_NO_UNRAISABLE
@FUZZ
@given(case=_inputs(DICOM_SEEDS), companion=st.booleans())
def test_fuzz_dicom_reader(scratch, case, companion):
    from fidkit.dicom.reader import read_series
    from fidkit.dicom.source import DicomOptions, DicomSource

    name, data = case
    folder = scratch / "dicom"
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    if companion:
        # an intact neighbour slice of the same series: the damaged one must not spoil it
        from dicom_synth import ramp, write_slice

        write_slice(folder / "z_neighbour.dcm", ramp(1.0, 6, 6), ipp=(0, 0, 1.0),
                    WindowCenter="40", WindowWidth="400")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = read_series(folder)
            source = DicomSource(folder, DicomOptions(window=(-160.0, 240.0)))
            for i in range(len(source)):
                img = source.load(i)
                assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        except FidkitError as exc:
            assert "\n" not in str(exc)
            return
    assert len(found) >= 1
