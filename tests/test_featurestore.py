"""Features files: bit-exact round trips, memory mapping, atomic writes, and refusal of truncated,
padded, hostile or non-regular files.

Hostile files are built from the layout the module documents (a 64-byte little-endian preamble,
float32 rows, a JSON block), with ``struct`` here, not with fidkit's writer internals.
"""
from __future__ import annotations

import gc
import json
import mmap
import os
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from fidkit.errors import InputError, StatsFileError, UsageError
from fidkit.statistics.featurestore import (
    FeatureWriter,
    StoredFeatures,
    features_path,
    open_features,
    write_features,
)

PREAMBLE = struct.Struct("<8sIIQQQQQQ")
META = {"format": "fidkit-statistics", "convention": "tf1", "weights": {"sha256": "0" * 64},
        "network": "fid-inception-v3 (TF 2015-12-05)", "source": {"kind": "folder", "files": 37}}


def _rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _write(path: Path, x: np.ndarray, meta=META) -> Path:
    with FeatureWriter(path, x.shape[1], meta) as writer:
        for start in range(0, len(x), 7):  # uneven batches
            writer.append(x[start:start + 7])
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _build(path: Path, rows: np.ndarray, header: dict | bytes, *, version: int = 1, n=None, dims=None,
           data_offset: int = 64, meta_offset=None, meta_length=None, magic: bytes = b"FIDKFEAT",
           tail: bytes = b"") -> Path:
    """A features file from its documented layout, every field overridable."""
    data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = rows.shape[0] if n is None else n
    dims = rows.shape[1] if dims is None else dims
    meta_offset = 64 + len(data) if meta_offset is None else meta_offset
    meta_length = len(text) if meta_length is None else meta_length
    pre = PREAMBLE.pack(magic, version, 0, n, dims, data_offset, meta_offset, meta_length, 0)
    path.write_bytes(pre + data + text + tail)
    return path


def _header(rows: np.ndarray, **over) -> dict:
    head = {"format": "fidkit-features", "format_version": 1, "n": rows.shape[0], "dims": rows.shape[1],
            "dtype": "<f4", "meta": dict(META)}
    head.update(over)
    return head


