"""Reading and writing statistics files, safely.

Formats fidkit writes (chosen by the suffix of the output name):

* ``.npz``: ``mu`` (d,) and ``sigma`` (d, d) float64, plus ``meta``, the provenance as a JSON
  string stored as a 0-d numpy unicode array. No object arrays, so ``np.load(path)`` reads it
  without ``allow_pickle`` and pytorch-fid (``python -m pytorch_fid a.npz b``) accepts it.
* anything else (``.pkl`` by convention): a pickle (protocol 4) of plain builtins and numpy arrays::

      {"format": "fidkit-statistics", "format_version": 1,
       "mu": ndarray, "sigma": ndarray, "n": int, "meta": {...}}

Formats fidkit reads (recognised by content, never by suffix alone):

* fidkit ``.pkl`` and ``.npz`` (above), with full provenance;
* pytorch-fid / TTUR ``.npz`` (``mu``, ``sigma`` only): provenance unknown;
* clean-fid reference ``.npz`` (``{name}_{mode}[_{model}]_{split}_{res}.npz``): the mode, split
  and resolution are parsed from the file name into provenance;
* torch-fidelity cached statistics (``{input}-{extractor}-stat-fid-{layer}.pt``, a torch zip of
  ``{"mu": ndarray, "sigma": ndarray}``), loaded with ``torch.load(weights_only=True)``.

A stats file can never run code: pickles go through :class:`RestrictedUnpickler`, which admits
only the few numpy callables that rebuild numeric arrays and dtypes; ``.npz`` members are read
with ``allow_pickle=False``; object arrays are refused everywhere.

When a file says nothing (or only part) of how it was made, :func:`load_statistics` warns with
:class:`ProvenanceWarning` and records ``meta["provenance"] = "unknown"`` (or ``"partial"``);
fidkit's own files carry ``"fidkit"``. ``n`` is 0 when the file does not record it. What a peer's
file name suggests goes under ``meta["convention_guess"]`` and ``meta["weights_guess"]``, never
``convention``/``weights``: a guess must not pass the comparability check as a record.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fidkit import __version__
from fidkit.defaults import FID_WEIGHTS
from fidkit.errors import StatsFileError
from fidkit.fileio import atomic_writer
from fidkit.statistics import Statistics

FORMAT_NAME = "fidkit-statistics"
FORMAT_VERSION = 1

#: Largest feature dimension accepted on load: a hostile header (or a small compressed .npz
#: member that inflates) cannot make fidkit allocate more than a (8192, 8192) float64 matrix
#: (512 MiB) before the data is checked. Every FID feature extractor in use is far below this
#: (Inception pool_3 2048, DINOv2 up to 1536, VGG fc 4096).
MAX_DIMS = 8_192

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"

#: clean-fid's modes and the fidkit convention each one corresponds to.
CLEANFID_MODES: dict[str, str] = {
    "clean": "clean",
    "legacy_tensorflow": "tf1",
    "legacy_pytorch": "pytorch-fid",
}
_CLEANFID_NAME = re.compile(
    r"^(?P<name>.+?)_(?P<mode>clean|legacy_tensorflow|legacy_pytorch)"
    r"(?:_(?P<model>clip_vit_b_32))?_(?P<split>[^_]+)_(?P<res>\d+|na)(?P<kid>_kid)?\.npz$"
)
#: torch-fidelity's cache names: f"{input}-{feature_extractor}-stat-fid-{layer}.pt".
_FIDELITY_NAME = re.compile(r"^(?P<input>.+)-(?P<extractor>[^-].*?)-stat-fid-(?P<layer>[^-]+)\.pth?$")
#: torch-fidelity feature extractors that are the TF 2015-12-05 Inception with TF1 resizing.
_FIDELITY_TF1_EXTRACTORS = ("inception-v3-compat",)


class ProvenanceWarning(UserWarning):
    """A stats file loaded, but it does not say (fully) how it was made."""


# --------------------------------------------------------------------------- restricted pickle

def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise StatsFileError("object dtype")
    return dtype


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles carry array bytes as latin-1 text; no other codec is needed, and some
    # (zlib, bz2) would let a small file expand without bound.
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise StatsFileError(f"codec {encoding!r}")
    return obj.encode("latin-1", errors)


def _numpy_callables() -> dict[tuple[str, str], Callable[..., Any]]:
    from numpy._core import multiarray, numeric

    reconstruct = multiarray._reconstruct
    scalar = multiarray.scalar
    table: dict[tuple[str, str], Callable[..., Any]] = {}
    # numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*; both name the same functions.
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = _safe_dtype
    table[("_codecs", "encode")] = _safe_codecs_encode
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose only importable names rebuild numeric numpy arrays.

    Admitted: ``numpy.ndarray``, ``numpy.dtype`` (non-object), ``_reconstruct``, ``scalar``,
    ``_frombuffer`` (under both ``numpy.core`` and ``numpy._core``), ``_codecs.encode`` (latin-1
    only) and ``collections.OrderedDict``. Everything else (``os.system``, ``builtins.eval``,
    ``subprocess.Popen``, ...) raises :class:`pickle.UnpicklingError` before it is called.
    """

    _table: dict[tuple[str, str], Callable[..., Any]] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._table is None:
            import collections

            table = _numpy_callables()
            table[("collections", "OrderedDict")] = collections.OrderedDict
            RestrictedUnpickler._table = table
        found = RestrictedUnpickler._table.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _restricted_loads(data: bytes) -> Any:
    # Walk the opcodes first (pickletools executes nothing): a damaged stream is refused before
    # any array exists. Unpickled half-way, numpy 2.4 can fail while freeing a half-built array,
    # raising SystemError and printing a traceback from the destructor (found by fuzzing).
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged stream
        detail = " ".join(str(exc).split())[:120]
        raise pickle.UnpicklingError(f"damaged stream: {detail}") from None
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _refuse_objects(value: Any, where: str, path: Path, depth: int = 0) -> None:
    """Walk a loaded structure; refuse object arrays and anything not plain data."""
    if depth > 32:
        raise StatsFileError(f"{path}: nesting deeper than 32 levels; not a stats file")
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise StatsFileError(f"{path}: {where} is an object array, which fidkit refuses to load; "
                                 "re-save it with numeric arrays")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise StatsFileError(f"{path}: {where} has a key of type {type(key).__name__}")
            _refuse_objects(item, f"{where}[{key!r}]", path, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_objects(item, f"{where}[{i}]", path, depth + 1)
        return
    if value is None or isinstance(value, (str, bytes, bool, int, float, np.generic)):
        return
    raise StatsFileError(f"{path}: {where} is a {type(value).__name__}; not a stats file")


# --------------------------------------------------------------------------- saving

def _plain(value: Any) -> Any:
    """``meta`` as JSON-able builtins (numpy scalars and paths become numbers and strings)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray) and obj.size <= 64:
            return obj.tolist()
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        raise TypeError(type(obj).__name__)

    try:
        return json.loads(json.dumps(value, default=default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StatsFileError(f"statistics meta cannot be saved: {exc}; keep meta to plain values") from None


def save_statistics(stats: Statistics, path: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Write ``stats`` to ``path`` atomically (temporary file, then rename).

    ``.npz`` (case-insensitive) gives a pytorch-fid readable archive (``mu``, ``sigma`` float64 and
    ``meta`` as a JSON string); any other suffix gives fidkit's pickle of plain builtins and numpy
    arrays. Raises :class:`~fidkit.errors.InputError` when the folder is missing or ``path``
    exists and ``overwrite`` is false; :class:`~fidkit.errors.StatsFileError` when ``meta`` holds
    values that are not plain data.
    """
    target = Path(path)
    mu = np.ascontiguousarray(stats.mu, dtype=np.float64)
    sigma = np.ascontiguousarray(stats.sigma, dtype=np.float64)
    meta = _plain(dict(stats.meta))
    meta.setdefault("format", FORMAT_NAME)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("fidkit_version", __version__)
    meta["n"] = int(stats.n)
    meta["dims"] = int(mu.shape[0])
    meta.pop("loaded_from", None)  # describes one reading, not the statistics
    if meta.get("provenance") not in ("unknown", "partial"):
        meta.pop("provenance", None)  # recomputed on load from what the file holds
    if target.suffix.lower() == ".npz":
        text = json.dumps(meta, sort_keys=True, allow_nan=False)

        def write(handle: Any) -> None:
            np.savez(handle, mu=mu, sigma=sigma, meta=np.array(text, dtype=np.str_))
    else:
        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "mu": mu,
            "sigma": sigma,
            "n": int(stats.n),
            "meta": meta,
        }

        def write(handle: Any) -> None:
            pickle.dump(payload, handle, protocol=4)

    with atomic_writer(target, overwrite=overwrite) as handle:
        write(handle)


