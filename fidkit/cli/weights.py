"""``fidkit weights``: fetch, locate, verify, or make test weights."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="download, locate or verify the FID Inception weights",
                       description="Manage the FID Inception weights file.")
    wsub = p.add_subparsers(dest="weights_verb", metavar="ACTION")
    d = wsub.add_parser("download", help="fetch the canonical weights into the cache (hash-checked)")
    d.set_defaults(func=_download)
    w = wsub.add_parser("where", help="print where the weights are looked for and whether they verify")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_where)
    m = wsub.add_parser("make-test", help="write deterministic random weights for tests/offline demos "
                                          "(results computed with them are NOT FIDs)")
    m.add_argument("file", metavar="FILE")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_make_test)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _download(args: argparse.Namespace) -> int:
    from fidkit.extractors.weights import resolve_weights

    resolved = resolve_weights(None)
    print(f"{resolved.path} (SHA-256 {resolved.sha256}, verified)")
    return 0


def _where(args: argparse.Namespace) -> int:
    import os

    from fidkit.cli.common import emit_json
    from fidkit.defaults import FID_WEIGHTS, WEIGHTS_ENV
    from fidkit.extractors.weights import cache_dir, file_sha256

    target = cache_dir() / FID_WEIGHTS.filename
    env = os.environ.get(WEIGHTS_ENV)
    state = "absent"
    if target.is_file():
        state = "verified" if file_sha256(target) == FID_WEIGHTS.sha256 else "CORRUPT (wrong SHA-256)"
    info = {"cache": str(target), "cache_state": state, "env": env, "sha256": FID_WEIGHTS.sha256,
            "urls": list(FID_WEIGHTS.urls)}
    if args.json:
        emit_json(info)
    else:
        print(f"cache: {target} ({state})")
        print(f"{WEIGHTS_ENV}: {env or '(unset)'}")
        print(f"canonical SHA-256: {FID_WEIGHTS.sha256}")
        print(f"source: {FID_WEIGHTS.urls[0]}")
    return 0


def _make_test(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fidkit.errors import InputError
    from fidkit.extractors.weights import make_test_weights

    if Path(args.file).exists() and not args.overwrite:
        raise InputError(f"{args.file} exists; pass --overwrite to replace it")
    sha = make_test_weights(args.file, seed=args.seed)
    print(f"wrote {args.file} (SHA-256 {sha}): random test weights, NOT the FID network")
    return 0
