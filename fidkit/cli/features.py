"""``fidkit features list``: the registered feature extractors, their taps, conventions, weights
and licences, and whether the weights are cached."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="list the feature extractors (networks) fidkit can use",
                       description="The feature extractors: name, feature dimensions, "
                                   "conventions, weights size, licence, cached or not.")
    fsub = p.add_subparsers(dest="features_verb", metavar="ACTION")
    listing = fsub.add_parser("list", help="one line per extractor (default)")
    listing.add_argument("--json", action="store_true", help="a JSON list on stdout")
    listing.set_defaults(func=run)
    p.set_defaults(func=run, json=False)


def cached_state(extractor) -> str:
    """"cached", "absent", "size differs" or "-" (no weights file) for an extractor's weights, by the
    file's presence and size (the hash is checked when the file is used)."""
    from fidkit.extractors.weights import cache_dir

    spec = extractor.weights
    if spec is None:
        return "-"
    target = cache_dir() / spec.filename
    if not target.is_file():
        return "absent"
    if not spec.size:  # size not published: the hash pinned at download is checked on use
        return "cached"
    # The recorded size is sometimes a third-party record: a file of another size is not called
    # corrupt here, its hash decides when it is used.
    return "cached" if target.stat().st_size == spec.size else "size differs"


def run(args: argparse.Namespace) -> int:
    from fidkit.cli.common import emit_json
    from fidkit.extractors import iter_extractors

    rows = []
    for extractor in iter_extractors():
        info = extractor.describe()
        info["cached"] = cached_state(extractor)
        rows.append(info)
    if getattr(args, "json", False):
        emit_json(rows)
        return 0
    header = f"{'name':<24} {'dims':<16} {'weights':>9}  {'cached':<7} {'licence':<14} conventions"
    print(header)
    for info in rows:
        size = info["weights"]["size"] if info["weights"] else None
        dims = ",".join(map(str, info["dims"]))
        conventions = ", ".join(c + ("*" if c == info["default_convention"] else "")
                                for c in info["conventions"])
        print(f"{info['name']:<24} {dims:<16} {_mb(size):>9}  {info['cached']:<7} "
              f"{_short(info['licence'], 14):<14} {conventions}")
    print("* default convention; 'fidkit weights where --features NAME' for a file's hash and URL")
    return 0


def _mb(size: int | None) -> str:
    if size is None:
        return "-"  # no weights file (a user's module)
    return f"{size / 1e6:.0f} MB" if size else "unknown"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
