"""``fidkit stats SRC -o OUT``: precompute reference statistics."""
from __future__ import annotations

import argparse
from pathlib import Path

from fidkit.cli.common import _positive, add_pipeline_options, emit_json, pipeline_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="compute statistics of an image/DICOM folder and save them",
                       description="Compute the Inception feature statistics of SRC and write them "
                                   "to OUT (.pkl by default, .npz readable by pytorch-fid).")
    p.add_argument("src", metavar="SRC", nargs="?",
                   help="image folder, DICOM folder, .zip/.tar archive or a quoted brace pattern "
                        "of tar shards ('shards/train-{000000..000127}.tar'), or .npy/.npz image "
                        "array")
    p.add_argument("--files-from", metavar="LIST",
                   help="instead of SRC: a text file naming one image file per line (relative to "
                        "its folder unless absolute), read in the list's order")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="stats file to write (.pkl or .npz)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--manifest", metavar="FILE", help="write the list of files used and skipped (JSON)")
    p.add_argument("--montage", metavar="FILE.png", help="write a QC grid of inputs as the network sees them")
    p.add_argument("--json", action="store_true", help="print the provenance as JSON on stdout")
    p.add_argument("--keep-features", action="store_true",
                   help="also keep the per-image features beside OUT (OUT's name with .features: "
                        "float32, read memory-mapped) for KID, precision/recall, density/coverage "
                        "and CMMD against this reference")
    c = p.add_argument_group("long runs (docs/big_runs.md)")
    c.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="folder recording the run's progress, from which the same command resumes "
                        "after a kill or SIGTERM/SIGUSR1 (exit 75) with bit-identical statistics "
                        "(default OUT.partial, removed once OUT is written)")
    c.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint")
    c.add_argument("--chunk-size", type=_positive, default=None, metavar="N",
                   help="images per chunk, a multiple of --batch-size: the unit of work that is "
                        "checkpointed and shared out across ranks (default 10000, rounded up to "
                        "whole batches)")
    c.add_argument("--checkpoint-every", type=_seconds, default=600.0, metavar="SECONDS",
                   help="save the chunk in progress this often (default 600; finished chunks are "
                        "saved at once)")
    add_pipeline_options(p)
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from fidkit.errors import InputError, UsageError

    if (args.src is None) == (args.files_from is None):
        raise UsageError("give SRC or --files-from LIST (one of them)")
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
    checkpoint = _checkpoint_folder(args, out)
    source = args.src
    if args.files_from is not None:
        from fidkit.sources.archives import open_file_list

        source = open_file_list(args.files_from)
    from fidkit import distributed
    from fidkit.api import compute_statistics

    # Under torchrun every rank runs its block of SRC; rank 0 alone writes and prints.
    args.device = distributed.init_from_environment(args.device)
    kwargs = pipeline_kwargs(args)
    if isinstance(kwargs["weights"], dict):  # NAME=PATH: the one of the chosen extractor
        kwargs["weights"] = kwargs["weights"].get(args.features or "inception",
                                                  kwargs["weights"].get(None))
    stats = compute_statistics(source, manifest=args.manifest, cache=not args.no_cache,
                               features_file=features_file, checkpoint=checkpoint,
                               chunk_size=args.chunk_size,
                               checkpoint_seconds=args.checkpoint_every, **kwargs)
    if not distributed.is_writer():
        _leave_process_group()
        return 0
    if args.montage:
        from fidkit.cli.montage import write_input_montage

        write_input_montage(source, args.montage, **kwargs)
    # Without --overwrite, a file that appeared during the run is not clobbered either.
    stats.save(str(out), overwrite=bool(args.overwrite))
    if checkpoint is not None:
        from fidkit.statistics.checkpoint import remove_checkpoint

        remove_checkpoint(checkpoint)
    _leave_process_group()
    if args.json:
        emit_json({"output": str(out), "n": stats.n, "dims": stats.dims, "meta": stats.meta})
    else:
        print(f"wrote {out}: {stats.n} images, {stats.meta.get('extractor', 'inception')} "
              f"{stats.dims} dims, convention {stats.meta['convention']}")
    return 0


def _checkpoint_folder(args: argparse.Namespace, out: Path) -> Path | None:
    """The checkpoint folder of this run: --checkpoint, else OUT.partial; None with
    --no-checkpoint or --keep-features (per-image features are not checkpointed)."""
    from fidkit.errors import UsageError
    from fidkit.statistics.checkpoint import default_checkpoint_path

    if args.no_checkpoint:
        if args.checkpoint is not None:
            raise UsageError("--checkpoint and --no-checkpoint contradict each other; give one")
        return None
    if args.keep_features:
        if args.checkpoint is not None:
            raise UsageError("--keep-features runs are not checkpointed (a resumed run would lack "
                             "the rows of the chunks done before); drop --checkpoint or "
                             "--keep-features")
        return None
    return Path(args.checkpoint) if args.checkpoint is not None else default_checkpoint_path(out)


def _leave_process_group() -> None:
    """Under torchrun, every rank leaves the process group together once the run succeeded: a
    rank that exits while a peer's gloo threads still talk to it can make that peer abort
    (SIGABRT) at exit."""
    from fidkit import distributed

    if distributed.is_active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
