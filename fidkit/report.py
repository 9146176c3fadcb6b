"""``fidkit.compare``: every metric between a generated set and a reference set, as one
:class:`Report` — the one call behind ``fidkit compare``.

Sides, always in this order: **generated first, reference second** (as ``pytorch-fid`` and
``clean-fid`` take them). The Fréchet distance and KID are symmetric; the Inception Score, the
bootstrap interval and FID-infinity describe the generated side; precision is the fraction of
generated samples inside the reference manifold and recall the converse. Each value in the
report says which side(s) and which extractor it describes.

>>> import fidkit
>>> report = fidkit.compare("fake/", "ref.pkl", metrics=("fid",))   # doctest: +SKIP
>>> report.values["fid"]                                           # doctest: +SKIP
12.345678
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from fidkit.errors import FidkitWarning, InputError, UsageError
from fidkit.statistics import Statistics

SIDES = ("generated", "reference")


@dataclass(frozen=True)
class Metric:
    """A metric ``compare`` knows: its default extractor (None: the one the caller chose, the
    FID Inception by default), whether it needs per-image features of the generated and the
    reference side, and whether it needs the Inception logits of the generated side."""

    name: str
    description: str
    describes: str  # "both", "generated"
    features: str | None = None
    per_image_generated: bool = False
    per_image_reference: bool = False
    logits: bool = False
    convention: str | None = None  # with its default extractor: that extractor's convention


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", "Fréchet distance of the two feature distributions", "both"),
    Metric("kid", "kernel inception distance (unbiased MMD², cubic kernel, subsets)", "both",
           per_image_generated=True, per_image_reference=True),
    Metric("is", "Inception Score of the generated side", "generated", features="inception",
           logits=True),
    Metric("pr", "precision (generated inside the reference manifold) and recall (the converse), "
                 "k-NN manifolds (Kynkäänniemi et al. 2019; torch-fidelity's conventions)", "both",
           features="vgg16", per_image_generated=True, per_image_reference=True),
    Metric("dc", "density and coverage (Naeem et al. 2020; the prdc package's conventions)", "both",
           features="vgg16", per_image_generated=True, per_image_reference=True),
    Metric("msssim", "MS-SSIM diversity: mean MS-SSIM between seeded random pairs of generated "
                     "slices or volumes (lower = more diverse; fidkit.diversity)", "generated"),
    Metric("cmmd", "CMMD: Gaussian-kernel MMD of L2-normalised CLIP embeddings, sigma 10, x1000 "
                   "(Jayasumana et al. 2024)", "both", features="clip-vit-l-14-336px",
           per_image_generated=True, per_image_reference=True),
)}

#: Default neighbourhood sizes: precision/recall (torch-fidelity, Kynkäänniemi et al.) and
#: density/coverage (Naeem et al., prdc).
DEFAULT_PR_K = 3
DEFAULT_DC_K = 5


@dataclass
class Report:
    """The result of :func:`compare`.

    ``values``: metric name -> value (a float for ``fid``, a dict for the others: KID's mean/std
    and subsets, IS's mean/std and splits, ``fid_ci``'s interval, ``fid_inf``'s value).
    ``described``: metric name -> {"extractor", "describes", "n_generated", "n_reference"}.
    ``statistics``: extractor name -> (generated, reference) :class:`Statistics`.
    ``details``: the Fréchet computation (``FrechetResult.to_dict()``), when FID was asked.
    ``warnings``: one-line messages (also raised as :class:`FidkitWarning` by :func:`compare`).
    """

    inputs: tuple[str, str]
    values: dict[str, Any] = field(default_factory=dict)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)
    statistics: dict[str, tuple[Statistics, Statistics]] = field(default_factory=dict)
    details: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def generated(self) -> Statistics:
        return next(iter(self.statistics.values()))[0]

    @property
    def reference(self) -> Statistics:
        return next(iter(self.statistics.values()))[1]

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: each value, what it describes, both sides' provenance."""
        out: dict[str, Any] = dict(self.values)
        out["metrics"] = {name: {"value": self.values.get(name), **info}
                          for name, info in self.described.items()}
        if self.details is not None:
            out["details"] = self.details
        for index, side in enumerate(SIDES):
            metas = {name: pair[index].meta for name, pair in self.statistics.items()}
            out[side] = {"input": self.inputs[index], "meta": next(iter(metas.values()), None)}
            if len(metas) > 1:
                out[side]["meta_by_extractor"] = metas
        out["warnings"] = list(self.warnings)
        return out

    def lines(self) -> list[str]:
        """The text form: one ``name: value`` line per metric, then the sides."""
        rows = [f"{name}: {format_value(value)}" for name, value in self.values.items()]
        rows.append(f"generated: {self.inputs[0]}")
        rows.append(f"reference: {self.inputs[1]}")
        extractors = sorted({info["extractor"] for info in self.described.values()
                             if info.get("extractor")})
        rows.append(f"features: {', '.join(extractors)}")
        return rows


def format_value(value: Any) -> str:
    """A metric value as one short line of text."""
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        if "low" in value and "high" in value:
            return f"[{value['low']:.6f}, {value['high']:.6f}] at {value['level']:.0%}"
        if "value" in value:
            ci = value.get("interval")
            extra = f" [{ci['low']:.6f}, {ci['high']:.6f}]" if ci else ""
            return f"{value['value']:.6f}{extra}"
        return "  ".join(f"{k} {format_value(v)}" for k, v in value.items())
    return str(value)


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """Metric names from a comma-separated string or a sequence. Raises UsageError."""
    names = ([m.strip().lower() for m in metrics.split(",")] if isinstance(metrics, str)
             else [str(m).strip().lower() for m in metrics])
    names = [m for m in names if m]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UsageError(f"metrics {','.join(names) or '(none)'}: choose from "
                         f"{', '.join(METRICS)} (metrics= / --metrics)")
    return list(dict.fromkeys(names))


_PIPELINE_KEYS = ("features", "dims", "convention", "weights", "network")
_RUNTIME_KEYS = ("device", "batch_size", "workers", "progress")
_INPUT_KEYS = ("recursive", "dicom", "skip_bad")


def compare(generated: Any, reference: Any, *, metrics: str | Sequence[str] = ("fid",),
            force: bool = False, ci: float | None = None, fid_inf: bool = False,
            manifest: str | os.PathLike | None = None, cache: bool = True,
            pr_k: int = DEFAULT_PR_K, dc_k: int = DEFAULT_DC_K, protocol: str | None = None,
            maisi: Any = None, volume_shape: Sequence[int] | None = None,
            msssim: Mapping[str, Any] | None = None, **options: Any) -> Report:
    """Every metric in ``metrics`` between ``generated`` and ``reference``.

    Each side is an image folder, a DICOM folder, an image array (file, numpy uint8
    (N, H, W, 3) or torch (N, 3, H, W)), a stats file or a :class:`Statistics`; a stats file
    serves the Fréchet distance, and every other metric too when the per-image features file
    written beside it (``fidkit stats --keep-features``, ``ref.pkl`` -> ``ref.features``) exists.
    Each metric uses its own extractor unless ``features`` names one: fid/kid/is the FID
    Inception, pr/dc VGG16 (torch-fidelity's), cmmd CLIP ViT-L/14@336px. ``pr_k`` / ``dc_k``: the
    k-th neighbour of precision/recall and density/coverage.
    ``options``: what :func:`fidkit.compute_statistics` takes (``features``, ``dims``,
    ``convention``, ``weights``, ``network``, ``device``, ``batch_size``, ``workers``,
    ``progress``, ``recursive``, ``dicom``, ``skip_bad``). ``weights`` may be a mapping
    extractor name -> file when metrics use several extractors.
    ``ci``: a confidence level for a bootstrap interval of the FID; ``fid_inf``: FID-infinity
    (both resample the generated side's features; see docs/sample_size.md for their cost).
    ``manifest``: write the generated side's used and skipped items to this JSON file.
    Medical volumes (:mod:`fidkit.volumes`): ``protocol="maisi-2.5d"`` (MAISI's 2.5-D FID:
    ``fid_xy``, ``fid_yz``, ``fid_zx`` and their mean ``fid``; ``maisi`` a
    :class:`fidkit.dicom.maisi.MaisiOptions`) or ``"volume-3d"`` (the default with a 3-D
    extractor such as ``features="medicalnet-resnet10"``; ``volume_shape`` its (D, H, W) input).
    ``msssim``: options of the ``msssim`` metric (:mod:`fidkit.diversity`: ``pairs``, ``seed``,
    ``dims``, ``scales``, ``kernel_size``).
    Raises ProvenanceMismatchError (sides made differently, unless ``force``), InputError,
    UsageError, WeightsError; warns :class:`FidkitWarning` for each line in ``Report.warnings``.
    """
    from fidkit.api import is_stats_path

    names = parse_metrics(metrics)
    unknown = sorted(set(options) - set(_PIPELINE_KEYS + _RUNTIME_KEYS + _INPUT_KEYS))
    if unknown:
        raise UsageError(f"compare() got unknown option(s) {', '.join(unknown)}")
    inputs = (_describe_side(generated), _describe_side(reference))
    for side, value in zip(SIDES, (generated, reference)):  # both, before minutes on either
        if isinstance(value, (str, os.PathLike)) and not os.path.exists(value):
            _check_pattern(value, side)
    from fidkit.volumes import compare_volumes, resolve_protocol

    volume_protocol = resolve_protocol(protocol, options.get("features"))
    if volume_protocol is not None:
        if ci is not None or fid_inf or manifest is not None:
            raise UsageError(f"ci=, fid_inf= and manifest= (--ci, --fid-inf, --manifest) are not "
                             f"available with {volume_protocol}")
        return _finish(compare_volumes(generated, reference, protocol=volume_protocol,
                                       metrics=names, force=force, maisi=maisi,
                                       volume_shape=volume_shape, msssim=msssim, options=options))
    if maisi is not None or volume_shape is not None:
        raise UsageError("maisi= / volume_shape= (--maisi-*, --volume-shape) need a volume protocol "
                         "(--protocol maisi-2.5d, or a 3-D extractor)")
    diversity = "msssim" in names
    names = [name for name in names if name != "msssim"]
    if diversity and (isinstance(generated, Statistics) or (
            isinstance(generated, (str, os.PathLike)) and is_stats_path(generated))):
        raise UsageError(f"msssim measures the generated side's images: give them, not the "
                         f"statistics {inputs[0]}")
    stats_side = [isinstance(v, Statistics) or (isinstance(v, (str, os.PathLike))
                                                and is_stats_path(v))
                  for v in (generated, reference)]
    kept = [_kept_features(v) if stats_side[i] else None
            for i, v in enumerate((generated, reference))]
    resampled = ci is not None or fid_inf
    for name in names:
        metric = METRICS[name]
        if metric.logits and stats_side[0]:
            raise UsageError(f"{name} needs the generated side's images, not the statistics "
                             f"{inputs[0]}")
        for index, needed in enumerate((metric.per_image_generated, metric.per_image_reference)):
            if needed and stats_side[index] and kept[index] is None:
                raise UsageError(f"{name} needs the {SIDES[index]} side's per-image features: give "
                                 f"images, or statistics made with --keep-features (compute_statistics("
                                 f"features_file=...)), "
                                 f"not {inputs[index]} alone")
    if resampled and stats_side[0]:
        raise UsageError(f"ci / fid_inf (--ci, --fid-inf) resample the generated side's features: "
                         f"give it as images, not the statistics {inputs[0]}")

    report = Report(inputs=inputs)
    groups = _group_by_extractor(names, options.get("features"), resampled)
    for extractor, members in groups.items():
        # What the library warns while making the sides is said with the report, after the
        # check below: a refused comparison is one line, not a warning then the refusal.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FidkitWarning)
            pair = _side_pair(generated, reference, extractor, members, stats_side, kept,
                              resampled, options, manifest if not report.statistics else None,
                              cache)
        _check(pair, force, inputs, report)
        for item in caught:
            if issubclass(item.category, FidkitWarning):
                report.warn(str(item.message))
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        report.statistics[extractor] = (pair[0].statistics, pair[1].statistics)
        for name in members:
            _compute(name, pair, report, extractor, pr_k=pr_k, dc_k=dc_k,
                     device=options.get("device"))
        if "fid" in members and resampled:
            _sample_size(pair, report, ci, fid_inf, bool(options.get("progress", True)))
    if diversity:
        _diversity(generated, report, options, msssim)
    return _finish(report)


def _finish(report: Report) -> Report:
    """Add the provenance warnings of every statistics used, and raise each warning once as a
    :class:`FidkitWarning` (at :func:`compare`'s caller)."""
    for stats_pair in report.statistics.values():
        for stats in stats_pair:
            for line in provenance_warnings(stats.meta):
                report.warn(line)
    for line in report.warnings:
        warnings.warn(FidkitWarning(line), stacklevel=3)
    return report


def _diversity(generated: Any, report: Report, options: Mapping[str, Any],
               msssim: Mapping[str, Any] | None) -> None:
    """``msssim`` of image / slice inputs (volume protocols: :func:`fidkit.volumes.compare_volumes`)."""
    from fidkit.diversity import source_diversity

    result = source_diversity(generated, recursive=bool(options.get("recursive")),
                              dicom=options.get("dicom"), **dict(msssim or {}))
    report.values["msssim"] = {"mean": result.mean, "std": result.std, "pairs": result.pairs}
    report.described["msssim"] = {"extractor": None, "describes": METRICS["msssim"].describes,
                                  "n_generated": result.params.get("samples"),
                                  "n_reference": None, **result.params}


@dataclass
class _Side:
    statistics: Statistics
    features: Any = None
    logits: Any = None


def _describe_side(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, Statistics):
        return "Statistics object"
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} {tuple(shape)}" if shape is not None else type(value).__name__


