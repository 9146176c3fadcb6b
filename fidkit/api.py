"""The Python API: the same functions the CLI verbs call.

>>> import fidkit
>>> ref = fidkit.compute_statistics("real/")          # doctest: +SKIP
>>> ref.save("ref.pkl")                               # doctest: +SKIP
>>> fidkit.fid("fake/", "ref.pkl")                    # doctest: +SKIP
12.3456
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any


from fidkit.errors import InputError, ProvenanceMismatchError
from fidkit.statistics import Statistics

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
    features: str | None = None,
    dims: int | None = None,
    convention: str | None = None,
    weights: str | os.PathLike | None = None,
    network: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    recursive: bool = False,
    dicom: Any = None,
    skip_bad: bool = False,
    manifest: str | os.PathLike | None = None,
    features_file: str | os.PathLike | None = None,
    progress: bool = True,
    cache: bool = True,
    checkpoint: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    checkpoint_seconds: float = 600.0,
) -> Statistics:
    """Mean and covariance (float64) of the features of ``source``.

    ``source``: a folder of images, a DICOM folder, a ``.zip``/``.tar`` archive or a brace pattern
    of them (``"shards/train-{000000..000127}.tar"``), a ``.npy``/``.npz`` image array, a uint8
    numpy array (N, H, W, 3) or torch tensor (N, 3, H, W), values 0..255, or a
    :class:`fidkit.sources.Source` (e.g. :func:`fidkit.sources.archives.open_file_list`).
    What decides the numbers (:class:`fidkit.extraction.Pipeline`): ``features``, the extractor
    (None: the FID Inception; ``fidkit features list``), ``dims`` its tap (None: its default;
    Inception: 64, 192, 768 or 2048 = pool_3), ``convention`` its preprocessing (None: its
    default), ``weights`` (None: the canonical file, downloaded and cached on first use),
    ``network`` ("auto", "reference" or "blocked": which copy of the network runs; every copy
    gives the reference network's bits, ``meta["network"]`` records which ran).
    How it runs (:class:`fidkit.extraction.Runtime`): ``device``, ``batch_size``, ``workers``,
    ``progress``. ``manifest``: write the items used and skipped to this JSON file.
    ``features_file``: also keep the per-image features in this file (streamed to disk, read
    memory-mapped; :func:`fidkit.statistics.featurestore.features_path` names the one beside a
    stats file, which :func:`fidkit.compare` then uses for KID, precision/recall, density/coverage
    and CMMD).
    ``cache``: reuse (and store) the statistics of an unchanged folder (:mod:`fidkit.statistics.cache`).
    ``checkpoint``: a folder where the run records its progress by chunks of ``chunk_size`` items
    (None: 10,000 rounded up to whole batches), the chunk in progress every ``checkpoint_seconds``
    and on SIGTERM/SIGUSR1 (then PreemptedError, exit code 75); calling again with the same
    arguments resumes from it, with statistics bit-identical to an uninterrupted run (at any
    world size). It is left in place: delete it (:func:`fidkit.statistics.checkpoint.remove_checkpoint`)
    once the result is saved. Not with ``features_file``. See docs/big_runs.md.
    Under an initialised torch.distributed process group each rank runs its block of the source
    and every rank gets the statistics of the whole (:mod:`fidkit.distributed`).
    For per-image features (KID, precision/recall, bootstrap) use :func:`fidkit.extraction.extract`.
    Raises InputError/BadImageError/WeightsError/UsageError.
    """
    from fidkit.extraction import Pipeline, Runtime, extract, note, source_name, warn_source

    pipeline = Pipeline(features=features, dims=dims, convention=convention, weights=weights,
                        network=network).resolved()
    entry = None
    if cache and manifest is None and features_file is None:
        from fidkit.statistics.cache import entry_for

        entry = entry_for(source, pipeline, recursive=recursive, skip_bad=skip_bad, dicom=dicom,
                          progress=progress)
        cached = entry.load() if entry is not None else None
        if cached is not None:
            if progress:
                note(f"{source_name(source)} unchanged since its statistics were computed; "
                     "reusing them (cache=False / --no-cache recomputes)")
            warn_source(source, cached.meta.get("source") or {})
            _warn_provenance(cached)
            return cached
    from fidkit.extractors import get_extractor

    if get_extractor(pipeline.features).options.get("volumetric"):
        # A 3-D network: one feature vector per volume (fidkit.volumes, the volume-3d protocol)
        from fidkit.volumes import volume_statistics

        stats = volume_statistics(source, pipeline, Runtime(device=device, batch_size=batch_size,
                                                            workers=workers, progress=progress),
                                  recursive=recursive)
        _warn_provenance(stats)
        return stats
    result = extract(source, pipeline, Runtime(device=device, batch_size=batch_size,
                                               workers=workers, progress=progress,
                                               chunk_size=chunk_size, checkpoint=checkpoint,
                                               checkpoint_seconds=checkpoint_seconds),
                     recursive=recursive, dicom=dicom, skip_bad=skip_bad, manifest=manifest,
                     features_file=features_file)
    if result.skipped:
        note(f"skipped {len(result.skipped)} unreadable item(s), e.g. {result.skipped[0][1]}")
    stats = result.statistics()
    if entry is not None:
        entry.save(stats)
    _warn_provenance(stats)
    return stats


def _warn_provenance(stats: Statistics) -> None:
    import warnings

    from fidkit.errors import FidkitWarning
    from fidkit.report import provenance_warnings

    for line in provenance_warnings(stats.meta):
        warnings.warn(FidkitWarning(line), stacklevel=3)


def extract_features(source: Any, *, features: str | None = None, dims: int | None = None,
                     convention: str | None = None, weights: str | os.PathLike | None = None,
                     network: str | None = None, device: str | None = None,
                     batch_size: int | None = None, workers: int | None = None,
                     recursive: bool = False, dicom: Any = None, skip_bad: bool = False,
                     outputs: tuple[str, ...] = (), manifest: str | os.PathLike | None = None,
                     progress: bool = True) -> Any:
    """Per-image features of ``source`` (and, in the same pass, the extra ``outputs``, e.g.
    ``("logits_unbiased",)``) as a :class:`fidkit.extraction.Extraction`: ``.features`` float32
    (N, dims), ``.outputs[name]``, ``.statistics()``. Arguments as :func:`compute_statistics`'s;
    nothing is cached. Raises what it raises."""
    from fidkit.extraction import Pipeline, Runtime, extract

    return extract(source, Pipeline(features=features, dims=dims, convention=convention,
                                    weights=weights, network=network),
                   Runtime(device=device, batch_size=batch_size, workers=workers,
                           progress=progress),
                   recursive=recursive, dicom=dicom, skip_bad=skip_bad, keep_features=True,
                   keep_outputs=tuple(outputs), manifest=manifest)


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

    from fidkit.statistics.provenance import extractor_of, is_known

    if a.dims != b.dims:
        what = ""
        if is_known(a.meta) and is_known(b.meta) and extractor_of(a.meta) != extractor_of(b.meta):
            what = f" ({extractor_of(a.meta)} vs {extractor_of(b.meta)})"
        raise ProvenanceMismatchError(f"{names[0]} has {a.dims}-dim features, {names[1]} has "
                                      f"{b.dims}{what}: compute both with the same extractor "
                                      "and dims (features=, dims= / --features, --dims)")
    diffs = differences(a.meta, b.meta, names)
    if diffs and not force:
        raise ProvenanceMismatchError("; ".join(diffs) + "; refusing to compare (force=True / "
                                      "--force compares anyway)")
    return diffs


def fid(a: Any, b: Any, *, force: bool = False, **options: Any) -> float:
    """The Fréchet distance between two sides, each a folder, a stats path, a
    :class:`Statistics`, or a uint8 image batch; ``options`` are :func:`compute_statistics`'s
    (``features="dinov2-vit-l-14"`` gives FD-DINOv2). Raises ProvenanceMismatchError when the
    sides were made differently (extractor, dims, convention, weights, DICOM options) unless
    ``force=True``. Warns (:class:`fidkit.FidkitWarning`) where the command line warns."""
    from fidkit.report import compare

    return float(compare(a, b, metrics=("fid",), force=force, **options).values["fid"])


