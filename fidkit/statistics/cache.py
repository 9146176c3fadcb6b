"""Reusing the statistics of an unchanged folder.

``fidkit stats``/``compare`` on a folder whose files have not changed since the last run return the
statistics computed then, without importing torch or loading the network. The cache key is a
SHA-256 over everything the statistics depend on:

* the folder's resolved path, ``recursive``, and its file list: relative path, size in bytes and
  modification time in nanoseconds of every file read (for DICOM folders and folders of NIfTI
  volumes: every file below it);
* ``dims``, the convention name, the SHA-256 of the weights file, the DICOM options,
  ``skip_bad``, and the fidkit version.

Any change (a file touched, added, removed or renamed, another convention, dims or weights file)
gives another key, so a stale entry is never read; entries are never updated in place. Batch size,
worker count and device are not in the key: they move features only by float32 rounding and are
not part of the statistics' provenance either. Inputs that are not folders (arrays, tensors) and
requests for per-image features, extra outputs or a manifest are never cached.

Entries are fidkit ``.pkl`` stats files (:mod:`fidkit.statistics.statsio`, restricted unpickler) under
``$FIDKIT_CACHE/stats/``, else ``$XDG_CACHE_HOME/fidkit/stats/`` (``~/.cache/fidkit/stats/``),
written atomically. Deleting the folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fidkit import __version__
from fidkit.defaults import CACHE_ENV
from fidkit.errors import FidkitError
from fidkit.statistics import Statistics

#: Bumped when the key's definition changes, so old entries are simply never matched.
KEY_VERSION = 3  # 2: keyed by extractor; 3: volume datasets (NIfTI, DICOM series folders)


def stats_cache_dir() -> Path:
    """``$FIDKIT_CACHE/stats`` (the same root as the weights cache), else
    ``$XDG_CACHE_HOME/fidkit/stats`` or ``~/.cache/fidkit/stats``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "stats"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "fidkit" / "stats"


def folder_fingerprint(folder: Path, *, recursive: bool, dicom: bool) -> list[tuple[str, int, int]]:
    """``(relative path, size in bytes, mtime in ns)`` of every file the pipeline would read from
    ``folder``, sorted by relative path: the image files (see :func:`fidkit.sources.images.list_images`)
    or, for a DICOM folder, every non-hidden file below it. Raises :class:`InputError`."""
    if dicom:
        files = []
        for top, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [Path(top) / n for n in names if not n.startswith(".")]
        files.sort(key=lambda p: p.relative_to(folder).as_posix())
    else:
        from fidkit.sources.images import list_images

        files = list_images(folder, recursive=recursive)
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            st = None
        out.append((path.relative_to(folder).as_posix(), st.st_size if st else -1,
                    st.st_mtime_ns if st else -1))
    return out


@dataclass
class CacheEntry:
    """One folder's statistics under one set of options: :meth:`load` on a hit, :meth:`save` after
    computing. ``key`` is the SHA-256 hex of the canonical JSON of ``fields``."""

    path: Path
    key: str
    fields: dict[str, Any]
    folder: Path

    def load(self) -> Statistics | None:
        """The cached statistics, or None (absent, unreadable or not matching: recomputed)."""
        if not self.path.is_file():
            return None
        from fidkit.statistics.statsio import load_statistics

        try:
            # The full positive-semi-definite check costs seconds at 2048 dims; this file was
            # validated when fidkit wrote it, and the restricted unpickler still guards the read.
            stats = load_statistics(self.path, check=False)
        except FidkitError:
            return None
        meta = stats.meta
        if (meta.get("cache_key") != self.key or stats.dims != self.fields["dims"]
                or meta.get("convention") != self.fields["convention"]
                or (meta.get("weights") or {}).get("sha256") != self.fields["weights_sha256"]):
            return None
        for key in ("cache_key", "loaded_from", "provenance"):
            meta.pop(key, None)
        return stats

    def save(self, stats: Statistics) -> None:
        """Store ``stats`` unless the folder changed while they were computed. Never raises for a
        cache that cannot be written (a read-only home must not fail the run)."""
        from fidkit.statistics.statsio import save_statistics

        now = _fingerprint_or_none(self.folder, self.fields)
        if now != self.fields["files"]:
            return
        entry = Statistics(stats.mu, stats.sigma, stats.n, dict(stats.meta, cache_key=self.key))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_statistics(entry, self.path, overwrite=True)
        except (OSError, FidkitError) as exc:
            print(f"fidkit: could not write the statistics cache {self.path.parent} ({exc}); "
                  "continuing without it", file=sys.stderr)


def _is_volume_folder(folder: Path, recursive: bool) -> bool:
    """Whether ``folder`` holds NIfTI volumes (:func:`fidkit.dicom.source.nifti_files`)."""
    from fidkit.dicom.source import nifti_files

    try:
        return bool(nifti_files(folder, recursive=recursive))
    except OSError:
        return False


def _fingerprint_or_none(folder: Path, fields: dict[str, Any]) -> list | None:
    try:
        files = folder_fingerprint(folder, recursive=fields["recursive"],
                                   dicom=fields["kind"] in ("dicom", "volumes"))
    except (OSError, FidkitError):
        return None
    return [list(f) for f in files]


def entry_for(source: Any, pipeline: Any, *, recursive: bool, skip_bad: bool, dicom: Any = None,
              progress: bool = True) -> CacheEntry | None:
    """The cache entry for computing statistics of ``source`` with ``pipeline`` (a resolved
    :class:`fidkit.extraction.Pipeline`), or None when ``source`` is not a folder path (or a
    torch.distributed group is running, or the extractor is a user's in-memory module).

    Resolves the weights (hashing the file, ~0.3 s for the canonical one; downloading it if it is
    nowhere, as the computation would): raises what :func:`fidkit.extractors.weights.resolve_weights` raises.
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    folder = Path(source)
    if not folder.is_dir():
        return None
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return None  # each rank sees only its shard; the merged result is not worth the risk
    from fidkit.sources import _is_dicom_folder
    from fidkit.extractors.weights import resolve_weights

    kind = "dicom" if _is_dicom_folder(folder) else "folder"
    if kind == "folder" and _is_volume_folder(folder, recursive):
        kind = "volumes"  # NIfTI files: read with the DICOM options, every file fingerprinted
    dicom_meta = None
    if kind in ("dicom", "volumes"):
        from fidkit.dicom.source import DicomOptions

        dicom_meta = (dicom if dicom is not None else DicomOptions()).to_meta()
    from fidkit.extractors import get_extractor

    extractor = get_extractor(pipeline.features)
    if extractor.weights is None:
        return None  # a user's module can change between runs without the key seeing it
    resolved = resolve_weights(pipeline.weights, spec=extractor.weights, progress=progress)
    fields: dict[str, Any] = {
        "key_version": KEY_VERSION,
        "fidkit_version": __version__,
        "kind": kind,
        "folder": str(folder.resolve()),
        "recursive": bool(recursive),
        "extractor": extractor.name,
        "dims": int(pipeline.dims),
        "convention": str(pipeline.convention),
        "weights_sha256": resolved.sha256,
        "dicom": dicom_meta,
        "skip_bad": bool(skip_bad),
        # Not the network copy: "reference" and "blocked" give the same bits.
    }
    files = _fingerprint_or_none(folder, fields)
    if files is None:
        return None  # let the computation report what is wrong with the folder
    fields["files"] = files
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return CacheEntry(stats_cache_dir() / f"{key}.pkl", key, fields, folder)
