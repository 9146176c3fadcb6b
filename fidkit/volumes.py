"""Distances between two sets of medical volumes: the protocols that feed whole volumes, not
independent slices, to a network.

* ``maisi-2.5d`` (MONAI MAISI's 2.5-D FID, :mod:`fidkit.dicom.maisi`): each volume is put in RAS,
  optionally resampled, padded / cropped to the target shape and clipped to [-1000, 1000] HU, then
  cut into its XY, YZ and ZX slices; every plane's slices go through a 2-D extractor into one
  :class:`~fidkit.statistics.Statistics` per plane, a Fréchet distance per plane
  (``fid_xy``, ``fid_yz``, ``fid_zx``) and their mean (``fid``, the number MAISI reports).
  The default extractor is ``radimagenet-resnet50``, fed the script's own inputs (min-max scaled
  per plane stack, BGR, minus the BGR ImageNet means): its ``maisi`` convention is *not* applied
  a second time. Any other 2-D extractor gets the same slices as 8-bit grey RGB images
  (``round(255 x`` the 0..1 min-max scaling ``)``, what the QC montage shows), then its own
  convention (resize, normalisation), exactly as it treats any image.
* ``volume-3d`` (a 3-D extractor, ``medicalnet-resnet10`` / ``medicalnet-resnet50``): each volume
  in fidkit's canonical layout (:data:`fidkit.dicom.volume.CANONICAL_LAYOUT`), optionally
  resampled (``--spacing``), stretched to the network's input shape (``volume_shape``, MedicalNet's
  rule) and normalised by the extractor's convention; one pooled feature vector per volume, one
  :class:`Statistics`, the Fréchet distance ("FD" with a 3-D network).

    volumes ──► protocol (maisi planes | 3-D input) ──► extractor ──► Statistics (per plane)
        ──► Fréchet distance (per plane, mean) ──► Report

Every choice goes into ``meta["protocol"]`` (and ``meta["plane"]`` for a 2.5-D plane), which
:func:`fidkit.statistics.provenance.differences` compares: sides made with other protocols or
options are refused like other mismatches. Nothing here is cached (:mod:`fidkit.statistics.cache`
keys image folders).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from fidkit.errors import InputError, ProvenanceMismatchError, UsageError
from fidkit.extraction import Pipeline, Runtime
from fidkit.dicom.maisi import plane_batches  # noqa: F401  (re-exported)
from fidkit.statistics import Statistics

MAISI = "maisi-2.5d"
VOLUME_3D = "volume-3d"
PROTOCOLS = (MAISI, VOLUME_3D)
#: The extractor ``maisi-2.5d`` uses unless ``features`` names another (the MAISI script's).
MAISI_DEFAULT_FEATURES = "radimagenet-resnet50"
#: The window the protocols open volume datasets with. Never applied: they read each volume's
#: values (``VolumeSource.volume``), not its windowed slices; a fixed window only spares NIfTI
#: files without cal_min/cal_max the "file" window's error.
_UNUSED_WINDOW = (0.0, 2000.0)
#: Volumes read ahead of the network (each MAISI volume at 512^3 is 0.5 GB in float32).
_READ_AHEAD = 2


# ----------------------------------------------------------------------------- choosing
def is_volumetric(features: Any) -> bool:
    """Whether the extractor ``features`` (a name, an Extractor or None) takes volumes."""
    from fidkit.extractors import get_extractor

    return bool(get_extractor(features).options.get("volumetric"))


def resolve_protocol(protocol: str | None, features: Any = None) -> str | None:
    """The volume protocol a comparison runs: ``protocol`` when given, ``"volume-3d"`` for a 3-D
    extractor, else None (images and slices, :func:`fidkit.report.compare`'s own path).
    Raises UsageError for an unknown protocol or one that does not fit the extractor."""
    if protocol is None:
        return VOLUME_3D if features is not None and is_volumetric(features) else None
    name = str(protocol).strip().lower()
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)} "
                         "(protocol= / --protocol)")
    volumetric = features is not None and is_volumetric(features)
    if name == MAISI and volumetric:
        raise UsageError(f"{features} takes whole volumes; maisi-2.5d feeds 2-D slices: give a 2-D "
                         f"extractor (default {MAISI_DEFAULT_FEATURES}) or drop protocol= "
                         "(--protocol)")
    if name == VOLUME_3D and not volumetric:
        raise UsageError(f"volume-3d needs a 3-D extractor (features='medicalnet-resnet10' / "
                         f"--features medicalnet-resnet10, or medicalnet-resnet50), not "
                         f"{features or 'inception'}")
    return name


def parse_shape(text: str, what: str = "--volume-shape") -> tuple[int, int, int]:
    """``"D,H,W"`` (or ``DxHxW``) -> three positive ints. Raises UsageError."""
    words = text.replace("x", ",").split(",")
    try:
        values = tuple(int(w) for w in words)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise UsageError(f"bad {what} {text!r}; give three positive voxel counts, e.g. 32,128,128")
    return values  # type: ignore[return-value]


# ----------------------------------------------------------------------------- reading
def open_volumes(path: Any, *, recursive: bool = False,
                 spacing: Sequence[float | None] | None = None, protocol: str = MAISI) -> Any:
    """A :class:`fidkit.dicom.source.VolumeSource` of ``path``: a ``.nii``/``.nii.gz`` file, a
    folder of them, a folder of DICOM series (one per subfolder) or one DICOM series folder.
    ``spacing``: (z, y, x) mm to resample each volume to (None: as stored). A VolumeSource is
    returned as it is. Raises InputError for anything else."""
    from fidkit.dicom.source import (DicomOptions, VolumeSource, is_dicom_folder,
                                     open_volume_source)

    if isinstance(path, VolumeSource):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{protocol} reads volumes: give a NIfTI file or folder, or a folder of "
                         f"DICOM series, not a {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path")
    options = DicomOptions(spacing=None if spacing is None else tuple(spacing),  # type: ignore[arg-type]
                           window=_UNUSED_WINDOW)
    source = open_volume_source(p, options, recursive=recursive)
    if source is None and p.is_dir() and is_dicom_folder(p):
        source = VolumeSource([p], options, root=p, kind="dicom")
    if source is None:
        raise InputError(f"{p}: {protocol} reads volumes; give a .nii/.nii.gz file, a folder of "
                         "them (recursive=True / --recursive for subfolders) or a folder of DICOM "
                         "series, one per "
                         "subfolder")
    return source


def describe_volumes(source: Any) -> dict[str, Any]:
    """``meta["source"]`` of a volume dataset read by a protocol: its kind, path, volume count,
    each volume's stored shape and spacing (no window, axis or slice choice: they do not apply)."""
    described = source.describe()
    keep = ("kind", "format", "path", "volumes", "layout", "affine", "skipped_files", "skipped",
            "warnings")
    out = {k: described[k] for k in keep if k in described}
    out["per_volume"] = [{k: v for k, v in entry.items() if k not in ("slices", "resampled_shape")}
                         for entry in described.get("per_volume", [])]
    return out


def _ahead(load: Callable[[int], Any], count: int, workers: int) -> Iterator[tuple[int, Any]]:
    """``(n, load(n))`` for n in range(count), in order; with ``workers`` > 0 one thread reads up
    to :data:`_READ_AHEAD` volumes ahead of the caller (reading and the MAISI steps overlap the
    network)."""
    if workers <= 0 or count <= 1:
        for n in range(count):
            yield n, load(n)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fidkit-volumes")
    pending: deque = deque()
    try:
        for n in range(count):
            while len(pending) < _READ_AHEAD and n + len(pending) < count:
                pending.append(pool.submit(load, n + len(pending)))
            yield n, pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, runtime: Runtime, what: str) -> Any:
    if not runtime.progress:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit="vol", desc=what, file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty() and runtime.progress != "always")


