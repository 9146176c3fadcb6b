"""``fidkit convert IN OUT``: rewrite a stats file as fidkit ``.pkl`` or ``.npz``, keeping provenance."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a stats file to fidkit .pkl or .npz",
                       description="Read any stats file fidkit knows and write it as OUT: .npz "
                                   "(pytorch-fid readable; provenance in its 'meta' JSON string) or "
                                   "any other name as fidkit's .pkl. What is known of how the "
                                   "statistics were made is kept; a peer's file stays 'unknown'.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import warnings
    from pathlib import Path

    from fidkit.cli.common import note
    from fidkit.errors import UsageError
    from fidkit.statistics.statsio import ProvenanceWarning, load_statistics, save_statistics

    src, dst = Path(args.input), Path(args.output)
    if dst.suffix.lower() in (".pt", ".pth"):
        raise UsageError(f"{dst}: fidkit writes .pkl or .npz, not torch files; choose one of those")
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise UsageError(f"{dst} is the input file; choose another output name")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProvenanceWarning)
        stats = load_statistics(src)
    for w in caught:
        note(f"warning: {w.message}")
    if dst.exists() and not args.overwrite:
        raise UsageError(f"{dst} exists; pass --overwrite to replace it or choose another name")
    save_statistics(stats, dst, overwrite=args.overwrite)
    kind = "npz" if dst.suffix.lower() == ".npz" else "pkl"
    note(f"wrote {dst} ({kind}, {stats.dims} dims, provenance {stats.meta['provenance']})")
    return 0
