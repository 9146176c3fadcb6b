"""``fidkit selftest``: download the canonical weights and CIFAR-10 and reproduce torch-fidelity's
published FID, KID and IS (:mod:`fidkit.selftest`)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selftest", help="reproduce published FID/KID/IS on CIFAR-10 (needs internet "
                                        "once: ~96 MB weights, ~170 MB CIFAR-10)",
                       description="Compute FID, KID and IS of CIFAR-10 train[:5000] against "
                                   "test[:5000] and print each next to torch-fidelity's published "
                                   "value, with pass/fail. Exit 0 when all pass.")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="where CIFAR-10 is kept (default: $FIDKIT_CACHE/cifar10 or "
                        "~/.cache/fidkit/cifar10)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="FID Inception weights (default: the cached or downloaded canonical file)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def default_data_dir() -> str:
    import os

    base = os.environ.get("FIDKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fidkit")
    return os.path.join(base, "cifar10")


def run(args: argparse.Namespace) -> int:
    from fidkit.cli.common import emit_json
    from fidkit.selftest import run_selftest

    result = run_selftest(args.data or default_data_dir(), weights=args.weights, device=args.device)
    if args.json:
        emit_json({"passed": result.passed, "values": result.values,
                   "rows": [dict(zip(("value", "published", "computed", "tolerance", "passed"), r))
                            for r in result.rows]})
    else:
        print(f"{'value':<10} {'published':>14} {'fidkit':>14} {'tolerance':>10}  result")
        for name, published, computed, tolerance, ok in result.rows:
            print(f"{name:<10} {published:>14.8g} {computed:>14.8g} {tolerance:>10.0e}  "
                  f"{'pass' if ok else 'FAIL'}")
        if not result.canonical:
            print("not comparable: these are not the canonical weights (or not 5,000 images)")
        print("selftest " + ("passed" if result.passed else "FAILED"))
    return 0 if result.passed else 1