# ----------------------------------------------------------------------------- maisi-2.5d
def unit_to_rgb255(unit: np.ndarray) -> np.ndarray:
    """Grey slices on 0..1, float (B, H, W) -> float32 (B, 3, H, W) 8-bit values 0..255
    (``floor(255 v + 0.5)``): the images a 2-D extractor other than RadImageNet is fed."""
    u8 = np.floor(np.asarray(unit, dtype=np.float64) * 255.0 + 0.5).clip(0, 255)
    return np.repeat(u8.astype(np.float32)[:, None], 3, axis=1)


def maisi_protocol_meta(options: Any, direct: bool, convention: str) -> dict[str, Any]:
    """``meta["protocol"]``: :meth:`MaisiOptions.to_meta` plus what the network is fed."""
    meta = options.to_meta()
    if direct:
        meta["network_input"] = ("the script's plane inputs (BGR, 0..1 minus the BGR means), "
                                 "no further convention")
    else:
        meta.update(channels="RGB (grey repeated)", means_subtracted=None,
                    network_input=f"uint8 grey RGB floor(255 x 0..1 + 0.5), then the extractor's "
                                  f"{convention!r} convention")
    return meta


def _maisi_pipeline(pipeline: Pipeline) -> Pipeline:
    from dataclasses import replace

    if pipeline.features is None:
        pipeline = replace(pipeline, features=MAISI_DEFAULT_FEATURES)
    return pipeline.resolved()