def _group_by_extractor(names: list[str], chosen: str | None, resampled: bool) -> dict[str, list[str]]:
    from fidkit.extractors import get_extractor

    groups: dict[str, list[str]] = {}
    for name in names:
        metric = METRICS[name]
        extractor = metric.features if metric.features == "inception" else (chosen or metric.features)
        groups.setdefault(get_extractor(extractor).name, []).append(name)
    if resampled and not any("fid" in members for members in groups.values()):
        groups.setdefault(get_extractor(chosen).name, []).append("fid")
    return groups


def _options_for(extractor: str, options: Mapping[str, Any],
                 members: Sequence[str] = ()) -> dict[str, Any]:
    """compute_statistics options for one extractor: the pipeline choices apply to the extractor
    the caller chose (``features``, default the FID Inception); other extractors get their
    defaults, and ``weights`` may name a file per extractor."""
    from fidkit.extractors import get_extractor

    chosen = get_extractor(options.get("features")).name
    out = {k: v for k, v in options.items() if k not in _PIPELINE_KEYS}
    weights = options.get("weights")
    if isinstance(weights, Mapping):
        out["weights"] = weights.get(extractor, weights.get(None) if extractor == chosen else None)
    elif extractor == chosen:
        out["weights"] = weights
    if extractor == chosen:
        for key in ("dims", "convention", "network"):
            if options.get(key) is not None:
                out[key] = options[key]
    else:  # a metric's own extractor, with the convention that metric's reference code uses
        own = [METRICS[m].convention for m in members if METRICS[m].convention]
        if own:
            out["convention"] = own[0]
    out["features"] = extractor
    return out