# --------------------------------------------------------------------------- loading

def detect_format(path: str | os.PathLike) -> str:
    """What a file holds, judged from its bytes: ``"npz"``, ``"torch"`` (a torch zip),
    ``"pickle"``, ``"npy"`` or ``"unknown"``. Raises :class:`StatsFileError` if unreadable."""
    target = Path(path)
    try:
        with open(target, "rb") as handle:
            head = handle.read(8)
    except FileNotFoundError:
        raise StatsFileError(f"{target}: no such stats file; check the path") from None
    except IsADirectoryError:
        raise StatsFileError(f"{target} is a folder, not a stats file") from None
    except OSError as exc:
        raise StatsFileError(f"{target}: cannot read ({exc.strerror}); check its permissions") from None
    if head[:4] in _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(target) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise StatsFileError(f"{target}: truncated or damaged zip archive; recreate the stats file") from None
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch"
        return "npz"
    if head[:6] == _NPY_MAGIC:
        return "npy"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def load_statistics(path: str | os.PathLike, *, check: bool = True) -> Statistics:
    """Read a statistics file in any format fidkit knows (see the module docstring).

    Returns float64 :class:`Statistics` whose ``meta["provenance"]`` is ``"fidkit"``,
    ``"partial"`` or ``"unknown"``; the latter two also emit a :class:`ProvenanceWarning`.
    With ``check`` (the default) the values are validated at O(d^2) cost: finite, ``mu`` (d,)
    and ``sigma`` (d, d) with d > 0, sigma symmetric, its diagonal (the variances) not negative
    and every entry within Cauchy-Schwarz's bound |sigma_ij| <= sqrt(sigma_ii sigma_jj), up to
    rounding. Full positive semi-definiteness needs a factorisation: the Frechet distance does
    one anyway and refuses a sigma that fails it (:func:`fidkit.distances.frechet.frechet`), and
    ``fidkit info`` (:func:`check_statistics`) reports its eigenvalues.

    Raises :class:`~fidkit.errors.StatsFileError` (one line naming the file) for anything that is
    not a readable, plausible stats file: truncated, garbage, hostile pickles, object arrays,
    impossible values.
    """
    target = Path(path)
    kind = detect_format(target)
    if kind == "pickle":
        stats = _load_pickle(target)
    elif kind == "npz":
        stats = _load_npz(target)
    elif kind == "torch":
        stats = _load_torch(target)
    elif kind == "npy":
        raise StatsFileError(f"{target} is a single .npy array, not statistics; "
                             "save mu and sigma together as .npz")
    else:
        raise StatsFileError(f"{target} is not a stats file fidkit knows (.pkl, .npz, torch-fidelity .pt)")
    if check:
        _validate(stats, target)
    if stats.meta.get("provenance") != "fidkit":
        missing = [k for k in ("convention", "weights", "n") if not stats.meta.get(k)]
        warnings.warn(
            f"{target.name}: provenance {stats.meta['provenance']} ({stats.meta['loaded_from']['format']}); "
            f"not recorded: {', '.join(missing) or 'how it was made'}",
            ProvenanceWarning,
            stacklevel=2,
        )
    return stats


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StatsFileError(f"{path}: cannot read ({exc.strerror})") from None