def _takes_maisi_inputs(convention: Any) -> bool:
    from fidkit.extractors.radimagenet import prepare_maisi

    return convention.prepare is prepare_maisi


def maisi_statistics(source: Any, options: Any = None, pipeline: Pipeline = Pipeline(),
                     runtime: Runtime = Runtime(), *, recursive: bool = False
                     ) -> dict[str, Statistics]:
    """The ``maisi-2.5d`` statistics of a volume dataset: plane name (``"xy"``, ``"yz"``,
    ``"zx"``) -> :class:`Statistics` of that plane's slices of every volume.

    ``options``: a :class:`fidkit.dicom.maisi.MaisiOptions` (None: the script's defaults, 512^3).
    ``pipeline``: the extractor (None: ``radimagenet-resnet50``), its tap, convention, weights.
    Each ``meta`` records the protocol (``meta["protocol"]``), the plane (``meta["plane"]``) and
    the volumes (``meta["source"]``). Raises InputError, UsageError, WeightsError.
    """
    import torch

    from fidkit.dicom.maisi import PLANES, MaisiOptions, maisi_volume
    from fidkit.extractors import get_extractor
    from fidkit.extractors.runner import (fp32_numerics, load_model, network_meta,
                                          resolve_device, select_network)
    from fidkit.statistics import StatisticsAccumulator
    from fidkit.statistics.provenance import build_meta

    options = options or MaisiOptions()
    pipeline = _maisi_pipeline(pipeline)
    extractor = get_extractor(pipeline.features)
    if extractor.options.get("volumetric"):
        raise UsageError(f"{extractor.name} takes volumes; maisi-2.5d needs a 2-D extractor")
    src = open_volumes(source, recursive=recursive, protocol=MAISI)
    tap = extractor.tap_for(pipeline.dims)
    convention = extractor.convention(pipeline.convention)
    direct = _takes_maisi_inputs(convention)
    device = resolve_device(runtime.device)
    batch_size = runtime.batch_size or _default_batch(device)
    model, resolved = load_model(pipeline.weights, outputs=(tap,), device=device,
                                 progress=bool(runtime.progress), features=extractor)
    runnable, path = select_network(model, pipeline.network, device)
    accs = {plane: StatisticsAccumulator(int(pipeline.dims)) for plane in PLANES}
    per_volume: list[dict[str, Any]] = []
    count = len(src.entries)
    bar = _progress(count, runtime, "maisi-2.5d")
    workers = 1 if runtime.workers is None else int(runtime.workers)
    try:
        with torch.inference_mode(), fp32_numerics():
            for n, array in _ahead(lambda n: maisi_volume(src.volume(n), options), count, workers):
                slices = {}
                for plane in PLANES:
                    seen = 0
                    for batch in plane_batches(array, plane, options.center_slices_ratio,
                                               batch_size, unit=not direct):
                        if direct:
                            x = torch.from_numpy(batch).to(device)
                        else:
                            x = torch.from_numpy(unit_to_rgb255(batch))
                            x = (convention.prepare(x.to(device)) if convention.batched_on_device
                                 else convention.prepare(x).to(device))
                        accs[plane].update(runnable(x.contiguous())[tap])
                        seen += len(batch)
                    slices[plane] = seen
                per_volume.append({"maisi_shape": list(array.shape), "slices": slices})
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    described = describe_volumes(src)
    for entry, extra in zip(described["per_volume"], per_volume):
        entry.update(extra)
    protocol = maisi_protocol_meta(options, direct, convention.name)
    out = {}
    for plane, acc in accs.items():
        if acc.n < 2:
            raise InputError(f"{src.path}: only {acc.n} {plane} slice(s); the statistics need at "
                             "least 2")
        described_plane = dict(described, slices=acc.n)
        meta = build_meta(extractor=extractor, dims=int(pipeline.dims), convention=convention.name,
                          weights=resolved.describe(), n=acc.n, source=described_plane,
                          extra={**network_meta(path), "protocol": protocol, "plane": plane})
        out[plane] = acc.statistics(meta)
    return out


