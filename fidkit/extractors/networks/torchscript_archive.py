"""Reading the tensors of a TorchScript archive without running anything from it.

Some weights are published only as TorchScript archives (``torch.jit.save``): OpenAI's CLIP
checkpoints, for one. ``torch.load(weights_only=True)`` refuses them ("Cannot use
weights_only=True with TorchScript archives"), and ``torch.jit.load`` compiles the archive's code
and may run its ``__setstate__`` methods, which a weights file must never be able to do.

The archive is a zip: ``<name>/data.pkl`` pickles the module tree (each module an object of a
``__torch__.*`` class whose state is a dict of attributes; tensors are rebuilt by
``torch._utils._rebuild_tensor_v2`` from storages named by persistent id), ``<name>/data/<key>``
hold the raw storages, and ``<name>/code/`` the TorchScript source, which this reader never reads.

:func:`read_torchscript_tensors` unpickles ``data.pkl`` with an unpickler whose only importable
names are: the tensor rebuild functions (mapped to this module's own, which view checked storage
bytes), the ``torch.*Storage`` dtype markers, ``collections.OrderedDict``, TorchScript's container
type tags (identity functions), and ``__torch__.*`` classes, all of which become one inert
placeholder that only stores its state dict. Anything else (``os.system``, ``builtins.eval``, ...)
is refused before it is called. Storage members must be stored uncompressed (as torch writes
them) and have exactly the size the pickle claims; tensor views are bounds-checked by torch.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import torch

#: ``torch.<name>Storage`` -> dtype, for the storage classes a pickle may name.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

_MAX_DEPTH = 64


class ArchiveError(ValueError):
    """The file is not a TorchScript archive this reader accepts (one-line reason)."""


class _ScriptObject:
    """Stand-in for every ``__torch__.*`` object: keeps the state dict, has no behaviour."""

    __slots__ = ("state",)

    def __new__(cls, *args: Any) -> "_ScriptObject":  # NEWOBJ passes the pickled args
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


class _StorageType:
    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    # as_strided checks the view against the storage's extent (RuntimeError if out of bounds).
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without a storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _type_tag(value: Any, *_: Any) -> Any:
    return value


def _as_list(value: Any) -> list:
    return list(value)


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _type_tag,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise pickle.UnpicklingError("refused persistent id (not a tensor storage)")
        _, kind, key, _location, numel = pid
        if key in self._storages:
            return self._storages[key]
        member = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED:
            raise pickle.UnpicklingError(f"storage {key} is compressed (torch never writes that)")
        if info.file_size != numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key} holds {info.file_size} bytes, the pickle "
                                         f"says {numel} x {itemsize}")
        raw = bytearray(self._archive.read(member))
        tensor = torch.frombuffer(raw, dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
        self._storages[key] = tensor
        return tensor


def is_torchscript_archive(path: Any) -> bool:
    """Whether ``path`` is a zip with a TorchScript ``constants.pkl`` or ``code/`` folder (what
    ``torch.jit.save`` writes and ``torch.save`` does not)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def read_torchscript_tensors(path: Any) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the module tree in the TorchScript archive at ``path``, by its
    dotted name (``visual.conv1.weight``, ...), on the CPU, in the file's dtype.

    That is the module's ``state_dict()`` (parameters and buffers) plus any plain tensor
    attributes; no code from the archive is compiled or run. Raises :class:`ArchiveError` with a
    one-line reason when the file is not such an archive or holds anything else."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"not a zip archive ({exc})") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ArchiveError("no <name>/data.pkl record, so not a TorchScript archive")
        prefix = pickles[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and archive.read(order).strip() not in (b"little",):
            raise ArchiveError("big-endian archive; fidkit reads little-endian files only")
        data = archive.read(pickles[0])
        try:
            for _ in pickletools.genops(data):  # parses only: refuse a damaged stream up front
                pass
            root = _Unpickler(data, archive, prefix).load()
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a clean archive"
            detail = " ".join(str(exc).split())[:160]
            raise ArchiveError(f"data.pkl refused: {detail}") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors, 0, set())
    if not tensors:
        raise ArchiveError("the archive holds no tensors")
    return tensors


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int, seen: set[int]) -> None:
    # Each module object is walked once, under the first name it is reached by: a pickle can
    # reference one object from many places (a cycle, or a chain of shared nodes whose paths
    # double at every level), which must not make the walk loop or explode.
    if depth > _MAX_DEPTH:
        raise ArchiveError(f"module tree deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, torch.Tensor):
        out.setdefault(prefix.rstrip("."), obj)
        return
    if isinstance(obj, _ScriptObject) and id(obj) not in seen:
        seen.add(id(obj))
        for name, value in obj.state.items():
            if isinstance(name, str):
                _collect(value, f"{prefix}{name}.", out, depth + 1, seen)