def _check_pattern(value: str | os.PathLike, side: str) -> None:
    """A side that is no existing path may still be a brace pattern of archives
    (``shards/train-{000000..000127}.tar``): raise InputError unless every path it names exists."""
    text = os.fspath(value)
    paths: list[str] = []
    if isinstance(text, str) and "{" in text:
        from fidkit.sources.archives import expand_braces

        paths = expand_braces(text)
    missing = [p for p in paths if not os.path.exists(p)]
    if len(paths) < 2:
        raise InputError(f"{value} does not exist; check the path ({side} side)")
    if missing:
        raise InputError(f"{missing[0]} does not exist ({len(missing)} of the {len(paths)} paths "
                         f"of {value}); check the path or the pattern ({side} side)")


def _kept_features(side: Any) -> Any:
    """The per-image features file beside a stats file (memory-mapped), or None."""
    if not isinstance(side, (str, os.PathLike)):
        return None
    from fidkit.statistics.featurestore import features_path, open_features

    path = features_path(side)
    return open_features(path) if path.is_file() else None


def _side_pair(generated: Any, reference: Any, extractor: str, members: list[str],
               stats_side: list[bool], kept: list[Any], resampled: bool,
               options: Mapping[str, Any], manifest: Any, cache: bool) -> tuple[_Side, _Side]:
    from fidkit.api import compute_statistics, load_statistics
    from fidkit.extraction import Pipeline, Runtime, extract

    opts = _options_for(extractor, options, members)
    sides = []
    for index, value in enumerate((generated, reference)):
        metrics = [METRICS[m] for m in members]
        per_image = any(m.per_image_generated if index == 0 else m.per_image_reference
                        for m in metrics) or (index == 0 and resampled and "fid" in members)
        # B's per-image features feed the bootstrap too when B is images (resampled as well).
        per_image = per_image or (index == 1 and resampled and "fid" in members
                                  and not stats_side[1])
        logits = index == 0 and any(m.logits for m in metrics)
        if isinstance(value, Statistics):
            sides.append(_Side(value))
        elif stats_side[index]:
            stored = kept[index]
            stats = load_statistics(value)
            if stored is not None and per_image:
                from fidkit.statistics.provenance import extractor_of

                if extractor_of(stored.meta) != extractor_of(stats.meta):  # pragma: no cover
                    raise InputError(f"{stored.path} holds {extractor_of(stored.meta)} features "
                                     f"but {value} {extractor_of(stats.meta)} statistics; "
                                     "recompute both with fidkit stats --keep-features")
            sides.append(_Side(stats, stored.features if stored is not None and per_image
                               else None))
        elif not per_image and not logits:
            sides.append(_Side(compute_statistics(
                value, manifest=manifest if index == 0 else None, cache=cache, **opts)))
        else:
            pipeline = Pipeline(**{k: opts.get(k) for k in _PIPELINE_KEYS})
            runtime = Runtime(**{k: opts[k] for k in _RUNTIME_KEYS if k in opts})
            result = extract(value, pipeline, runtime,
                             **{k: opts[k] for k in _INPUT_KEYS if k in opts},
                             keep_features=per_image,
                             keep_outputs=("logits_unbiased",) if logits else (),
                             manifest=manifest if index == 0 else None)
            if result.skipped:
                from fidkit.extraction import note

                note(f"skipped {len(result.skipped)} unreadable item(s), e.g. "
                     f"{result.skipped[0][1]}")
            sides.append(_Side(result.statistics(), result.features,
                               result.outputs.get("logits_unbiased")))
    return sides[0], sides[1]