def _default_batch(device: Any) -> int:
    from fidkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE

    return DEFAULT_BATCH_SIZE if getattr(device, "type", str(device)) == "cuda" else DEFAULT_CPU_BATCH_SIZE


# ----------------------------------------------------------------------------- volume-3d
def volume_protocol_meta(volume_shape: Sequence[int], spacing: Any, convention: str) -> dict[str, Any]:
    """``meta["protocol"]`` of ``volume-3d``: layout, resampling, input shape, normalisation."""
    from fidkit.dicom.volume import CANONICAL_LAYOUT

    return {"name": VOLUME_3D, "layout": CANONICAL_LAYOUT,
            "spacing_mm": None if spacing is None else [None if s is None else float(s) for s in spacing],
            "resize": "stretch (scipy.ndimage.zoom order 0 to the input shape; MedicalNet's rule, "
                      "spacing ignored)",
            "input_shape": [int(s) for s in volume_shape], "normalisation": convention,
            "features": "the last stage averaged over D, H, W"}


def prepared_volume(source: Any, n: int, volume_shape: Sequence[int], convention: str) -> Any:
    """Volume ``n`` of a dataset as the 3-D network takes it: canonical layout, stretched to
    ``volume_shape`` (D, H, W), normalised; float32 tensor (1, D, H, W)."""
    from fidkit.dicom.volume import canonical
    from fidkit.extractors.medicalnet import prepare_volume

    volume = canonical(source.volume(n))
    return prepare_volume(volume.array, volume.spacing, input_shape=tuple(volume_shape),
                          resize="stretch", convention=convention)


def volume_statistics(source: Any, pipeline: Pipeline, runtime: Runtime = Runtime(), *,
                      volume_shape: Sequence[int] | None = None,
                      spacing: Sequence[float | None] | None = None,
                      recursive: bool = False) -> Statistics:
    """The ``volume-3d`` statistics of a volume dataset through a 3-D extractor
    (``pipeline.features``, e.g. ``"medicalnet-resnet10"``): one feature vector per volume.

    ``volume_shape``: the network input (D, H, W) voxels (None: the extractor's, 56 x 448 x 448
    for MedicalNet; smaller is much cheaper, and the features depend on it). ``spacing``:
    resample each volume to (z, y, x) mm first (None: as stored). ``meta["protocol"]`` records
    both. Raises InputError, UsageError, WeightsError.
    """
    import torch

    from fidkit.extractors import get_extractor
    from fidkit.extractors.runner import fp32_numerics, load_model, resolve_device
    from fidkit.statistics import StatisticsAccumulator
    from fidkit.statistics.provenance import build_meta

    pipeline = pipeline.resolved()
    extractor = get_extractor(pipeline.features)
    if not extractor.options.get("volumetric"):
        raise UsageError(f"volume-3d needs a 3-D extractor, not {extractor.name}")
    shape = tuple(int(s) for s in (volume_shape or extractor.options["input_shape"]))
    src = open_volumes(source, recursive=recursive, spacing=spacing, protocol=VOLUME_3D)
    tap = extractor.tap_for(pipeline.dims)
    device = resolve_device(runtime.device)
    batch_size = runtime.batch_size or (4 if device.type == "cuda" else 1)
    model, resolved = load_model(pipeline.weights, outputs=(tap,), device=device,
                                 progress=bool(runtime.progress), features=extractor)
    acc = StatisticsAccumulator(int(pipeline.dims))
    count = len(src.entries)
    bar = _progress(count, runtime, "volume-3d")
    workers = 1 if runtime.workers is None else int(runtime.workers)
    batch: list[Any] = []
    try:
        with torch.inference_mode(), fp32_numerics():
            for n, x in _ahead(lambda n: prepared_volume(src, n, shape, pipeline.convention),
                               count, workers):
                batch.append(x)
                if len(batch) == batch_size or n == count - 1:
                    acc.update(model(torch.stack(batch).to(device))[tap])
                    batch = []
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if acc.n < 2:
        raise InputError(f"{src.path}: only {acc.n} volume(s); the statistics need at least 2 "
                         "(and far more than the feature dimension for a stable number)")
    meta = build_meta(extractor=extractor, dims=int(pipeline.dims), convention=pipeline.convention,
                      weights=resolved.describe(), n=acc.n, source=describe_volumes(src),
                      extra={"network": "reference",
                             "protocol": volume_protocol_meta(shape, spacing, str(pipeline.convention))})
    return acc.statistics(meta)


