"""The ``fidkit`` command line: a thin layer over the Python API.

Each verb lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers the verb and sets ``func`` (taking the parsed namespace, returning an exit code). Verb
modules import torch only inside ``func``, so ``fidkit --help`` and argument errors stay fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

from fidkit import __version__
from fidkit.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, FidkitError

#: Verb modules, in the order ``--help`` lists them.
VERBS: tuple[str, ...] = ("stats", "compare", "info", "convert", "features", "weights", "selftest",
                          "dicom", "conv")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
        # One line on stderr, exit 2: the same shape as every other fidkit error.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fidkit",
        description="Frechet distances (FID, FD-DINOv2, CLIP-FID, ...), KID and IS that say how "
                    "every number was made.",
        epilog="Exit codes: 0 ok, 1 internal error (a bug), 2 usage or bad input, "
        "3 weights unavailable, 4 the two sides were made differently (use --force), 75 stopped "
        "by SIGTERM/SIGUSR1 with a checkpoint saved (rerun to resume), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"fidkit {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for name in VERBS:
        try:
            module = importlib.import_module(f"fidkit.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fidkit.cli.{name}":
                continue  # a verb not built yet
            raise
        module.add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Library warnings keep the CLI's shape: one line on stderr, no source excerpt.
    print(f"fidkit: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by ``python -m fidkit``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    debug = bool(os.environ.get("FIDKIT_DEBUG"))
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        # Each command says every warning that applies to it, even when an earlier command in
        # the same process (a test, a notebook) said the same words.
        from fidkit.errors import FidkitWarning

        warnings.simplefilter("always", FidkitWarning)
        return _run(args, debug)


def _run(args: argparse.Namespace, debug: bool) -> int:
    try:
        return int(args.func(args) or 0)
    except FidkitError as exc:
        if debug:
            raise
        print(f"fidkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fidkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            raise
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        print(
            f"fidkit: internal error: {detail} (this is a bug in fidkit; rerun with FIDKIT_DEBUG=1 "
            "for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