def _load_pickle(path: Path) -> Statistics:
    try:
        payload = _restricted_loads(_read_bytes(path))
    except StatsFileError as exc:
        raise StatsFileError(f"{path}: refused ({exc}); a stats file holds only numeric arrays") from None
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if msg.startswith("refused"):
            raise StatsFileError(f"{path}: {msg}; this is not a fidkit stats file and fidkit will "
                                 "not run code from it") from None
        raise StatsFileError(f"{path}: truncated or damaged pickle ({msg}); recreate the stats file") from None
    except Exception as exc:  # noqa: BLE001 - only admitted numpy callables ran; a damaged stream
        # can still make them (or the C unpickler) raise anything, even SystemError (found by fuzzing)
        detail = " ".join(str(exc).split())[:120]
        raise StatsFileError(f"{path}: truncated or damaged pickle ({type(exc).__name__}: {detail}); "
                             "recreate the stats file") from None
    _refuse_objects(payload, "the file", path)
    if not isinstance(payload, dict) or "mu" not in payload or "sigma" not in payload:
        raise StatsFileError(f"{path}: a pickle without 'mu' and 'sigma'; not a stats file")
    meta = payload.get("meta") if payload.get("format") == FORMAT_NAME else None
    version = payload.get("format_version")
    if meta is not None and isinstance(version, int) and version > FORMAT_VERSION:
        raise StatsFileError(f"{path}: stats format version {version} is newer than this fidkit "
                             f"reads ({FORMAT_VERSION}); upgrade fidkit")
    if isinstance(meta, dict):
        meta = copy.deepcopy(meta)
        return _build(path, payload["mu"], payload["sigma"], payload.get("n", meta.get("n")), meta,
                      fmt="fidkit-pkl", provenance="fidkit")
    return _build(path, payload["mu"], payload["sigma"], payload.get("n"), {},
                  fmt="pickle (mu, sigma)", provenance="unknown")