# ----------------------------------------------------------------------------- comparing
_OPTION_KEYS = ("features", "dims", "convention", "weights", "network", "device", "batch_size",
                "workers", "progress", "recursive", "dicom", "skip_bad")


def _split(options: Mapping[str, Any], protocol: str) -> tuple[Pipeline, Runtime, bool, Any]:
    """Pipeline, Runtime, ``recursive`` and the volume spacing from compare's options; DICOM
    display choices that a protocol does not use are refused."""
    unknown = sorted(set(options) - set(_OPTION_KEYS))
    if unknown:
        raise UsageError(f"compare() got unknown option(s) {', '.join(unknown)}")
    weights = options.get("weights")
    features = options.get("features")
    if protocol == MAISI and features is None:
        features = MAISI_DEFAULT_FEATURES
    if isinstance(weights, Mapping):
        from fidkit.extractors import get_extractor

        weights = weights.get(get_extractor(features).name, weights.get(None))
    pipeline = Pipeline(features=features, dims=options.get("dims"),
                        convention=options.get("convention"), weights=weights,
                        network=options.get("network"))
    runtime = Runtime(**{k: options[k] for k in ("device", "batch_size", "workers", "progress")
                         if options.get(k) is not None})
    spacing = None
    dicom = options.get("dicom")
    if dicom is not None:
        used = [name for name, value, default in (("window (--window)", dicom.window, "file"),
                                                  ("axis (--axis)", dicom.axis, "axial"),
                                                  ("slices (--slices)", dicom.slices, "all"))
                if value != default]
        if protocol == MAISI:
            raise UsageError("maisi-2.5d clips HU to [-1000, 1000] and cuts all three planes "
                             "itself: dicom= options (--spacing/--window/--axis/--slices) do not "
                             "apply (use maisi=MaisiOptions(...): --maisi-spacing, --maisi-shape, "
                             "--maisi-center-ratio)")
        if used:
            raise UsageError(f"volume-3d feeds the volumes' values to the network: {', '.join(used)} "
                             "do not apply (its spacing, --spacing, does)")
        spacing = dicom.spacing
    return pipeline, runtime, bool(options.get("recursive")), spacing


def _stats_side(value: Any) -> bool:
    from fidkit.api import is_stats_path

    if isinstance(value, Statistics):
        return True
    if isinstance(value, Mapping):
        return True
    return isinstance(value, (str, os.PathLike)) and is_stats_path(value)


