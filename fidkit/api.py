"""The Python API: the same functions the CLI verbs call.

>>> import fidkit
>>> ref = fidkit.compute_statistics("real/")          # doctest: +SKIP
>>> ref.save("ref.pkl")                               # doctest: +SKIP
>>> fidkit.fid("fake/", "ref.pkl")                    # doctest: +SKIP
12.3456
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fidkit.defaults import DEFAULT_CONVENTION, DEFAULT_DIMS
from fidkit.errors import InputError, ProvenanceMismatchError
from fidkit.statistics import Statistics, StatisticsAccumulator

STATS_ONLY_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth")


def is_stats_path(path: str | os.PathLike) -> bool:
    """True for a file that should be read as statistics rather than images: ``.pkl``/``.pt``,
    or an ``.npz`` holding ``mu`` and ``sigma`` (an ``.npz`` of images is read as images)."""
    p = Path(path)
    if p.is_dir():
        return False
    suffix = p.suffix.lower()
    if suffix in STATS_ONLY_SUFFIXES:
        return True
    if suffix == ".npz" and p.is_file():
        try:
            with zipfile.ZipFile(p) as archive:
                names = {n[:-4] if n.endswith(".npy") else n for n in archive.namelist()}
        except (zipfile.BadZipFile, OSError):
            return True  # let the stats loader explain what is wrong with it
        return {"mu", "sigma"} <= names
    return False


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read a stats file (fidkit ``.pkl``/``.npz``, pytorch-fid/TTUR/clean-fid ``.npz``,
    torch-fidelity ``.pt``) without ever running code from it. Raises StatsFileError."""
    from fidkit.statistics.statsio import load_statistics as _load

    return _load(path)


def compute_statistics(
    source: Any,
    *,
    dims: int = DEFAULT_DIMS,
    convention: str = DEFAULT_CONVENTION,
    batch_size: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    weights: str | os.PathLike | None = None,
    recursive: bool = False,
    keep_features: bool = False,
    keep_outputs: tuple[str, ...] = (),
    skip_bad: bool = False,
    manifest: str | os.PathLike | None = None,
    dicom: Any = None,
    progress: bool = True,
    cache: bool = True,
    fast: bool | str | None = None,
) -> Statistics:
    """Mean and covariance (float64) of the Inception features of ``source``.

    ``source``: a folder of images, a DICOM folder, a ``.npy``/``.npz`` image array, a uint8 numpy
    array (N, H, W, 3) or torch tensor (N, 3, H, W), values 0..255. ``dims``: 64, 192, 768 or 2048
    (pool_3). ``convention``: a name from :mod:`fidkit.preprocess`. ``weights``: a weights file
    (default: the canonical file, downloaded and cached on first use). With ``keep_features`` the
    result has a ``features`` attribute, float32 (N, dims), for KID and bootstrap intervals.
    ``keep_outputs``: other network outputs to keep from the same pass (e.g. ``"logits_unbiased"``
    for the Inception Score), as ``stats.outputs[name]``, float32 (N, D).
    Under an initialised torch.distributed process group each rank runs its block of the source
    and every rank gets the statistics of the whole (see :mod:`fidkit.distributed`).
    ``manifest``: write the list of items used (and skipped) to this JSON file; its SHA-256 goes
    into the provenance. ``fast``: which network runs (:func:`fidkit.extractors.runner.network_path`).
    None, the default: on the CPU the blocked copy (:mod:`fidkit.extractors.networks.inception_blocked`, ~1.4x faster, features
    bit-identical to the reference network's, checked on the machine); on CUDA the reference
    network. False: the reference network, pytorch-fid's float32 operations in order.
    ``"folded"``: batch norm folded into the convolutions, a ~15 % faster CPU forward, features
    off by float32 rounding (recorded in ``meta["fast_path"]``). What ran is recorded in
    ``meta["network"]``. ``cache``: reuse (and store) the statistics of an unchanged folder
    (see :mod:`fidkit.statistics.cache`); features, extra outputs and manifests are always computed.
    Raises InputError/BadImageError/WeightsError/UsageError.
    """
    entry = None
    if cache and not (keep_features or keep_outputs or manifest is not None):
        from fidkit.statistics.cache import entry_for

        entry = entry_for(source, dims=dims, convention=convention, weights=weights,
                          recursive=recursive, skip_bad=skip_bad, dicom=dicom, progress=progress,
                          fast=fast)
        cached = entry.load() if entry is not None else None
        if cached is not None:
            if progress:
                print(f"fidkit: {_name(source)} unchanged since its statistics were computed; "
                      "reusing them (--no-cache recomputes)", file=sys.stderr)
            return cached
    from fidkit.sources import open_source

    # The source first: a missing path or an empty folder is reported before torch is imported.
    src = open_source(source, recursive=recursive, dicom=dicom)
    from fidkit import distributed
    from fidkit.extractors.runner import ExtractionReport, iter_features, load_model
    from fidkit.extractors.networks.inception import tap_name
    from fidkit.preprocess import get_convention
    from fidkit.statistics.provenance import build_meta

    tap = tap_name(int(dims))
    conv = get_convention(convention)
    wanted = (tap,) + tuple(o for o in keep_outputs if o != tap)
    acc = StatisticsAccumulator(int(dims))
    keep = set(keep_outputs) | ({tap} if keep_features else set())
    kept: dict[str, list[np.ndarray]] = {name: [] for name in wanted if name in keep}
    report = ExtractionReport()
    part = distributed.shard(src)
    with distributed.agreed_errors():
        model, resolved = load_model(weights, outputs=wanted, device=device, progress=progress)
        for out in iter_features(part, model, conv, batch_size=batch_size, workers=workers,
                                 skip_bad=skip_bad, progress=progress, report=report,
                                 optimized=fast):
            acc.update(out[tap])
            for name, batches in kept.items():
                batches.append(out[name].float().cpu().numpy())
    acc = distributed.merge_extraction(acc, int(dims), part, report, kept)
    if acc.n < 2:
        raise InputError(f"{_name(source)}: only {acc.n} usable image(s); FID needs at least 2 "
                         "(and far more than the feature dimension for a stable number)")
    described = src.describe()
    if report.skipped:
        described["skipped"] = len(report.skipped)
        print(f"fidkit: skipped {len(report.skipped)} unreadable item(s), e.g. "
              f"{report.skipped[0][1]}", file=sys.stderr)
    if manifest is not None:
        described["manifest_sha256"] = write_manifest(manifest, src, report)
    from fidkit.extractors.runner import network_meta

    extra: dict[str, Any] = network_meta(report.network)
    dicom_options = getattr(src, "options", None)
    if dicom_options is not None and hasattr(dicom_options, "to_meta"):
        extra["dicom"] = dicom_options.to_meta()
    meta = build_meta(dims=int(dims), convention=conv.name, weights=resolved.describe(), n=acc.n,
                      source=described, extra=extra)
    stats = acc.statistics(meta)
    if keep_features:
        stats.features = np.concatenate(kept[tap])  # type: ignore[attr-defined]
    if keep_outputs:
        stats.outputs = {name: np.concatenate(kept[name]) for name in keep_outputs}  # type: ignore[attr-defined]
    if entry is not None:
        entry.save(stats)
    return stats


