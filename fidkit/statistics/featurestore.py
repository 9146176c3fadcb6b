"""Per-image features kept on disk, for the sample-based metrics (precision/recall, density/coverage,
CMMD) that need every feature vector, not only their mean and covariance.

One file per feature set, written beside its stats file by :func:`features_path`
(``ref.pkl`` -> ``ref.features``). Layout, all integers little-endian::

    offset 0    b"FIDKFEAT"                      magic, 8 bytes
    offset 8    format version       uint32      (1)
    offset 12   reserved             uint32      (0)
    offset 16   n (rows)             uint64
    offset 24   dims (columns)       uint64
    offset 32   data offset          uint64      (64)
    offset 40   meta offset          uint64      (data offset + n * dims * 4)
    offset 48   meta length          uint64      (bytes of JSON)
    offset 56   reserved             uint64      (0)
    offset 64   features             float32 little-endian, C order, (n, dims)
    meta offset JSON (UTF-8): {"format": "fidkit-features", "format_version": 1, "n", "dims",
                               "dtype": "<f4", "meta": {... the stats file's provenance ...}}

The JSON sits after the rows because ``n`` is known only once the last batch has streamed in:
:class:`FeatureWriter` appends batches straight to a temporary file beside the target (so ``n`` may
exceed RAM), then writes the JSON, fills in the preamble and renames the file into place in one step
(:func:`fidkit.fileio.atomic_writer`). A reader (or a crash) never sees a partial file.

:func:`open_features` never loads the rows: they are a read-only :class:`numpy.memmap` of the data
region. Reading is safe like :mod:`fidkit.statistics.statsio`: no pickle anywhere, the preamble and
the JSON must agree, the file size must be exactly what they imply (so a truncated or padded file is
refused before anything is mapped), the JSON is bounded in size and must be plain data, and only a
regular file is opened (a symlink to a FIFO or a device is refused; the checks and the mapping use
the same open descriptor, so the file cannot be swapped in between). Every refusal is one
:class:`~fidkit.errors.StatsFileError` line naming the file and the fix.
"""
from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fidkit.errors import InputError, StatsFileError, UsageError
from fidkit.fileio import atomic_writer

FORMAT_NAME = "fidkit-features"
FORMAT_VERSION = 1
#: Suffix of a features file; see :func:`features_path`.
SUFFIX = ".features"
#: Rows are stored as this dtype, whatever dtype the batches had (every extractor emits float32).
DTYPE = np.dtype("<f4")

_MAGIC = b"FIDKFEAT"
_PREAMBLE = struct.Struct("<8sIIQQQQQQ")  # magic, version, 0, n, dims, data_off, meta_off, meta_len, 0
_DATA_OFFSET = 64
#: Widest feature vector accepted on load: far above any extractor in use (Inception 2048, VGG fc
#: 4096, CLIP/DINOv2 <= 1536), low enough that one block of rows stays small.
MAX_FEATURE_DIMS = 65_536
#: Largest JSON block accepted on load (provenance is a few KiB).
MAX_META_BYTES = 1 << 20
#: Rows per chunk when scanning a stored file for NaN/inf (16 MiB at 2048 dims).
_SCAN_ROWS = 2048

assert _PREAMBLE.size == _DATA_OFFSET


def features_path(stats_path: str | os.PathLike) -> Path:
    """The features file kept beside a stats file: its suffix replaced by ``.features``
    (``ref.pkl`` -> ``ref.features``, ``ref.npz`` -> ``ref.features``, ``ref`` -> ``ref.features``)."""
    path = Path(stats_path)
    return path.with_suffix(SUFFIX) if path.suffix else path.with_name(path.name + SUFFIX)


@dataclass(frozen=True)
class StoredFeatures:
    """A features file opened for reading.

    ``features`` is a read-only (n, dims) float32 :class:`numpy.memmap` of the file (an empty
    in-memory array when n = 0, which cannot be mapped); slicing it reads only the rows asked for.
    ``meta`` is the provenance dict, as in a stats file, with ``n`` and ``dims`` set from the file.
    """

    path: Path
    features: np.ndarray
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dims(self) -> int:
        return int(self.features.shape[1])

    def check_finite(self) -> None:
        """Scan the rows in chunks (never all at once); raise :class:`StatsFileError` at the first
        NaN or inf, naming its row."""
        for start in range(0, self.n, _SCAN_ROWS):
            chunk = np.asarray(self.features[start:start + _SCAN_ROWS])
            bad = ~np.isfinite(chunk).all(axis=1)
            if bad.any():
                row = start + int(np.argmax(bad))
                raise StatsFileError(f"{self.path}: row {row} of {self.n} holds NaN or inf; "
                                     "recompute the features (check the images and the model in float32)")