def _refused(path: Path, match: str = "") -> str:
    with pytest.raises(StatsFileError, match=match) as info:
        open_features(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# ------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_exact_and_keeps_meta(tmp_path):
    x = _rows(101, 13)
    x[0, :4] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    stored = open_features(_write(tmp_path / "a.features", x), check_finite=True)
    assert stored.n == 101 and stored.dims == 13
    assert stored.features.dtype == np.dtype("<f4")
    assert np.asarray(stored.features).tobytes() == x.tobytes()
    assert stored.meta == {**META, "n": 101, "dims": 13}


def test_rows_are_memory_mapped_read_only(tmp_path):
    x = _rows(50, 8)
    stored = open_features(_write(tmp_path / "a.features", x))
    assert isinstance(stored.features, np.memmap)
    assert isinstance(stored.features.base, mmap.mmap)  # a map of the file, not a copy in RAM
    assert not stored.features.flags.writeable
    with pytest.raises(ValueError):
        stored.features[0, 0] = 1.0
    # the map reads the file: rows live at offset 64, C order
    raw = np.frombuffer((tmp_path / "a.features").read_bytes()[64:64 + x.nbytes], dtype="<f4")
    assert np.array_equal(raw.reshape(x.shape), stored.features)


def test_batches_from_torch_float64_and_single_rows(tmp_path):
    import torch

    x64 = np.random.default_rng(1).normal(size=(9, 5))
    with FeatureWriter(tmp_path / "b.features", 5) as writer:
        writer.append(torch.from_numpy(x64[:4]))
        writer.append(x64[4])  # one row, 1-D
        writer.append(x64[5:])
    stored = open_features(tmp_path / "b.features")
    assert np.array_equal(stored.features, x64.astype(np.float32))
    assert stored.meta == {"n": 9, "dims": 5}


def test_write_features_and_zero_rows(tmp_path):
    x = _rows(3000, 4)  # more than one internal chunk
    write_features(tmp_path / "w.features", np.lib.format.open_memmap(
        tmp_path / "src.npy", mode="w+", dtype=np.float32, shape=x.shape))
    assert open_features(tmp_path / "w.features").n == 3000
    with FeatureWriter(tmp_path / "empty.features", 4, META):
        pass
    empty = open_features(tmp_path / "empty.features")
    assert empty.n == 0 and empty.dims == 4 and empty.features.shape == (0, 4)


def test_features_path_beside_stats_file():
    assert features_path("runs/ref.pkl") == Path("runs/ref.features")
    assert features_path("ref.npz") == Path("ref.features")
    assert features_path("cifar.train.pkl") == Path("cifar.train.features")
    assert features_path("ref") == Path("ref.features")


# ------------------------------------------------------------------------- atomic writes

def test_exception_mid_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureWriter(tmp_path / "a.features", 6, META) as writer:
            writer.append(_rows(10, 6))
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    path = _write(tmp_path / "a.features", _rows(10, 6))
    before = path.read_bytes()
    with pytest.raises(InputError, match="NaN"):
        with FeatureWriter(path, 6, META) as writer:
            writer.append(_rows(5, 6))
            writer.append(np.full((2, 6), np.nan, dtype=np.float32))
    assert path.read_bytes() == before and _leftovers(tmp_path) == ["a.features"]


def test_abort_and_dropped_writer_leave_nothing(tmp_path):
    writer = FeatureWriter(tmp_path / "a.features", 3)
    writer.append(_rows(4, 3))
    writer.abort()
    writer.abort()
    dropped = FeatureWriter(tmp_path / "b.features", 3)
    dropped.append(_rows(4, 3))
    del dropped
    gc.collect()
    assert _leftovers(tmp_path) == []


def test_writer_refusals(tmp_path):
    _write(tmp_path / "a.features", _rows(4, 3))
    with pytest.raises(InputError, match="exists"):
        FeatureWriter(tmp_path / "a.features", 3, overwrite=False)
    with pytest.raises(UsageError, match="dims"):
        FeatureWriter(tmp_path / "b.features", 0)
    with pytest.raises(StatsFileError, match="plain"):
        FeatureWriter(tmp_path / "b.features", 3, {"bad": object()})
    with FeatureWriter(tmp_path / "c.features", 3) as writer:
        with pytest.raises(UsageError, match=r"expected \(b, 3\)"):
            writer.append(_rows(2, 4))
    with pytest.raises(InputError, match="folder"):
        FeatureWriter(tmp_path / "missing" / "x.features", 3)
    assert _leftovers(tmp_path) == ["a.features", "c.features"]


# ------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("keep", [0, 7, 63, 64, 64 + 40, 64 + 10 * 4 * 4, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    path = _write(tmp_path / "a.features", _rows(10, 4))
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    _refused(path, "truncated|not a fidkit features")


def test_padded_file_is_refused(tmp_path):
    path = _write(tmp_path / "a.features", _rows(10, 4))
    with open(path, "ab") as handle:
        handle.write(b"\0" * 16)
    _refused(path, "longer than its header says")


@pytest.mark.parametrize("field, value, match", [
    ("dims", 0, "dims"),
    ("dims", 1 << 40, "dims"),
    ("n", 1 << 50, "header is inconsistent|truncated"),
    ("data_offset", 0, "damaged header"),
    ("meta_length", 1 << 40, "bytes of meta"),
    ("meta_offset", 12, "inconsistent"),
    ("version", 99, "newer than this fidkit"),
    ("magic", b"FIDKFEAX", "not a fidkit features file"),
])
def test_hostile_preamble_is_refused(tmp_path, field, value, match):
    x = _rows(10, 4)
    _refused(_build(tmp_path / "h.features", x, _header(x), **{field: value}), match)


@pytest.mark.parametrize("header, match", [
    (b"{not json", "not valid JSON"),
    (b'{"format": NaN}', "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON|does not say"),
    (b'{"format": "fidkit-features", "format": "x"}', "duplicate"),
    (b"[1, 2]", "does not say"),
])
def test_hostile_json_is_refused(tmp_path, header, match):
    _refused(_build(tmp_path / "j.features", _rows(3, 2), header), match)


@pytest.mark.parametrize("over, match", [
    ({"format": "fidkit-statistics"}, "does not say"),
    ({"format_version": 7}, "format version"),
    ({"dtype": "<f8"}, "dtype"),
    ({"dtype": "|O"}, "dtype"),
    ({"n": 4}, "inconsistent"),
    ({"dims": 3}, "inconsistent"),
    ({"meta": ["a"]}, "not a JSON object"),
])
def test_inconsistent_meta_is_refused(tmp_path, over, match):
    x = _rows(3, 2)
    _refused(_build(tmp_path / "m.features", x, _header(x, **over)), match)


def test_other_files_are_refused(tmp_path):
    stats = tmp_path / "ref.pkl"
    stats.write_bytes(pickle.dumps({"mu": 1}, protocol=4))
    assert "stats file" in _refused(stats, "not a fidkit features file")
    npy = tmp_path / "x.npy"
    np.save(npy, _rows(3, 2))
    _refused(npy, "not a fidkit features file")
    _refused(tmp_path / "nothing.features", "no such features file")
    _refused(tmp_path, "folder")


def test_symlinks_to_special_files_are_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "pipe.features"
    link.symlink_to(fifo)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_catch(link)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "opening a FIFO must not block"
    assert "not a regular file" in result[0]
    zero = tmp_path / "zero.features"
    zero.symlink_to("/dev/zero")
    _refused(zero, "not a regular file")
    folder_link = tmp_path / "dir.features"
    folder_link.symlink_to(tmp_path)
    _refused(folder_link, "folder")
    # a symlink to a genuine features file is fine: users link datasets around
    real = _write(tmp_path / "real.features", _rows(4, 3))
    good = tmp_path / "good.features"
    good.symlink_to(real)
    assert open_features(good).n == 4


def _catch(path: Path) -> str:
    try:
        open_features(path)
    except StatsFileError as exc:
        return str(exc)
    return "opened"


def test_nan_refused_on_request(tmp_path):
    x = _rows(5000, 3)
    path = _write(tmp_path / "a.features", x)
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 64 + (4321 * 3 + 2) * 4, float("inf"))
    path.write_bytes(bytes(data))
    assert open_features(path).n == 5000  # not scanned unless asked
    with pytest.raises(StatsFileError, match="row 4321 of 5000 holds NaN or inf"):
        open_features(path, check_finite=True)


def test_stored_features_type():
    assert StoredFeatures.__dataclass_params__.frozen
