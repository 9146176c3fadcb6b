"""Options shared by the verbs that compute statistics (one table of defaults for CLI and API)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fidkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE, DEFAULT_DIMS
from fidkit.errors import UsageError

#: The values of --network (fidkit.extractors.runner.NETWORK_CHOICES, listed here so that
#: --help does not import torch; tests check the two agree).
NETWORK_CHOICES = ("auto", "reference", "blocked")


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    from fidkit.cli.dicom import accept_negative_values

    accept_negative_values(parser)  # so that --window -1000,1000 reads as a value
    g = parser.add_argument_group("pipeline")
    g.add_argument("--features", default=None, metavar="NAME",
                   help="feature extractor (default inception; 'fidkit features list' shows "
                        "each one, its dims, conventions and licence)")
    g.add_argument("--dims", type=_positive, default=None, metavar="D",
                   help=f"which tap of the extractor, by its dimension (default: the extractor's; "
                        f"inception {DEFAULT_DIMS} = pool_3, or 64, 192, 768)")
    g.add_argument("--convention", default=None, metavar="NAME",
                   help="preprocessing convention of the extractor (default: its own; inception: "
                        "tf1, pytorch-fid, clean, antialias; see README)")
    g.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help=f"images per network batch (default {DEFAULT_BATCH_SIZE} on a GPU, "
                        f"{DEFAULT_CPU_BATCH_SIZE} on CPU, measured)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--workers", type=_non_negative, default=None, metavar="N",
                   help="decoding threads, or processes on CUDA (default: half the CPUs, 1 to 8; 0 "
                        "decodes between batches)")
    g.add_argument("--weights", default=None, action="append", metavar="[NAME=]PATH",
                   help="weights file of the extractor (default: $FIDKIT_WEIGHTS for inception, "
                        "else the cached or downloaded canonical file); NAME=PATH for another "
                        "extractor a metric uses (repeatable)")
    g.add_argument("--recursive", action="store_true", help="read image folders recursively")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (reported) instead of stopping at the first")
    g.add_argument("--network", default="auto", choices=NETWORK_CHOICES,
                   help="which copy of the network runs: auto (default: the blocked CPU copy of "
                        "the Inception where it checks out, else the reference), reference (the "
                        "module as pytorch-fid writes it), blocked; all give the same bits")
    g.add_argument("--no-cache", action="store_true",
                   help="recompute folder statistics even if an unchanged cached copy exists")
    d = parser.add_argument_group("DICOM folders")
    d.add_argument("--spacing", default=None, metavar="MM",
                   help="resample to this spacing in mm: Z or Z,Y,X (default: see README)")
    d.add_argument("--window", default=None, metavar="LO,HI|PRESET",
                   help="display window: a value range, a preset (brain, soft-tissue, lung, bone) or 'file'")
    d.add_argument("--axis", default=None, choices=("axial", "coronal", "sagittal", "all"),
                   help="slice direction (default axial; all: the three planes of every volume)")
    d.add_argument("--slices", default=None, metavar="SEL",
                   help="which slices: all, central:FRACTION, every:K (default all)")


def add_volume_options(parser: argparse.ArgumentParser) -> None:
    """Options of the volume protocols (:mod:`fidkit.volumes`) and of MS-SSIM diversity
    (:mod:`fidkit.diversity`)."""
    v = parser.add_argument_group("medical volumes (NIfTI files/folders, DICOM series folders)")
    v.add_argument("--protocol", default=None, choices=("maisi-2.5d", "volume-3d"),
                   help="maisi-2.5d: MONAI MAISI's 2.5-D FID (XY/YZ/ZX planes of every volume, "
                        "default --features radimagenet-resnet50; fid = the planes' mean); "
                        "volume-3d: whole volumes through a 3-D extractor (the default with "
                        "--features medicalnet-*)")
    v.add_argument("--maisi-shape", default=None, metavar="X,Y,Z",
                   help="maisi-2.5d pad/crop target in voxels (default 512,512,512)")
    v.add_argument("--maisi-spacing", default=None, metavar="X,Y,Z",
                   help="maisi-2.5d: resample to this spacing in mm first (default: as stored)")
    v.add_argument("--maisi-center-ratio", type=float, default=None, metavar="R",
                   help="maisi-2.5d: keep the central fraction R of each plane's slices "
                        "(default all)")
    v.add_argument("--volume-shape", default=None, metavar="D,H,W",
                   help="volume-3d network input in voxels (default MedicalNet's 56,448,448; the "
                        "features depend on it)")
    m = parser.add_argument_group("MS-SSIM diversity (--metrics msssim)")
    m.add_argument("--msssim-pairs", type=_positive, default=None, metavar="N",
                   help="random pairs of generated samples (default 1000)")
    m.add_argument("--msssim-seed", type=_non_negative, default=None, metavar="S",
                   help="seed of the pair draw (default 0)")
    m.add_argument("--msssim-dims", type=int, default=None, choices=(2, 3),
                   help="2: slices, 3: volumes (default 3 for volume-3d, else 2)")
    m.add_argument("--msssim-scales", type=_positive, default=None, metavar="M",
                   help="first M of the 5 standard scales, weights renormalised (small samples)")
    m.add_argument("--msssim-kernel", type=_positive, default=None, metavar="K",
                   help="Gaussian window size, odd (default 11)")


def volume_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`fidkit.compare` from :func:`add_volume_options`' options."""
    out: dict[str, Any] = {}
    if getattr(args, "protocol", None) is not None:
        out["protocol"] = args.protocol
    maisi = {}
    if getattr(args, "maisi_shape", None):
        from fidkit.volumes import parse_shape

        maisi["target_shape"] = parse_shape(args.maisi_shape, "--maisi-shape")
    if getattr(args, "maisi_spacing", None):
        maisi["spacing"] = _mm_triple(args.maisi_spacing)
    if getattr(args, "maisi_center_ratio", None) is not None:
        maisi["center_slices_ratio"] = args.maisi_center_ratio
    if maisi:
        from fidkit.dicom.maisi import MaisiOptions

        out["maisi"] = MaisiOptions(**maisi)
    if getattr(args, "volume_shape", None):
        from fidkit.volumes import parse_shape

        out["volume_shape"] = parse_shape(args.volume_shape)
    msssim = {key: getattr(args, f"msssim_{flag}") for key, flag in (
        ("pairs", "pairs"), ("seed", "seed"), ("dims", "dims"), ("scales", "scales"),
        ("kernel_size", "kernel")) if getattr(args, f"msssim_{flag}", None) is not None}
    if msssim:
        out["msssim"] = msssim
    return out


