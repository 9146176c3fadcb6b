"""``fidkit compare GENERATED REFERENCE``: metrics between a generated set and a reference set
(:func:`fidkit.compare`; this module only parses and prints)."""
from __future__ import annotations

import argparse
import sys

from fidkit.cli.common import (add_pipeline_options, add_volume_options, emit_json,
                               pipeline_kwargs, volume_kwargs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="FID (and KID, IS, ...) of generated images against a reference",
                       description="Print metrics of GENERATED against REFERENCE (always in this "
                                   "order). Each side is an image folder, a DICOM folder, an image "
                                   "array (.npy/.npz) or a stats file (.pkl, .npz, .pt); a stats "
                                   "file serves FID only. IS, --ci and --fid-inf describe the "
                                   "generated side.")
    p.add_argument("generated", metavar="GENERATED", help="the generated images (or their statistics)")
    p.add_argument("reference", metavar="REFERENCE", help="the reference images or statistics")
    p.add_argument("--metrics", default="fid",
                   help="comma-separated: fid, kid, is, pr (precision/recall), dc (density/"
                        "coverage), cmmd, msssim (diversity of GENERATED) (default fid); each "
                        "uses its own extractor (fid/kid/is inception, pr/dc vgg16, cmmd "
                        "clip-vit-l-14-336px) unless --features")
    p.add_argument("--pr-k", type=int, default=3, metavar="K",
                   help="k-th neighbour for precision/recall (default 3)")
    p.add_argument("--dc-k", type=int, default=5, metavar="K",
                   help="k-th neighbour for density/coverage (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--force", action="store_true",
                   help="compare even if the two sides were made differently (a warning is printed)")
    p.add_argument("--ci", type=float, default=None, nargs="?", const=0.95, metavar="LEVEL",
                   help="bootstrap confidence interval for FID (needs GENERATED as images; "
                        "default 0.95)")
    p.add_argument("--fid-inf", action="store_true",
                   help="also report FID-infinity (Chong & Forsyth 2020; needs GENERATED as images)")
    p.add_argument("--montage", metavar="FILE.png",
                   help="write a QC grid of GENERATED's inputs as the network sees them")
    p.add_argument("--manifest", metavar="FILE",
                   help="write the list of GENERATED's files used and skipped (JSON)")
    add_pipeline_options(p)
    add_volume_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fidkit.report import compare, parse_metrics

    metrics = parse_metrics(args.metrics)
    kwargs = pipeline_kwargs(args)
    volumes = volume_kwargs(args)
    report = compare(args.generated, args.reference, metrics=metrics, force=args.force,
                     ci=args.ci, fid_inf=args.fid_inf, manifest=args.manifest,
                     cache=not args.no_cache, pr_k=args.pr_k, dc_k=args.dc_k, **volumes, **kwargs)
    if args.montage:
        from fidkit.cli.montage import write_input_montage

        write_input_montage(args.generated, args.montage, **volumes, **kwargs)
    if args.json:
        emit_json(report.to_dict())
    else:
        sys.stdout.write("".join(line + "\n" for line in report.lines()))
    return 0
