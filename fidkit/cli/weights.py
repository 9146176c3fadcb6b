"""``fidkit weights``: fetch, locate, verify, or make test weights, for any extractor."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="download, locate or verify an extractor's weights",
                       description="Manage the weights file of an extractor (default: the FID "
                                   "Inception; --features NAME for another).")
    wsub = p.add_subparsers(dest="weights_verb", metavar="ACTION")
    d = wsub.add_parser("download", help="fetch the canonical weights into the cache (hash-checked)")
    w = wsub.add_parser("where", help="print where the weights are looked for and whether they verify")
    w.add_argument("--json", action="store_true")
    m = wsub.add_parser("make-test", help="write deterministic random weights in the official file "
                                          "layout, for tests/offline demos (results are NOT "
                                          "comparable to anything published)")
    m.add_argument("file", metavar="FILE")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    for action, func in ((d, _download), (w, _where), (m, _make_test)):
        action.add_argument("--features", default=None, metavar="NAME",
                            help="the extractor (default inception; 'fidkit features list')")
        action.set_defaults(func=func)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _spec(args: argparse.Namespace):
    from fidkit.errors import UsageError
    from fidkit.extractors import get_extractor

    extractor = get_extractor(args.features)
    if extractor.weights is None:
        raise UsageError(f"{extractor.name} is a registered module without a weights file")
    return extractor


def _download(args: argparse.Namespace) -> int:
    from fidkit.extractors.weights import resolve_weights

    extractor = _spec(args)
    resolved = resolve_weights(None, spec=extractor.weights)
    print(f"{resolved.path} (SHA-256 {resolved.sha256}, verified)")
    return 0


def _where(args: argparse.Namespace) -> int:
    import os

    from fidkit.cli.common import emit_json
    from fidkit.defaults import FID_WEIGHTS, WEIGHTS_ENV
    from fidkit.extractors.weights import cache_dir, file_sha256

    spec = _spec(args).weights
    target = cache_dir() / spec.filename
    env = os.environ.get(WEIGHTS_ENV) if spec == FID_WEIGHTS else None
    state = "absent"
    if target.is_file():
        state = "verified" if file_sha256(target) == spec.sha256 else "CORRUPT (wrong SHA-256)"
    info = {"cache": str(target), "cache_state": state, "env": env, "sha256": spec.sha256,
            "size": spec.size, "urls": list(spec.urls), "licence": spec.licence}
    if args.json:
        emit_json(info)
    else:
        print(f"cache: {target} ({state})")
        if spec == FID_WEIGHTS:
            print(f"{WEIGHTS_ENV}: {env or '(unset)'}")
        print(f"canonical SHA-256: {spec.sha256} ({spec.size} bytes)")
        print(f"source: {spec.urls[0]}")
        print(f"licence: {spec.licence}")
    return 0


def _make_test(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fidkit.errors import InputError
    from fidkit.extractors.weights import file_sha256

    extractor = _spec(args)
    if Path(args.file).exists() and not args.overwrite:
        raise InputError(f"{args.file} exists; pass --overwrite to replace it")
    extractor.make_test_weights(args.file, seed=args.seed)
    print(f"wrote {args.file} (SHA-256 {file_sha256(args.file)}): random {extractor.name} test "
          "weights, NOT the published network")
    return 0