class FeatureWriter:
    """Stream (N, dims) feature batches into a features file, atomically.

    ::

        with FeatureWriter("ref.features", dims=2048, meta=meta) as writer:
            for batch in batches:          # (b, 2048), numpy or torch, any float dtype
                writer.append(batch)
        # the file exists, complete, only here; an exception inside the block leaves no file

    Rows go straight to a temporary file beside ``path``; memory use does not grow with N.
    ``meta`` is the provenance dict of the matching stats file (plain JSON-able values); ``n`` and
    ``dims`` in it are set on :meth:`close`. Without the ``with`` block, call :meth:`close` to
    finish (or :meth:`abort` to drop everything).

    Raises:
        UsageError: ``dims`` out of range, or a batch of another shape.
        InputError: the folder is missing, or ``path`` exists and ``overwrite`` is false; a batch
            holds NaN or inf (one bad image would spoil every metric).
        StatsFileError: ``meta`` holds values that are not plain data.
    """

    def __init__(self, path: str | os.PathLike, dims: int, meta: dict[str, Any] | None = None, *,
                 overwrite: bool = True) -> None:
        from fidkit.statistics.statsio import _plain  # JSON-able copy; refuses what is not plain data

        if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= MAX_FEATURE_DIMS:
            raise UsageError(f"features must have 1 to {MAX_FEATURE_DIMS} dims, got {dims!r}")
        self.path = Path(path)
        self.dims = int(dims)
        self.n = 0
        self._meta = _plain(dict(meta or {}))
        self._context = atomic_writer(self.path, overwrite=overwrite)
        self._handle: IO[bytes] | None = self._context.__enter__()
        try:
            self._handle.write(bytes(_DATA_OFFSET))  # the preamble, filled in by close()
        except BaseException as exc:
            self._finish(exc)
            raise

    def append(self, batch: Any) -> None:
        """Add rows: ``batch`` of shape (b, dims) (or (dims,) for one row), numpy or torch, any
        real dtype; stored as little-endian float32."""
        if self._handle is None:
            raise UsageError(f"{self.path}: the features writer is closed; open a new one")
        rows = _as_float32_rows(batch)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.dims:
            raise UsageError(f"features batch has shape {tuple(rows.shape)}, expected (b, {self.dims})")
        if not np.isfinite(rows).all():
            raise InputError(f"a batch of {rows.shape[0]} features holds NaN or inf (after {self.n} good "
                             f"rows) for {self.path}; check the images and the model in float32")
        try:
            self._handle.write(np.ascontiguousarray(rows).data)
        except BaseException as exc:
            self._finish(exc)
            raise
        self.n += int(rows.shape[0])

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the provenance to write (it is complete only once the last batch is in)."""
        from fidkit.statistics.statsio import _plain

        self._meta = _plain(dict(meta))

    def close(self) -> Path:
        """Write the JSON meta and the preamble, then rename the file into place; returns its path.
        Calling it again does nothing."""
        if self._handle is None:
            return self.path
        meta = dict(self._meta)
        meta["n"] = self.n
        meta["dims"] = self.dims
        meta.pop("loaded_from", None)  # describes one reading, not the features
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "n": self.n,
                  "dims": self.dims, "dtype": DTYPE.str, "meta": meta}
        text = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
        meta_offset = _DATA_OFFSET + self.n * self.dims * DTYPE.itemsize
        try:
            if len(text) > MAX_META_BYTES:
                raise StatsFileError(f"{self.path}: meta is {len(text)} bytes of JSON, more than the "
                                     f"{MAX_META_BYTES} a features file may hold; keep meta to provenance")
            self._handle.write(text)
            self._handle.seek(0)
            self._handle.write(_PREAMBLE.pack(_MAGIC, FORMAT_VERSION, 0, self.n, self.dims,
                                              _DATA_OFFSET, meta_offset, len(text), 0))
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is left as it was. Calling it again does nothing."""
        if self._handle is not None:
            self._finish(InputError(f"{self.path}: features writing aborted"))

    def _finish(self, exc: BaseException | None) -> None:
        self._handle = None
        if exc is None:
            self._context.__exit__(None, None, None)
        else:
            # Thrown into atomic_writer, which removes the temporary file and reports it back.
            self._context.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
        elif self._handle is not None:
            self._finish(exc)

    def __del__(self) -> None:  # a writer dropped without close() leaves no temporary file behind
        try:
            self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def write_features(path: str | os.PathLike, features: Any, meta: dict[str, Any] | None = None, *,
                   overwrite: bool = True) -> Path:
    """Write a whole (n, dims) array (numpy, memmap or torch) as a features file, atomically,
    streaming it in chunks; returns the path. See :class:`FeatureWriter`."""
    shape = tuple(features.shape)
    if len(shape) != 2:
        raise UsageError(f"features must be (n, dims), got shape {shape}")
    with FeatureWriter(path, shape[1], meta, overwrite=overwrite) as writer:
        for start in range(0, shape[0], _SCAN_ROWS):
            writer.append(features[start:start + _SCAN_ROWS])
    return Path(path)


