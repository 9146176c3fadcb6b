"""``fidkit info FILE``: what a stats file holds, how it was made, and whether it is sane."""
from __future__ import annotations

import argparse
import math
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="provenance, shape and sanity of a stats file",
                       description="Describe a stats file (fidkit .pkl/.npz, pytorch-fid/TTUR or "
                                   "clean-fid .npz, torch-fidelity .pt): how it was made, its "
                                   "shape, and whether sigma is a valid covariance (finite, "
                                   "symmetric, positive semi-definite). Exit code 2 if it is not.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def describe(path: str) -> dict[str, Any]:
    """The report ``fidkit info`` prints, as a JSON-able dict (``ok`` false when not sane)."""
    import warnings

    from fidkit.statistics.statsio import ProvenanceWarning, check_statistics, load_statistics

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProvenanceWarning)
        stats = load_statistics(path, check=False)  # report impossible values instead of refusing
    meta = stats.meta
    sanity = check_statistics(stats)
    problems = []
    if not sanity["finite"]:
        problems.append("mu or sigma holds NaN or infinite values")
    else:
        if not sanity["symmetric"]:
            problems.append(f"sigma is not symmetric (relative error {sanity['symmetry_error']:.2e})")
        if not sanity["psd"]:
            problems.append(f"sigma has negative eigenvalue {sanity['min_eigenvalue']:.3e}")
    return {
        "file": str(path),
        "format": meta["loaded_from"]["format"],
        "stored_dtype": meta["loaded_from"]["stored_dtype"],
        "provenance": meta["provenance"],
        "dims": stats.dims,
        "n": stats.n or None,
        "meta": {k: v for k, v in meta.items() if k not in ("loaded_from", "provenance")},
        "sanity": {k: (v if not (isinstance(v, float) and math.isinf(v)) else "inf")
                   for k, v in sanity.items()},
        "ok": not problems,
        "problems": problems,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, ProvenanceWarning)],
    }


def _text(report: dict[str, Any]) -> str:
    meta, s = report["meta"], report["sanity"]
    w = meta.get("weights") or meta.get("weights_guess") or {}
    convention = meta.get("convention") or (
        f"{meta['convention_guess']} (guessed from the file name)" if meta.get("convention_guess") else "unknown")
    weights = "unknown"
    if w.get("sha256"):
        weights = f"{'canonical' if w.get('canonical') else 'NON-canonical'} {str(w['sha256'])[:12]}"
        weights += " (guessed)" if "weights" not in meta else ""
    lines = [
        f"file        {report['file']}",
        f"format      {report['format']} (stored as {report['stored_dtype']})",
        f"provenance  {report['provenance']}",
        f"dims        {report['dims']}",
        f"n           {report['n'] if report['n'] else 'unknown'}",
        f"convention  {convention}",
        f"weights     {weights}",
    ]
    for key, label in (("network", "network"), ("created", "created"), ("fidkit_version", "fidkit")):
        if meta.get(key):
            lines.append(f"{label:<11} {meta[key]}")
    source = meta.get("source") or {}
    if source:
        lines.append("source      " + ", ".join(f"{k}={v}" for k, v in source.items()
                                                 if not isinstance(v, (dict, list))))
    for peer in ("cleanfid", "torch_fidelity"):
        if meta.get(peer):
            lines.append(f"{peer:<11} " + ", ".join(f"{k}={v}" for k, v in meta[peer].items()))
    if s["finite"]:
        lines += [
            "finite      yes",
            f"symmetric   {'yes' if s['symmetric'] else 'NO'} (relative error {s['symmetry_error']:.1e})",
            f"psd         {'yes' if s['psd'] else 'NO'} (eigenvalues {s['min_eigenvalue']:.3e} .. "
            f"{s['max_eigenvalue']:.3e})",
            f"rank        {s['rank']} of {report['dims']}",
            f"condition   {s['condition'] if s['condition'] == 'inf' else format(s['condition'], '.3e')}",
            f"trace       {s['trace']:.6g}",
        ]
    else:
        lines.append("finite      NO")
    for message in report["warnings"]:
        lines.append(f"warning     {message}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from fidkit.cli.common import emit_json, note

    report = describe(args.file)
    if args.json:
        emit_json(report)
    else:
        print(_text(report))
    if not report["ok"]:
        note(f"{args.file}: {'; '.join(report['problems'])}; fidkit refuses to compare with it")
        return 2
    return 0