def _check(pair: tuple[_Side, _Side], force: bool, inputs: tuple[str, str], report: Report) -> None:
    from fidkit.api import check_comparable

    names = (f"generated ({inputs[0]})", f"reference ({inputs[1]})")
    for line in check_comparable(pair[0].statistics, pair[1].statistics, force=force, names=names):
        report.warn(line)


def _compute(name: str, pair: tuple[_Side, _Side], report: Report, extractor: str, *,
             pr_k: int = DEFAULT_PR_K, dc_k: int = DEFAULT_DC_K, device: Any = None) -> None:
    gen, ref = pair
    info = {"extractor": extractor, "describes": METRICS[name].describes,
            "n_generated": gen.statistics.n,
            "n_reference": ref.statistics.n if METRICS[name].describes == "both" else None}
    if name == "fid":
        from fidkit.distances.frechet import frechet

        result = frechet(gen.statistics, ref.statistics,
                         names=("the generated side", "the reference side"))
        report.values["fid"] = result.value
        report.details = result.to_dict()
        for line in result.warnings:
            report.warn(line)
    elif name == "kid":
        from fidkit.distances.kid import (DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, kid,
                                          lowered_subset_warning)

        size = min(DEFAULT_SUBSET_SIZE, len(gen.features), len(ref.features))
        lowered = lowered_subset_warning(DEFAULT_SUBSET_SIZE, len(gen.features), len(ref.features))
        if lowered:
            report.warn(lowered)
        result = kid(gen.features, ref.features, subset_size=size, subsets=DEFAULT_SUBSETS)
        report.values["kid"] = {**result.to_dict(), "subset_size": size,
                                "subsets": DEFAULT_SUBSETS}
    elif name == "is":
        from fidkit.distances.inception_score import DEFAULT_SPLITS, inception_score

        splits = min(DEFAULT_SPLITS, len(gen.logits))
        result = inception_score(gen.logits, splits=splits)
        report.values["is"] = {**result.to_dict(), "splits": splits}
    elif name == "pr":
        from fidkit.distances.prdc import precision_recall

        result = precision_recall(ref.features, gen.features, k=pr_k, device=_torch_device(device))
        report.values["pr"] = {"precision": result.precision, "recall": result.recall,
                               "f_score": result.f_score}
        info["k"] = pr_k
    elif name == "dc":
        from fidkit.distances.prdc import density_coverage

        result = density_coverage(ref.features, gen.features, k=dc_k, device=_torch_device(device))
        report.values["dc"] = {"density": result.density, "coverage": result.coverage}
        info["k"] = dc_k
    elif name == "cmmd":
        from fidkit.distances.cmmd import DEFAULT_SCALE, DEFAULT_SIGMA, cmmd

        value = cmmd(_unit_rows(gen.features), _unit_rows(ref.features),
                     device=_torch_device(device))
        report.values["cmmd"] = float(value)
        info.update(sigma=DEFAULT_SIGMA, scale=DEFAULT_SCALE, estimator="biased (reference code)")
    report.described[name] = info