def _read_npz_member(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    # Read the .npy header first so a hostile shape is refused before anything is allocated.
    try:
        with archive.open(name) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            if dtype.hasobject:
                raise StatsFileError(f"{path}: member {name} is an object array, which fidkit "
                                     "refuses to load; re-save it with numeric arrays")
            if len(shape) > 2 or any(s > MAX_DIMS for s in shape):
                raise StatsFileError(f"{path}: member {name} has shape {shape}; "
                                     f"statistics have at most {MAX_DIMS} dims")
        with archive.open(name) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    except StatsFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise StatsFileError(f"{path}: member {name} is truncated or damaged ({detail}); "
                             "recreate the stats file") from None


def _load_npz(path: Path) -> Statistics:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n[:-4] if n.endswith(".npy") else n: n for n in archive.namelist()}
            if "mu" not in members or "sigma" not in members:
                found = ", ".join(sorted(members)[:6]) or "nothing"
                hint = " (a clean-fid KID file holds features, not statistics)" if "feats" in members else ""
                raise StatsFileError(f"{path}: an .npz without 'mu' and 'sigma' (it holds {found}){hint}; "
                                     "not a stats file")
            mu = _read_npz_member(archive, members["mu"], path)
            sigma = _read_npz_member(archive, members["sigma"], path)
            meta_text = None
            if "meta" in members:
                raw = _read_npz_member(archive, members["meta"], path)
                if raw.dtype.kind != "U" or raw.ndim != 0:
                    raise StatsFileError(f"{path}: 'meta' is not a JSON string; recreate the stats file")
                meta_text = str(raw[()])
    except (zipfile.BadZipFile, OSError) as exc:
        raise StatsFileError(f"{path}: truncated or damaged .npz ({exc}); recreate the stats file") from None
    if meta_text is not None:
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError:
            raise StatsFileError(f"{path}: 'meta' is not valid JSON; recreate the stats file") from None
        if not isinstance(meta, dict):
            raise StatsFileError(f"{path}: 'meta' is not a JSON object; recreate the stats file")
        return _build(path, mu, sigma, meta.get("n"), meta, fmt="fidkit-npz", provenance="fidkit")
    parsed = parse_cleanfid_name(path.name)
    if parsed is not None:
        meta = {
            "convention_guess": parsed["convention"],
            "network": parsed["model"],
            "cleanfid": parsed,
        }
        if parsed["model"] == "inception_v3":
            # clean-fid's Inception is the TF 2015-12-05 graph, the same network as the canonical
            # weights; that is read from the name, not measured from a file, hence a guess.
            meta["weights_guess"] = {"sha256": FID_WEIGHTS.sha256, "canonical": True}
        return _build(path, mu, sigma, None, meta, fmt="clean-fid-npz", provenance="partial")
    return _build(path, mu, sigma, None, {}, fmt="pytorch-fid-npz", provenance="unknown")