def _mm_triple(text: str) -> tuple[float, float, float]:
    import math

    try:
        values = tuple(float(w) for w in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"bad --maisi-spacing {text!r}; give three positive mm values X,Y,Z, "
                         "e.g. 1.0,1.0,1.0")
    return values  # type: ignore[return-value]


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`fidkit.compute_statistics` / :func:`fidkit.compare` from
    parsed options."""
    kwargs: dict[str, Any] = dict(
        features=args.features, dims=args.dims, convention=args.convention,
        batch_size=args.batch_size, device=args.device, workers=args.workers,
        weights=parse_weights(args.weights), network=args.network,
        recursive=args.recursive, skip_bad=args.skip_bad,
    )
    if any(getattr(args, k, None) is not None for k in ("spacing", "window", "axis", "slices")):
        from fidkit.dicom.source import DicomOptions

        kwargs["dicom"] = DicomOptions.from_cli(args.spacing, args.window, args.axis, args.slices)
    return kwargs


def parse_weights(values: list[str] | None) -> Any:
    """``--weights`` values: one plain PATH (the chosen extractor's file) and/or NAME=PATH pairs.
    Returns None, a path, or a dict extractor name -> path (the plain PATH under key None)."""
    if not values:
        return None
    plain = [v for v in values if "=" not in v]
    named = dict(v.split("=", 1) for v in values if "=" in v)
    if len(plain) > 1:
        raise UsageError(f"--weights given {len(plain)} plain paths ({', '.join(plain)}); give one, "
                         "and NAME=PATH for the other extractors")
    if not named:
        return plain[0]
    if plain:
        named[None] = plain[0]  # type: ignore[index]
    return named


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def note(message: str) -> None:
    """A progress or warning line on stderr (stdout stays machine-readable)."""
    print(f"fidkit: {message}", file=sys.stderr)