def open_features(path: str | os.PathLike, *, check_finite: bool = False) -> StoredFeatures:
    """Open a features file without loading its rows (a read-only memmap; see the module docstring).

    ``check_finite`` scans every row for NaN/inf (in chunks) before returning.

    Raises:
        StatsFileError: missing, not a regular file, not a features file, truncated or padded,
            inconsistent or hostile header, newer format version, NaN/inf (when checked).
    """
    target = Path(path)
    with _open_regular(target) as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(_PREAMBLE.size)
        if head[:len(_MAGIC)] != _MAGIC:
            hint = " (a stats file; give its .features file)" if head[:1] in (b"\x80", b"P") else ""
            raise StatsFileError(f"{target} is not a fidkit features file{hint}; "
                                 "write one with compute_statistics(features_file=...) "
                                 "or fidkit stats --keep-features")
        if len(head) < _PREAMBLE.size:
            raise StatsFileError(f"{target}: truncated ({size} bytes, shorter than the header); "
                                 "recreate the features file")
        _, version, _, n, dims, data_offset, meta_offset, meta_length, _ = _PREAMBLE.unpack(head)
        if version > FORMAT_VERSION:
            raise StatsFileError(f"{target}: features format version {version} is newer than this "
                                 f"fidkit reads ({FORMAT_VERSION}); upgrade fidkit")
        if version < 1 or data_offset != _DATA_OFFSET:
            raise StatsFileError(f"{target}: damaged header (version {version}, data offset "
                                 f"{data_offset}); recreate the features file")
        if not 1 <= dims <= MAX_FEATURE_DIMS:
            raise StatsFileError(f"{target}: header says {dims} dims; features files hold 1 to "
                                 f"{MAX_FEATURE_DIMS}; the file is damaged or not fidkit's")
        if meta_length > MAX_META_BYTES:
            raise StatsFileError(f"{target}: header says {meta_length} bytes of meta, more than "
                                 f"{MAX_META_BYTES}; the file is damaged or not fidkit's")
        expected_meta = data_offset + n * dims * DTYPE.itemsize
        if meta_offset != expected_meta:
            raise StatsFileError(f"{target}: header is inconsistent ({n} x {dims} rows end at "
                                 f"{expected_meta}, meta said to start at {meta_offset}); "
                                 "recreate the features file")
        expected_size = expected_meta + meta_length
        if size != expected_size:
            what = "truncated" if size < expected_size else "longer than its header says"
            raise StatsFileError(f"{target}: {what} ({size} bytes, expected {expected_size} for "
                                 f"{n} x {dims} float32 rows); recreate the features file")
        handle.seek(meta_offset)
        meta = _parse_header(handle.read(meta_length), target, n, dims)
        if n == 0:
            rows: np.ndarray = np.zeros((0, dims), dtype=DTYPE)
            rows.flags.writeable = False
        else:
            # Mapped through the descriptor already checked: the same inode, whatever the path
            # points to now. The map keeps its own reference after the handle closes.
            rows = np.memmap(handle, dtype=DTYPE, mode="r", offset=data_offset, shape=(n, dims), order="C")
    stored = StoredFeatures(target, rows, meta)
    if check_finite:
        stored.check_finite()
    return stored


def _open_regular(path: Path) -> IO[bytes]:
    # O_NONBLOCK: a FIFO planted under the name must not hang open(); fstat then refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise StatsFileError(f"{path}: no such features file; check the path (write one with "
                             "compute_statistics(features_file=...) or --keep-features)") from None
    except IsADirectoryError:
        raise StatsFileError(f"{path} is a folder, not a features file") from None
    except OSError as exc:
        raise StatsFileError(f"{path}: cannot read ({exc.strerror}); check its permissions") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise StatsFileError(f"{path} is {kind}; give a features file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_header(raw: bytes, path: Path, n: int, dims: int) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant,
                            object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise StatsFileError(f"{path}: meta is not valid JSON ({detail}); recreate the features file") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise StatsFileError(f"{path}: meta does not say {FORMAT_NAME!r}; the file is damaged or not fidkit's")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise StatsFileError(f"{path}: meta has format version {version!r}; this fidkit reads "
                             f"{FORMAT_VERSION} (upgrade fidkit if the file is newer)")
    if header.get("dtype") != DTYPE.str:
        raise StatsFileError(f"{path}: meta says dtype {header.get('dtype')!r}; features files hold "
                             f"{DTYPE.str}; the file is damaged or not fidkit's")
    if header.get("n") != n or header.get("dims") != dims:
        raise StatsFileError(f"{path}: header says {n} x {dims} but meta says {header.get('n')} x "
                             f"{header.get('dims')}; the file is inconsistent, recreate it")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise StatsFileError(f"{path}: 'meta' is not a JSON object; recreate the features file")
    meta["n"] = n
    meta["dims"] = dims
    return meta


def _as_float32_rows(batch: Any) -> np.ndarray:
    if hasattr(batch, "detach"):  # a torch tensor, on any device
        batch = batch.detach().cpu().numpy()
    array = np.asarray(batch)
    if array.dtype.kind not in "fiu":
        raise UsageError(f"features batch has dtype {array.dtype}; features are real numbers")
    return array.astype(DTYPE, copy=False)