def _load_torch(path: Path) -> Statistics:
    import torch  # only torch-fidelity files need it

    from numpy._core import multiarray

    allowed = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float64)),
               type(np.dtype(np.float32)), multiarray.scalar]
    try:
        with torch.serialization.safe_globals(allowed):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for hostile or broken files
        detail = " ".join(str(exc).split())[:160]
        raise StatsFileError(f"{path}: not loadable as torch-fidelity statistics with "
                             f"weights_only=True ({type(exc).__name__}: {detail})") from None
    if not isinstance(payload, dict) or "mu" not in payload or "sigma" not in payload:
        raise StatsFileError(f"{path}: a torch file without 'mu' and 'sigma' (torch-fidelity caches "
                             "features too; give its '-stat-fid-' file)")
    mu, sigma = payload["mu"], payload["sigma"]
    if isinstance(mu, torch.Tensor):
        mu = mu.detach().cpu().numpy()
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.detach().cpu().numpy()
    _refuse_objects({"mu": mu, "sigma": sigma}, "the file", path)
    meta: dict[str, Any] = {}
    parsed = parse_torch_fidelity_name(path.name)
    if parsed is not None:
        meta["torch_fidelity"] = parsed
        meta["network"] = parsed["feature_extractor"]
        if parsed["feature_extractor"] in _FIDELITY_TF1_EXTRACTORS:
            # torch-fidelity serves the canonical weights file as a mirror and resizes like TF1.
            meta["convention_guess"] = "tf1"
            meta["weights_guess"] = {"sha256": FID_WEIGHTS.sha256, "canonical": True}
    return _build(path, mu, sigma, None, meta, fmt="torch-fidelity-pt",
                  provenance="partial" if parsed else "unknown")


