"""``fidkit stats SRC -o OUT``: precompute reference statistics."""
from __future__ import annotations

import argparse
from pathlib import Path

from fidkit.cli.common import add_pipeline_options, emit_json, pipeline_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="compute statistics of an image/DICOM folder and save them",
                       description="Compute the Inception feature statistics of SRC and write them "
                                   "to OUT (.pkl by default, .npz readable by pytorch-fid).")
    p.add_argument("src", metavar="SRC", help="image folder, DICOM folder, or .npy/.npz image array")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="stats file to write (.pkl or .npz)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--manifest", metavar="FILE", help="write the list of files used and skipped (JSON)")
    p.add_argument("--montage", metavar="FILE.png", help="write a QC grid of inputs as the network sees them")
    p.add_argument("--json", action="store_true", help="print the provenance as JSON on stdout")
    p.add_argument("--keep-features", action="store_true",
                   help="also keep the per-image features beside OUT (OUT's name with .features: "
                        "float32, read memory-mapped) for KID, precision/recall, density/coverage "
                        "and CMMD against this reference")
    add_pipeline_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fidkit.errors import InputError

    out = Path(args.output)
    if out.is_dir():
        raise InputError(f"cannot write {out}: it is a folder; give a file name")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it or choose another name")
    if not out.parent.is_dir() and str(out.parent):
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    features_file = None
    if args.keep_features:
        from fidkit.statistics.featurestore import features_path

        features_file = features_path(out)
        if features_file.exists() and not args.overwrite:
            raise InputError(f"{features_file} exists; pass --overwrite to replace it or choose "
                             "another output name")
    from fidkit import distributed
    from fidkit.api import compute_statistics

    # Under torchrun every rank runs its block of SRC; rank 0 alone writes and prints.
    args.device = distributed.init_from_environment(args.device)
    kwargs = pipeline_kwargs(args)
    if isinstance(kwargs["weights"], dict):  # NAME=PATH: the one of the chosen extractor
        kwargs["weights"] = kwargs["weights"].get(args.features or "inception",
                                                  kwargs["weights"].get(None))
    stats = compute_statistics(args.src, manifest=args.manifest, cache=not args.no_cache,
                               features_file=features_file, **kwargs)
    if not distributed.is_writer():
        return 0
    if args.montage:
        from fidkit.cli.montage import write_input_montage

        write_input_montage(args.src, args.montage, **kwargs)
    # Without --overwrite, a file that appeared during the run is not clobbered either.
    stats.save(str(out), overwrite=bool(args.overwrite))
    if args.json:
        emit_json({"output": str(out), "n": stats.n, "dims": stats.dims, "meta": stats.meta})
    else:
        print(f"wrote {out}: {stats.n} images, {stats.meta.get('extractor', 'inception')} "
              f"{stats.dims} dims, convention {stats.meta['convention']}")
    return 0