def _torch_device(device: Any) -> Any:
    """The device the blockwise sample metrics run on: the caller's CUDA device, else numpy."""
    return str(device) if device is not None and str(device).startswith("cuda") else None


def _unit_rows(features: Any) -> Any:
    """Rows divided by their L2 norm in float64 (CMMD compares directions, as the reference's
    CLIP model returns unit embeddings); read block by block so memmapped rows stay on disk."""
    import numpy as np

    rows = np.empty(features.shape, dtype=np.float64)
    for start in range(0, len(features), 65536):
        block = np.asarray(features[start:start + 65536], dtype=np.float64)
        rows[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return rows


def _sample_size(pair: tuple[_Side, _Side], report: Report, ci: float | None,
                 fid_inf: bool, progress: bool = True) -> None:
    from fidkit.distances.bootstrap import sample_size_report

    gen, ref = pair
    # The reference's features (when given as images) are resampled too; statistics stay fixed.
    result = sample_size_report(gen.features, ref.features if ref.features is not None
                                else ref.statistics, ci=ci is not None, fid_inf=fid_inf,
                                level=ci or 0.95, progress=progress)
    if result.interval is not None:
        report.values["fid_ci"] = result.interval.to_dict()
        report.described["fid_ci"] = {**report.described.get("fid", {}), "describes": "generated"}
    if result.fid_infinity is not None:
        report.values["fid_inf"] = result.fid_infinity.to_dict()
        report.described["fid_inf"] = {**report.described.get("fid", {}), "describes": "generated"}
    for line in result.warnings:
        report.warn(line)


def provenance_warnings(meta: Mapping[str, Any]) -> list[str]:
    """What every output made from these statistics must say: non-canonical weights, a
    restrictive weights licence."""
    out = []
    w = meta.get("weights") or {}
    if w and not w.get("canonical", False) and w.get("file") != "in-memory module":
        out.append(f"computed with NON-canonical weights (SHA-256 {str(w.get('sha256'))[:12]}...): "
                   "not comparable to published numbers")
    if w and w.get("hash_published") is False and w.get("canonical"):
        out.append(f"no SHA-256 is published for {meta.get('extractor')}'s weights: fidkit "
                   f"checked the file against the hash of its first download "
                   f"({str(w.get('sha256'))[:12]}...); compare that hash with other machines'")
    if meta.get("licence"):
        out.append(f"features of {meta.get('extractor')} whose weights are licensed "
                   f"{meta['licence']}: check that your use is allowed")
    return out