def write_manifest(path: str | os.PathLike, source: Any, report: Any) -> str:
    """Write the items used (in order, with sizes) and skipped; returns the SHA-256 of the used list."""
    import hashlib

    from fidkit.fileio import atomic_write_bytes

    used = []
    for index in report.used:
        name = source.item_name(index)
        try:
            size = os.path.getsize(name)
        except OSError:
            size = None
        used.append({"item": name, "size": size})
    canonical = json.dumps(used, sort_keys=True).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    body = {"used": used, "used_sha256": digest,
            "skipped": [{"item": item, "reason": reason} for item, reason in report.skipped]}
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())
    return digest


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def as_statistics(side: Any, **options: Any) -> Statistics:
    """A :class:`Statistics` from a Statistics, a stats file path, or anything
    :func:`compute_statistics` reads."""
    if isinstance(side, Statistics):
        return side
    if isinstance(side, (str, os.PathLike)) and is_stats_path(side):
        if not Path(side).exists():
            raise InputError(f"{side} does not exist; check the path")
        return load_statistics(side)
    return compute_statistics(side, **options)


def check_comparable(a: Statistics, b: Statistics, *, force: bool = False,
                     names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Raise ProvenanceMismatchError when the two were made differently (unless ``force``);
    returns the differences (warnings when forced). A dims mismatch is always an error."""
    from fidkit.statistics.provenance import differences

    if a.dims != b.dims:
        raise ProvenanceMismatchError(f"{names[0]} has {a.dims}-dim features, {names[1]} has "
                                      f"{b.dims}: compute both with the same --dims")
    diffs = differences(a.meta, b.meta, names)
    if diffs and not force:
        raise ProvenanceMismatchError("; ".join(diffs) + "; refusing to compare (use --force to "
                                      "compare anyway)")
    return diffs


def fid(a: Any, b: Any, *, dims: int = DEFAULT_DIMS, convention: str = DEFAULT_CONVENTION,
        force: bool = False, **options: Any) -> float:
    """FID between two sides, each a folder, a stats path, a :class:`Statistics`, or a uint8
    image batch. Raises ProvenanceMismatchError when the sides were made differently (dims,
    convention, weights, DICOM options) unless ``force=True``."""
    from fidkit.distances.frechet import frechet_distance

    sa = as_statistics(a, dims=dims, convention=convention, **options)
    sb = as_statistics(b, dims=dims, convention=convention, **options)
    check_comparable(sa, sb, force=force)
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