def _load_side(value: Any, protocol: str, name: str) -> dict[str, Statistics]:
    """A side given as statistics: one Statistics / stats file (``volume-3d``), or a mapping
    plane -> Statistics / stats file (``maisi-2.5d``)."""
    from fidkit.api import load_statistics
    from fidkit.dicom.maisi import PLANES

    def one(v: Any) -> Statistics:
        return v if isinstance(v, Statistics) else load_statistics(v)

    if protocol == VOLUME_3D:
        if isinstance(value, Mapping):
            raise UsageError(f"{name}: volume-3d takes one statistics file per side, not a mapping")
        return {"volume": one(value)}
    if not isinstance(value, Mapping) or set(value) != set(PLANES):
        raise UsageError(f"{name}: maisi-2.5d statistics come as one per plane: give a mapping "
                         f"{{'xy': ..., 'yz': ..., 'zx': ...}} of Statistics or stats files, or "
                         "the volumes themselves")
    out = {}
    for plane in PLANES:
        stats = one(value[plane])
        if stats.meta.get("plane") not in (None, plane):
            raise UsageError(f"{name}: the statistics given for plane {plane} are of plane "
                             f"{stats.meta.get('plane')}")
        out[plane] = stats
    return out


def _expected_protocol(protocol: str, pipeline: Pipeline, maisi: Any, volume_shape: Any,
                       spacing: Any) -> dict[str, Any]:
    from fidkit.extractors import get_extractor

    if protocol == MAISI:
        from fidkit.dicom.maisi import MaisiOptions

        resolved = _maisi_pipeline(pipeline)
        convention = get_extractor(resolved.features).convention(resolved.convention)
        return maisi_protocol_meta(maisi or MaisiOptions(), _takes_maisi_inputs(convention),
                                   convention.name)
    resolved = pipeline.resolved()
    shape = volume_shape or get_extractor(resolved.features).options["input_shape"]
    return volume_protocol_meta(shape, spacing, str(resolved.convention))


def compare_volumes(generated: Any, reference: Any, *, protocol: str,
                    metrics: Sequence[str] = ("fid",), force: bool = False, maisi: Any = None,
                    volume_shape: Sequence[int] | None = None,
                    msssim: Mapping[str, Any] | None = None,
                    options: Mapping[str, Any] | None = None) -> Any:
    """:func:`fidkit.compare` for volume datasets under ``protocol`` (``"maisi-2.5d"`` or
    ``"volume-3d"``): ``fid`` (per plane and the mean for 2.5-D; one FD for 3-D) and
    ``msssim`` (diversity of the generated side, :mod:`fidkit.diversity`).

    Each side is a volume dataset (NIfTI file or folder, DICOM series folders), or statistics
    made with the same protocol (3-D: a :class:`Statistics` or stats file; 2.5-D: a mapping
    plane -> Statistics / stats file). Returns a :class:`fidkit.report.Report`; raises
    ProvenanceMismatchError when the sides were made differently (unless ``force``),
    UsageError, InputError, WeightsError.
    """
    from fidkit.api import check_comparable
    from fidkit.report import METRICS, SIDES, Report, _describe_side

    options = dict(options or {})
    names = list(metrics)
    bad = [m for m in names if m not in ("fid", "msssim")]
    if bad:
        raise UsageError(f"{protocol} computes fid and msssim; {', '.join(bad)} "
                         "are not defined for it (metrics= / --metrics fid,msssim)")
    pipeline, runtime, recursive, spacing = _split(options, protocol)
    if protocol == MAISI and volume_shape is not None:
        raise UsageError("volume_shape= (--volume-shape) is volume-3d's input shape; maisi-2.5d's "
                         "is MaisiOptions(target_shape=...) (--maisi-shape)")
    if protocol == VOLUME_3D and maisi is not None:
        raise UsageError("MAISI options (maisi= / --maisi-shape, ...) apply to "
                         "protocol='maisi-2.5d' (--protocol maisi-2.5d) only")
    inputs = (_describe_side(generated), _describe_side(reference))
    report = Report(inputs=inputs)
    if "fid" in names:
        expected = _expected_protocol(protocol, pipeline, maisi, volume_shape, spacing)
        given = [_stats_side(v) for v in (generated, reference)]
        sides: list[dict[str, Statistics] | None] = [
            _load_side(v, protocol, f"{side} ({inputs[i]})") if given[i] else None
            for i, (side, v) in enumerate(zip(SIDES, (generated, reference)))]
        for i, side in enumerate(sides):  # before minutes of network time on the other side
            if side is not None and not force:
                _check_protocol(side, expected, f"{SIDES[i]} ({inputs[i]})")
        for i, value in enumerate((generated, reference)):
            if sides[i] is None:
                if protocol == MAISI:
                    sides[i] = maisi_statistics(value, maisi, pipeline, runtime, recursive=recursive)
                else:
                    sides[i] = {"volume": volume_statistics(value, pipeline, runtime,
                                                            volume_shape=volume_shape,
                                                            spacing=spacing, recursive=recursive)}
        gen, ref = sides[0], sides[1]
        assert gen is not None and ref is not None
        labels = (f"generated ({inputs[0]})", f"reference ({inputs[1]})")
        for part in gen:
            for line in check_comparable(gen[part], ref[part], force=force, names=labels):
                report.warn(line)
        _fid(report, gen, ref, protocol)
    if "msssim" in names:
        from fidkit.diversity import volume_diversity

        if _stats_side(generated):
            raise UsageError(f"msssim measures the generated side's samples: give it as volumes, "
                             f"not the statistics {inputs[0]}")
        result = volume_diversity(generated, protocol, maisi=maisi, volume_shape=volume_shape,
                                  spacing=spacing, recursive=recursive, features=pipeline.features,
                                  **dict(msssim or {}))
        report.values["msssim"] = {"mean": result.mean, "std": result.std, "pairs": result.pairs}
        report.described["msssim"] = {"extractor": None, "describes": METRICS["msssim"].describes,
                                      "n_generated": result.params.get("samples"),
                                      "n_reference": None, "protocol": protocol, **result.params}
    return report