def _build(path: Path, mu: Any, sigma: Any, n: Any, meta: dict[str, Any], *, fmt: str,
           provenance: str) -> Statistics:
    mu = np.asarray(mu)
    sigma = np.asarray(sigma)
    for label, arr in (("mu", mu), ("sigma", sigma)):
        if arr.dtype.kind not in "fiu":
            raise StatsFileError(f"{path}: {label} has dtype {arr.dtype}; statistics are real numbers")
    if mu.ndim != 1 or mu.shape[0] == 0:
        raise StatsFileError(f"{path}: mu has shape {mu.shape}; it must be (d,) with d > 0")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise StatsFileError(f"{path}: mu is ({d},) but sigma is {sigma.shape}; sigma must be ({d}, {d})")
    if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        n = 0
    meta = dict(meta)
    meta.setdefault("dims", d)
    if meta.get("dims") != d:
        raise StatsFileError(f"{path}: meta says {meta.get('dims')} dims but mu has {d}; the file is inconsistent")
    meta["n"] = int(n) if n else None
    loaded = {"format": fmt, "file": path.name, "stored_dtype": str(sigma.dtype)}
    meta["loaded_from"] = loaded
    if provenance != "fidkit":
        meta["source"] = {"kind": "stats-file", "format": fmt, "file": path.name}
    stored = meta.get("provenance")
    weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    if provenance == "fidkit" and stored in ("unknown", "partial"):
        # a peer's file converted by fidkit stays as uncertain as it was
        provenance = stored
    elif provenance == "fidkit" and not (meta.get("convention") and weights.get("sha256")):
        provenance = "partial"
    meta["provenance"] = provenance
    return Statistics(mu.astype(np.float64), sigma.astype(np.float64), int(n), meta)


# --------------------------------------------------------------------------- name parsing

def parse_cleanfid_name(filename: str) -> dict[str, Any] | None:
    """Parse clean-fid's reference-statistics naming scheme,
    ``{name}_{mode}[_{model}]_{split}_{res}.npz`` (lower case), e.g.
    ``cifar10_legacy_tensorflow_train_32.npz``. Returns ``None`` for other names, else a dict with
    ``dataset``, ``mode``, ``convention`` (fidkit's name for the mode), ``model``, ``split`` and
    ``resolution`` (int, or ``None`` for custom stats, whose resolution is ``na``)."""
    match = _CLEANFID_NAME.match(os.path.basename(filename).lower())
    if match is None or match.group("kid"):
        return None
    res = match.group("res")
    return {
        "dataset": match.group("name"),
        "mode": match.group("mode"),
        "convention": CLEANFID_MODES[match.group("mode")],
        "model": match.group("model") or "inception_v3",
        "split": match.group("split"),
        "resolution": None if res == "na" else int(res),
    }


def parse_torch_fidelity_name(filename: str) -> dict[str, Any] | None:
    """Parse torch-fidelity's cache naming, ``{input}-{extractor}-stat-fid-{layer}.pt``, e.g.
    ``cifar10-train-inception-v3-compat-stat-fid-2048.pt``. The extractor is recognised from
    torch-fidelity's known names where the input name itself holds dashes."""
    base = os.path.basename(filename)
    match = _FIDELITY_NAME.match(base)
    if match is None:
        return None
    stem = base[: match.start("layer") - len("-stat-fid-")]
    extractor = None
    for known in ("inception-v3-compat", "vgg16", "clip-vit-b-32", "dinov2-vit-s-14",
                  "dinov2-vit-b-14", "dinov2-vit-l-14", "dinov2-vit-g-14"):
        if stem.endswith("-" + known):
            extractor, input_name = known, stem[: -len(known) - 1]
            break
    if extractor is None:
        input_name, _, extractor = stem.rpartition("-")
    return {"input": input_name, "feature_extractor": extractor, "feature_layer": match.group("layer")}


# --------------------------------------------------------------------------- sanity

def _tolerance(d: int, dtype: np.dtype) -> float:
    # Rounding in a d-term covariance sum (and in float32 storage) moves eigenvalues by about
    # d * eps * |sigma|; ten times that still separates rounding from a wrong matrix.
    eps = float(np.finfo(dtype).eps) if np.dtype(dtype).kind == "f" else float(np.finfo(np.float64).eps)
    return max(10.0 * d * eps, 1e-10)


