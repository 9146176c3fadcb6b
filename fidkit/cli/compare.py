"""``fidkit compare A B``: the distance between two sides (folders or stats files)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from fidkit.cli.common import add_pipeline_options, emit_json, non_canonical_note, note, pipeline_kwargs

METRICS = ("fid", "kid", "is")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="FID (and KID, IS) between two folders or stats files",
                       description="Print the distance between A and B. Each side is an image "
                                   "folder, a DICOM folder, an image array (.npy/.npz) or a stats "
                                   "file (.pkl, .npz, .pt). A is the generated side for IS.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--metrics", default="fid", help="comma-separated: fid, kid, is (default fid)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--force", action="store_true",
                   help="compare even if the two sides were made differently (a warning is printed)")
    p.add_argument("--ci", type=float, default=None, nargs="?", const=0.95, metavar="LEVEL",
                   help="bootstrap confidence interval for FID (needs A to be images; default 0.95)")
    p.add_argument("--fid-inf", action="store_true",
                   help="also report FID-infinity (Chong & Forsyth 2020; needs A to be images)")
    p.add_argument("--montage", metavar="FILE.png", help="write a QC grid of A's inputs as the network sees them")
    p.add_argument("--manifest", metavar="FILE", help="write the list of A's files used and skipped (JSON)")
    add_pipeline_options(p)
    p.set_defaults(func=run)


def _metrics(text: str) -> list[str]:
    from fidkit.errors import UsageError

    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UsageError(f"--metrics {text!r}: choose from {', '.join(METRICS)}")
    return names


def run(args: argparse.Namespace) -> int:
    metrics = _metrics(args.metrics)
    from fidkit.api import as_statistics, check_comparable, is_stats_path
    from fidkit.errors import UsageError
    from fidkit.distances.frechet import frechet

    from pathlib import Path

    from fidkit.errors import InputError

    for side in (args.a, args.b):  # both checked before minutes of computing on the other side
        if not Path(side).exists():
            raise InputError(f"{side} does not exist; check the path")
    kwargs = pipeline_kwargs(args)
    need_features = args.ci is not None or args.fid_inf or "kid" in metrics
    if need_features and is_stats_path(args.a):
        raise UsageError(f"--ci, --fid-inf and kid need A's features: give A as images, not the "
                         f"stats file {args.a}")
    if "kid" in metrics and is_stats_path(args.b):
        raise UsageError(f"kid needs B's features: give B as images, not the stats file {args.b}")
    if "is" in metrics and is_stats_path(args.a):
        raise UsageError(f"is needs A's logits: give A as images, not the stats file {args.a}")

    if "kid" in metrics or "is" in metrics:
        from fidkit.cli.compare_extra import compute_extra

        sa, sb, extra = compute_extra(args, metrics, kwargs)
    else:
        sa = as_statistics(args.a, keep_features=need_features, manifest=args.manifest, **kwargs)
        sb = as_statistics(args.b, keep_features=need_features and not is_stats_path(args.b),
                           **kwargs)
        extra = {}
    diffs = check_comparable(sa, sb, force=args.force, names=(f"A ({args.a})", f"B ({args.b})"))
    result = frechet(sa, sb)
    warnings_: list[str] = list(diffs) + list(result.warnings)
    report: dict[str, Any] = {}
    if "fid" in metrics:
        report["fid"] = result.value
    report.update(extra)
    if args.ci is not None or args.fid_inf:
        sample = _sample_size(args, sa, sb)
        warnings_.extend(w for w in sample.pop("_warnings") if w not in warnings_)
        report.update(sample)
    if args.montage:
        from fidkit.cli.montage import write_input_montage

        write_input_montage(args.a, args.montage, **kwargs)
    for side in (sa, sb):
        text = non_canonical_note(side.meta)
        if text and text not in warnings_:
            warnings_.append(text)
    for line in warnings_:
        note(f"warning: {line}")
    if args.json:
        emit_json({
            **report,
            "details": result.to_dict(),
            "a": {"input": args.a, "meta": sa.meta},
            "b": {"input": args.b, "meta": sb.meta},
            "warnings": warnings_,
        })
    else:
        for key, value in report.items():
            sys.stdout.write(f"{key}: {_fmt(value)}\n")
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        if "low" in value and "high" in value:
            return f"[{value['low']:.6f}, {value['high']:.6f}] at {value['level']:.0%}"
        if "value" in value:
            ci = value.get("interval")
            extra = f" [{ci['low']:.6f}, {ci['high']:.6f}]" if ci else ""
            return f"{value['value']:.6f}{extra}"
        return "  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _sample_size(args: argparse.Namespace, sa: Any, sb: Any) -> dict[str, Any]:
    from fidkit.distances.bootstrap import sample_size_report

    features = getattr(sa, "features", None)
    ref = getattr(sb, "features", None)
    # B's features (when B was computed from images) are resampled too; a stats file stays fixed.
    report = sample_size_report(features, ref if ref is not None else sb, ci=args.ci is not None,
                                fid_inf=args.fid_inf, level=args.ci or 0.95)
    out: dict[str, Any] = {}
    if report.interval is not None:
        out["fid_ci"] = report.interval.to_dict()
    if report.fid_infinity is not None:
        out["fid_inf"] = report.fid_infinity.to_dict()
    out["_warnings"] = report.warnings
    return out