def _check_protocol(side: dict[str, Statistics], expected: dict[str, Any], name: str) -> None:
    from fidkit.statistics.provenance import differences

    for stats in side.values():
        meta = dict(stats.meta)
        if meta.get("protocol") == expected:
            continue
        lines = differences(meta, dict(meta, protocol=expected), (name, "this run"))
        raise ProvenanceMismatchError("; ".join(lines or [f"{name} was not made with "
                                                          f"{expected['name']}"])
                                      + "; refusing to compare (force=True / --force compares anyway)")


def _fid(report: Any, gen: dict[str, Statistics], ref: dict[str, Statistics], protocol: str) -> None:
    from fidkit.distances.frechet import frechet
    from fidkit.statistics.provenance import extractor_of

    extractor = extractor_of(next(iter(gen.values())).meta)
    details, values = {}, {}
    for part in gen:
        result = frechet(gen[part], ref[part])
        values[part] = result.value
        details[part] = result.to_dict()
        for line in result.warnings:
            report.warn(line if part == "volume" else f"{part}: {line}")
        key = extractor if part == "volume" else f"{extractor}:{part}"
        report.statistics[key] = (gen[part], ref[part])
    if protocol == VOLUME_3D:
        report.values["fid"] = values["volume"]
        report.details = details["volume"]
        report.described["fid"] = {"extractor": extractor, "describes": "both",
                                   "protocol": protocol, "distance": "FD (3-D features)",
                                   "unit": "volumes", "n_generated": gen["volume"].n,
                                   "n_reference": ref["volume"].n}
        return
    report.values["fid"] = float(np.mean(list(values.values())))
    report.details = details
    report.described["fid"] = {"extractor": extractor, "describes": "both", "protocol": protocol,
                               "distance": "mean of the per-plane Fréchet distances",
                               "unit": "slices",
                               "n_generated": {p: s.n for p, s in gen.items()},
                               "n_reference": {p: s.n for p, s in ref.items()},
                               "volumes_generated": _volumes(gen), "volumes_reference": _volumes(ref)}
    for part, value in values.items():
        report.values[f"fid_{part}"] = value
        report.described[f"fid_{part}"] = {"extractor": extractor, "describes": "both",
                                           "protocol": protocol, "plane": part, "unit": "slices",
                                           "n_generated": gen[part].n, "n_reference": ref[part].n}


def _volumes(side: dict[str, Statistics]) -> Any:
    return (next(iter(side.values())).meta.get("source") or {}).get("volumes")