def check_statistics(stats: Statistics, *, stored_dtype: Any = None) -> dict[str, Any]:
    """Sanity figures of ``stats`` for ``fidkit info``: a full check, one eigendecomposition
    (O(d^3): 0.3-0.5 s at d = 2048), which loading does not pay for (see :func:`load_statistics`).

    Returns a dict: ``dims``, ``n``, ``finite`` (bool), ``symmetry_error`` (max |S - S^T| over
    max |S|), ``symmetric`` (bool), ``min_eigenvalue``, ``max_eigenvalue``, ``psd`` (bool: the
    smallest eigenvalue >= -tol * largest), ``rank`` (eigenvalues > tol * largest), ``condition``
    (largest / smallest eigenvalue; ``inf`` when singular), ``trace`` and ``tolerance``.
    Eigenvalue figures are ``None`` when values are not finite.
    """
    sigma = stats.sigma
    d = stats.dims
    dtype = np.dtype(stored_dtype or stats.meta.get("loaded_from", {}).get("stored_dtype", "float64"))
    tol = _tolerance(d, dtype)
    finite = bool(np.isfinite(stats.mu).all() and np.isfinite(sigma).all())
    out: dict[str, Any] = {"dims": d, "n": stats.n, "finite": finite, "tolerance": tol}
    if not finite:
        out.update(symmetry_error=None, symmetric=None, min_eigenvalue=None, max_eigenvalue=None,
                   psd=None, rank=None, condition=None, trace=None)
        return out
    scale = float(np.abs(sigma).max()) or 1.0
    asym = float(np.abs(sigma - sigma.T).max()) / scale
    eig = np.linalg.eigvalsh((sigma + sigma.T) / 2)
    lo, hi = float(eig[0]), float(eig[-1])
    top = max(abs(lo), abs(hi)) or 1.0
    rank = int((eig > tol * top).sum())
    out.update(
        symmetry_error=asym,
        symmetric=asym <= tol,
        min_eigenvalue=lo,
        max_eigenvalue=hi,
        psd=lo >= -tol * top,
        rank=rank,
        condition=(hi / lo) if lo > tol * top else math.inf,
        trace=float(np.trace(sigma)),
    )
    return out


def _validate(stats: Statistics, path: Path) -> None:
    """Refuse impossible values at O(d^2) cost (see :func:`load_statistics`)."""
    mu, sigma = stats.mu, stats.sigma
    for where, values in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(values).all():
            raise StatsFileError(f"{path}: {where} holds NaN or infinite values; recompute the statistics")
    d = stats.dims
    tol = _tolerance(d, np.dtype(stats.meta.get("loaded_from", {}).get("stored_dtype", "float64")))
    scale = float(np.abs(sigma).max()) or 1.0
    asym = float(np.abs(sigma - sigma.T).max()) / scale
    if asym > tol:
        raise StatsFileError(f"{path}: sigma is not symmetric (relative error {asym:.2e}); "
                             "it is not a covariance matrix")
    diag = np.diag(sigma).copy()
    i = int(np.argmin(diag))
    if diag[i] < -tol * scale:
        raise StatsFileError(f"{path}: sigma has a negative variance, sigma[{i}, {i}] = {diag[i]:.3e}; "
                             "a covariance cannot be negative")
    # A PSD matrix has every 2 x 2 principal minor >= 0: |s_ij| <= sqrt(s_ii s_jj). Row blocks keep
    # the temporaries small (256 x d).
    root = np.sqrt(np.clip(diag, 0.0, None))
    for start in range(0, d, 256):
        block = np.abs(sigma[start:start + 256])
        excess = block - np.multiply.outer(root[start:start + 256], root) * (1.0 + tol) - tol * scale
        k = int(np.argmax(excess))
        if excess.flat[k] > 0:
            r, c = divmod(k, d)
            r += start
            raise StatsFileError(
                f"{path}: |sigma[{r}, {c}]| = {abs(sigma[r, c]):.3e} exceeds sqrt(sigma[{r}, {r}] "
                f"sigma[{c}, {c}]) = {root[r] * root[c]:.3e}, so sigma is not positive "
                "semi-definite; a covariance cannot be negative")
