"""Options shared by the verbs that compute statistics (one table of defaults for CLI and API)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fidkit.defaults import (CONVENTION_NAMES, DEFAULT_BATCH_SIZE, DEFAULT_CONVENTION,
                             DEFAULT_CPU_BATCH_SIZE,
                             DEFAULT_DIMS, TAP_DIMS)
from fidkit.errors import UsageError


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    from fidkit.cli.dicom import accept_negative_values

    accept_negative_values(parser)  # so that --window -1000,1000 reads as a value
    g = parser.add_argument_group("pipeline")
    g.add_argument("--dims", type=int, default=DEFAULT_DIMS, choices=TAP_DIMS,
                   help=f"Inception tap: 64, 192, 768 or 2048 = pool_3 (default {DEFAULT_DIMS})")
    g.add_argument("--convention", default=DEFAULT_CONVENTION, choices=CONVENTION_NAMES,
                   help=f"resize/normalise convention (default {DEFAULT_CONVENTION}; see README)")
    g.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help=f"images per network batch (default {DEFAULT_BATCH_SIZE} on a GPU, "
                        f"{DEFAULT_CPU_BATCH_SIZE} on CPU, measured)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--workers", type=_non_negative, default=None, metavar="N",
                   help="decoding threads, or processes on CUDA (default: half the CPUs, 1 to 8; 0 "
                        "decodes between batches)")
    g.add_argument("--weights", default=None, metavar="PATH",
                   help="FID Inception weights file (default: $FIDKIT_WEIGHTS, else the cached or "
                        "downloaded canonical file)")
    g.add_argument("--recursive", action="store_true", help="read image folders recursively")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (reported) instead of stopping at the first")
    g.add_argument("--exact", action="store_true",
                   help="run the network as pytorch-fid writes it (NCHW, batch norm unfolded): "
                        "the reference; ~1.4x slower on CPU than the default, which gives the "
                        "same bits (checked at start)")
    g.add_argument("--fold-bn", action="store_true",
                   help="fold batch norm into the convolutions, channels-last: a ~15%% faster "
                        "CPU forward, but features differ from the reference by float32 rounding "
                        "(recorded in the statistics); with the heap setting it needs for flat "
                        "memory it is no faster end to end")
    g.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1
    g.add_argument("--no-cache", action="store_true",
                   help="recompute folder statistics even if an unchanged cached copy exists")
    d = parser.add_argument_group("DICOM folders")
    d.add_argument("--spacing", default=None, metavar="MM",
                   help="resample to this spacing in mm: Z or Z,Y,X (default: see README)")
    d.add_argument("--window", default=None, metavar="LO,HI|PRESET",
                   help="display window: a value range, a preset (brain, soft-tissue, lung, bone) or 'file'")
    d.add_argument("--axis", default=None, choices=("axial", "coronal", "sagittal"),
                   help="slice direction (default axial)")
    d.add_argument("--slices", default=None, metavar="SEL",
                   help="which slices: all, central:FRACTION, every:K (default all)")


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`fidkit.api.compute_statistics` from parsed options."""
    kwargs: dict[str, Any] = dict(
        dims=args.dims, convention=args.convention, batch_size=args.batch_size,
        device=args.device, workers=args.workers, weights=args.weights,
        recursive=args.recursive, skip_bad=args.skip_bad, cache=not args.no_cache,
        fast=False if args.exact else ("folded" if args.fold_bn else None),
    )
    if args.exact and args.fold_bn:
        raise UsageError("--exact and --fold-bn ask for two different networks; give one")
    if any(getattr(args, k, None) is not None for k in ("spacing", "window", "axis", "slices")):
        from fidkit.dicom.source import DicomOptions

        kwargs["dicom"] = DicomOptions.from_cli(args.spacing, args.window, args.axis, args.slices)
    return kwargs


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


def non_canonical_note(meta: dict) -> str | None:
    w = meta.get("weights") or {}
    if w and not w.get("canonical", False):
        return (f"computed with NON-canonical weights (SHA-256 {str(w.get('sha256'))[:12]}...): "
                "not an FID comparable to published numbers")
    return None
