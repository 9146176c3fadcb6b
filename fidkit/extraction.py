"""The features stage as one call: a source through an extractor, into a streaming accumulator
(and, when asked, per-image arrays), with the provenance of every choice.

    source --(Pipeline: extractor, dims, convention, weights, network)--> Extraction
    Extraction.statistics() -> Statistics

:class:`Pipeline` holds what decides the numbers (it is recorded in ``meta`` and in the cache key);
:class:`Runtime` holds what only changes how fast they come (device, batch size, workers,
progress). :func:`extract` runs one source; under torch.distributed each rank runs its block and
every rank gets the whole (:mod:`fidkit.distributed`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fidkit.errors import InputError
from fidkit.statistics import Statistics, StatisticsAccumulator


@dataclass(frozen=True)
class Pipeline:
    """What decides the features: the extractor (``features``, a registry name; None: the FID
    Inception), its tap (``dims``; None: the extractor's default), its preprocessing convention
    (None: its default), the weights file (None: the canonical file, cached or downloaded) and
    the network copy (``network``: "auto", "reference" or "blocked"; all give the same bits)."""

    features: str | None = None
    dims: int | None = None
    convention: str | None = None
    weights: str | os.PathLike | None = None
    network: str | None = None

    def resolved(self) -> "Pipeline":
        """The same pipeline with the extractor's defaults filled in (name, dims, convention);
        raises UsageError for an unknown extractor, tap or convention."""
        from fidkit.extractors import get_extractor

        from fidkit.errors import UsageError

        extractor = get_extractor(self.features)
        dims = extractor.taps[extractor.tap_for(self.dims)]
        convention = extractor.default_convention if self.convention is None else self.convention
        if convention not in extractor.convention_names:
            raise UsageError(f"unknown convention {convention!r} for {extractor.name}; choose "
                             f"from {', '.join(extractor.convention_names)} "
                             "(convention=/--convention)")
        return replace(self, features=extractor.name, dims=int(dims), convention=convention)


@dataclass(frozen=True)
class Runtime:
    """How the features are computed, without changing them: ``device`` ("cpu", "cuda[:N]";
    None: CUDA when available), images per network batch (None: 50 on a GPU, 16 on the CPU),
    decoding workers (None: half the CPUs, 1 to 8), and a progress bar on stderr.

    The statistics are accumulated by chunks of ``chunk_size`` items (None: 10,000 rounded up to
    a multiple of the batch size; it must be one), merged in the source's order, so that any
    number of ranks and an interrupted run give the same bits. ``checkpoint``: a folder where
    the run records its chunks (every ``checkpoint_seconds`` for the chunk in progress, and on
    SIGTERM/SIGUSR1) and from which the same run resumes (:mod:`fidkit.statistics.checkpoint`);
    None writes nothing. Batch and chunk size change the last bits of the numbers (the order of
    the float64 sums), so a checkpoint is resumed only with the same ones."""

    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    progress: bool | str = True
    chunk_size: int | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_seconds: float = 600.0


@dataclass
class Extraction:
    """What :func:`extract` gives: the streaming accumulator of the tap's features, the
    per-image arrays that were asked for (float32 (N, D), in the source's order of used items),
    the provenance ``meta``, and the report of used and skipped items."""

    accumulator: StatisticsAccumulator
    meta: dict[str, Any]
    features: np.ndarray | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.accumulator.n

    def statistics(self) -> Statistics:
        """Mean and covariance (float64) of the tap's features, with the provenance."""
        stats = self.accumulator.statistics(dict(self.meta))
        return stats


def extract(source: Any, pipeline: Pipeline = Pipeline(), runtime: Runtime = Runtime(), *,
            recursive: bool = False, dicom: Any = None, skip_bad: bool = False,
            keep_features: bool = False, keep_outputs: tuple[str, ...] = (),
            manifest: str | os.PathLike | None = None,
            features_file: str | os.PathLike | None = None) -> Extraction:
    """Run ``source`` (a folder, a DICOM folder, a ``.zip``/``.tar`` archive or a brace pattern
    of them, an image array file, a uint8 array (N, H, W, 3) or tensor (N, 3, H, W), or a
    :class:`fidkit.sources.Source`) through ``pipeline``.

    The features are accumulated by chunks of ``runtime.chunk_size`` items in the source's order
    (:mod:`fidkit.statistics.checkpoint`), so that one process, many ranks and a run resumed from
    ``runtime.checkpoint`` give the same float64 statistics bit for bit.

    ``keep_features``: also return the per-image tap features (float32 (N, dims)).
    ``keep_outputs``: other outputs of the same pass to return per image, e.g.
    ``("logits_unbiased",)`` of the FID Inception for the Inception Score.
    ``manifest``: write the items used (in order, with sizes) and skipped to this JSON file; its
    SHA-256 goes into the provenance. ``features_file``: also stream the per-image tap features
    to this file (:mod:`fidkit.statistics.featurestore`, float32, memory-mapped when read, with
    the same provenance), batch by batch, so that N is not bounded by RAM. Per-image features
    cannot be resumed: with any of these three, ``runtime.checkpoint`` must be None.
    Raises InputError (fewer than 2 usable images, a bad path), BadImageError (unless
    ``skip_bad``), WeightsError, UsageError (e.g. a checkpoint of another run),
    PreemptedError (SIGTERM/SIGUSR1 while checkpointing; rerun to resume).
    """
    from fidkit.errors import UsageError
    from fidkit.sources import open_source

    keeps_rows = keep_features or bool(keep_outputs) or features_file is not None
    if runtime.checkpoint is not None and keeps_rows:
        raise UsageError("per-image features (keep_features, keep_outputs, features_file / "
                         "--keep-features) are not checkpointed: a resumed run would lack the "
                         "rows of the chunks done before; give checkpoint=None (--no-checkpoint)")
    pipeline = pipeline.resolved()
    # The source first: a missing path or an empty folder is reported before torch is imported.
    src = source if _is_source(source) else open_source(source, recursive=recursive, dicom=dicom)
    from fidkit import distributed
    from fidkit.extractors import get_extractor
    from fidkit.extractors.runner import (ExtractionReport, iter_features, load_model,
                                          network_meta, select_network)
    from fidkit.statistics.checkpoint import (accumulate_chunked, open_checkpoint, report_batches,
                                              used_indices)

    extractor = get_extractor(pipeline.features)
    tap = extractor.tap_for(pipeline.dims)
    convention = extractor.convention(pipeline.convention)
    dims = int(pipeline.dims)
    wanted = (tap,) + tuple(o for o in keep_outputs if o != tap)
    gather_tap = features_file is not None and distributed.is_active()  # rank 0 writes it
    keep = set(keep_outputs) | ({tap} if keep_features or gather_tap else set())
    kept: dict[str, list[np.ndarray]] = {name: [] for name in wanted if name in keep}
    described = src.describe()
    dicom_options = getattr(src, "options", None)
    dicom_meta = dicom_options.to_meta() if hasattr(dicom_options, "to_meta") else None
    writer = None
    with distributed.agreed_errors():
        model, resolved = load_model(pipeline.weights, outputs=wanted, device=runtime.device,
                                     progress=bool(runtime.progress), features=extractor)
        plan, identity = _plan(src, pipeline, runtime, model, resolved, described, dicom_meta)
        if features_file is not None and not gather_tap:
            from fidkit.statistics.featurestore import FeatureWriter

            writer = FeatureWriter(features_file, dims)
    checkpoint = None
    if runtime.checkpoint is not None:
        checkpoint = open_checkpoint(runtime.checkpoint, identity, plan, dims)
    ran: dict[str, str] = {}

    def run(part: Any, batch_size: int, report: ExtractionReport):
        # Chunks come in order on each rank (a contiguous block of them), so the kept rows do too.
        for out in iter_features(part, model, convention, batch_size=batch_size,
                                 workers=runtime.workers, skip_bad=skip_bad, progress=False,
                                 report=report, network=pipeline.network):
            ran["network"] = report.network
            if writer is not None:
                writer.append(out[tap].float().cpu().numpy())
            for name, rows in kept.items():
                rows.append(out[name].float().cpu().numpy())
            yield out

    try:
        with _progress_bar(runtime.progress, len(src)) as advance:
            result = accumulate_chunked(src, report_batches(run, tap), plan, dims,
                                        checkpoint=checkpoint,
                                        checkpoint_seconds=runtime.checkpoint_seconds,
                                        progress=advance)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if checkpoint is not None and result.resumed and distributed.is_writer() and runtime.progress:
        note(f"resumed from {checkpoint.folder}: {result.resumed} of {plan.chunks} chunk(s) of "
             f"{plan.chunk_size} items were already done")
    if distributed.is_active():
        everyone = distributed.gather_objects(
            {name: np.concatenate(rows) if rows else None for name, rows in kept.items()})
        for name in kept:
            kept[name] = [arrays[name] for arrays in everyone if arrays[name] is not None]
    acc = result.accumulator
    if acc.n < 2:
        if writer is not None:
            writer.abort()
        raise InputError(f"{source_name(source)}: only {acc.n} usable image(s); the statistics "
                         "need at least 2 (and far more than the feature dimension for a stable "
                         "number)")
    report = ExtractionReport(used=list(used_indices(plan.items, result.skipped)),
                              skipped=[(item, reason) for _, item, reason in result.skipped],
                              network=ran.get("network") or select_network(
                                  model, pipeline.network, next(model.parameters()).device)[1])
    if distributed.is_writer():
        warn_source(source, described)
    described = dict(described)
    if report.skipped:
        described["skipped"] = len(report.skipped)
    if manifest is not None:
        described["manifest_sha256"] = write_manifest(manifest, src, report)
    from fidkit.statistics.provenance import build_meta

    extra: dict[str, Any] = network_meta(report.network)
    if dicom_meta is not None:
        extra["dicom"] = dicom_meta
    meta = build_meta(extractor=extractor, dims=dims, convention=convention.name,
                      weights=resolved.describe(), n=acc.n, source=described, extra=extra)
    out = Extraction(accumulator=acc, meta=meta, skipped=list(report.skipped))
    if features_file is not None and distributed.is_writer():
        from fidkit.statistics.featurestore import write_features

        if writer is not None:
            writer.set_meta(meta)  # the provenance is complete only now
            writer.close()
        else:
            write_features(features_file, np.concatenate(kept[tap]), dict(meta))
    if keep_features:
        out.features = np.concatenate(kept[tap])
    for name in keep_outputs:
        out.outputs[name] = np.concatenate(kept[name])
    return out


def _plan(source: Any, pipeline: Pipeline, runtime: Runtime, model: Any, resolved: Any,
          described: dict[str, Any], dicom_meta: dict[str, Any] | None) -> tuple[Any, dict]:
    """The chunk plan of a run and its identity (what a checkpoint must match to be resumed)."""
    import torch

    from fidkit import __version__
    from fidkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE
    from fidkit.statistics.checkpoint import ChunkPlan, run_identity

    device = next(model.parameters()).device
    batch_size = runtime.batch_size
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if device.type == "cuda" else DEFAULT_CPU_BATCH_SIZE
    plan = ChunkPlan.make(len(source), batch_size, runtime.chunk_size)
    # Every network copy ("reference", "blocked") gives the reference network's bits, so the
    # identity records "reference" whichever runs: a run may resume on the other copy.
    identity = run_identity(source=described, extractor=str(pipeline.features),
                            dims=int(pipeline.dims), convention=str(pipeline.convention),
                            weights_sha256=resolved.sha256, network="reference",
                            device_type=device.type, batch_size=plan.batch_size,
                            chunk_size=plan.chunk_size, dicom=dicom_meta,
                            fidkit_version=__version__, torch_version=torch.__version__)
    return plan, identity


@contextlib.contextmanager
def _progress_bar(progress: bool | str, total: int):
    """A progress bar on stderr (when it is a terminal, or ``progress="always"``); yields the
    function that advances it by a number of items (None without a bar)."""
    if not progress:
        yield None
        return
    from tqdm import tqdm

    from fidkit import distributed

    bar = tqdm(total=total if distributed.world_size() == 1 else None, unit="img",
               desc="features", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty() and progress != "always")
    try:
        yield bar.update
    finally:
        bar.close()


def _is_source(value: Any) -> bool:
    return all(hasattr(value, attr) for attr in ("load", "item_name", "describe", "__len__"))


def write_manifest(path: str | os.PathLike, source: Any, report: Any) -> str:
    """Write the items used (in order, with sizes) and skipped; returns the SHA-256 of the used
    list."""
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


def warn_source(source: Any, described: dict[str, Any]) -> None:
    """Raise what the source reported about its own content (``describe()["warnings"]``: e.g. a
    DICOM series whose SliceThickness differs from its measured spacing, a gap between slices)
    as :class:`fidkit.FidkitWarning`, one per line, each naming the source."""
    import warnings

    from fidkit.errors import FidkitWarning

    for line in described.get("warnings") or ():
        warnings.warn(FidkitWarning(f"{source_name(source)}: {line}"), stacklevel=3)


def source_name(source: Any) -> str:
    """How a side is named in messages: its path, or its type."""
    return str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def note(message: str) -> None:
    """A progress or warning line on stderr (stdout stays machine-readable)."""
    print(f"fidkit: {message}", file=sys.stderr)
