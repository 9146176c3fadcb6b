"""``fidkit dicom``: look at DICOM folders the way the FID pipeline will.

* ``fidkit dicom export SRC OUT_DIR`` writes the PNG slices that would go into the network (same
  options as ``stats``: ``--spacing --window --axis --slices``), plus ``export.json`` (provenance and
  the name of each slice) and, with ``--montage FILE.png``, a labelled QC grid.
* ``fidkit dicom info SRC`` lists the series and volumes found, their geometry and warnings, and the
  files skipped (``--json`` for machine-readable output); with any of ``--spacing --window --axis
  --slices`` it also counts the slices ``stats`` would take with them, per volume (no network runs).
"""
from __future__ import annotations

import argparse
import re
from typing import Any


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let option values such as ``-1000,1000`` or ``-600/1500`` through as values.

    argparse takes any word starting with "-" that is not a plain negative number for an option,
    so ``--window -1000,1000`` would fail with "expected one argument"; widening the parser's
    negative-number pattern fixes that (the parser has no options that look like numbers).
    ``stats`` and ``compare`` should call this too.
    """
    parser._negative_number_matcher = re.compile(  # type: ignore[attr-defined]
        r"^-\d+$|^-\d*\.\d+$|^-\d*\.?\d+\s*[,/:]\s*-?\d*\.?\d+$"
    )


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dicom", help="inspect DICOM folders and export the slices the network sees",
        description="Read DICOM series with their real geometry and show or export the slices "
                    "that FID would use.",
    )
    verbs = parser.add_subparsers(dest="dicom_verb", metavar="SUBVERB")
    export = verbs.add_parser("export", help="write the windowed slices as PNG files",
                              description="Write the slices that would go into the network as PNGs.")
    export.add_argument("src", metavar="SRC", help="a DICOM folder (searched recursively) or file")
    export.add_argument("out", metavar="OUT_DIR", help="output folder (created if missing)")
    _add_options(export)
    export.add_argument("--montage", metavar="FILE.png", default=None,
                        help="also write a labelled grid of sample slices")
    export.add_argument("--montage-tiles", type=int, default=32, metavar="N",
                        help="slices in the montage (default 32, spread evenly)")
    export.add_argument("--overwrite", action="store_true", help="replace existing PNG files")
    accept_negative_values(export)
    export.set_defaults(func=run_export)
    info = verbs.add_parser("info", help="list series, geometry, warnings and skipped files")
    info.add_argument("src", metavar="SRC", help="a DICOM folder (searched recursively) or file")
    info.add_argument("--json", action="store_true", help="print JSON on stdout")
    _add_options(info)
    accept_negative_values(info)
    info.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: _missing(parser))


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("DICOM options (as for 'fidkit stats')")
    g.add_argument("--spacing", default=None, metavar="MM",
                   help="target spacing in mm: Z (default 1.0) or Z,Y,X; 'keep' keeps the stored grid")
    g.add_argument("--window", default=None, metavar="WINDOW",
                   help="LOW,HIGH value range (e.g. -1000,1000), CENTER/WIDTH (e.g. 40/400), a preset "
                        "(brain, soft_tissue, lung, bone, ...) or 'file' (default: the series' own)")
    g.add_argument("--axis", default=None, choices=("axial", "coronal", "sagittal", "all"),
                   help="slice plane (default axial; all: axial, coronal and sagittal)")
    g.add_argument("--slices", default=None, metavar="SEL",
                   help="all (default), central:FRACTION, every:K, or central:F,every:K")


def run_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from PIL import Image

    from fidkit.cli.common import note
    from fidkit.dicom.source import DicomOptions, DicomSource
    from fidkit.errors import InputError
    from fidkit.fileio import atomic_writer

    options = DicomOptions.from_cli(args.spacing, args.window, args.axis, args.slices)
    source = DicomSource(args.src, options)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the PNG slices")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror}; check the parent folder exists") from None
    names = []
    for i in range(len(source)):
        name = f"slice_{i:05d}.png"
        with atomic_writer(out / name, overwrite=args.overwrite) as handle:
            Image.fromarray(source.load(i), "RGB").save(handle, format="PNG")
        names.append({"file": name, "item": source.item_name(i)})
    record = {"source": source.describe(), "slices": names}
    with atomic_writer(out / "export.json") as handle:
        handle.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    if args.montage:
        from fidkit.montage import sample_indices, write_montage

        picks = sample_indices(len(source), max(1, args.montage_tiles))
        write_montage([source.load(i) for i in picks], [source.short_name(i) for i in picks], args.montage)
    note(f"wrote {len(source)} slices to {out} ({len(source.volumes)} volume(s), "
         f"{len(source.skipped)} file(s) skipped)")
    for warning in source.describe()["warnings"]:
        note(f"warning: {warning}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from fidkit.cli.common import emit_json
    from fidkit.dicom.reader import read_series

    found = read_series(args.src)
    record = {
        "path": str(args.src),
        "volumes": [v.summary() for v in found],
        "files_read": found.files_read,
        "skipped": [{"path": s.path, "reason": s.reason} for s in found.skipped],
    }
    given = [f"--{key} {getattr(args, key)}" for key in _OPTIONS if getattr(args, key) is not None]
    if given:
        record["preview"] = _preview(args)
    if args.json:
        emit_json(record)
        return 0
    print(f"{args.src}: {len(found)} volume(s) from {found.files_read} file(s); "
          f"{len(found.skipped)} file(s) skipped")
    for n, v in enumerate(found):
        s = v.summary()
        label = f" [{v.label}]" if v.label else ""
        print(f"  {n}: {v.modality} series {v.series_uid}{label}: {s['shape'][0]} x {s['shape'][1]} x "
              f"{s['shape'][2]} voxels, spacing z,y,x {', '.join(f'{x:.4g}' for x in v.spacing)} mm, "
              f"z {s['z_range_mm'][0]:.2f}..{s['z_range_mm'][1]:.2f} mm, window {s['window']}"
              f"{' (localizer)' if v.is_localizer else ''}")
        for w in v.warnings:
            print(f"     warning: {w}")
    for s in found.skipped:
        print(f"  skipped {s.path}: {s.reason}")
    if given:
        preview = record["preview"]
        print(f"with {' '.join(given)}: {preview['slices']} slice(s) from "
              f"{len(preview['per_volume'])} volume(s)")
        for n, volume in enumerate(preview["per_volume"]):
            planes = ", ".join(f"{plane} {count}" for plane, count in volume["slices"].items())
            print(f"  {n}: {volume['name']}: {planes}")
    return 0


_OPTIONS = ("spacing", "window", "axis", "slices")


def _preview(args: argparse.Namespace) -> dict[str, Any]:
    """The slices ``fidkit stats`` would take with these options, per volume, without running a
    network (volume datasets are counted from their headers; a DICOM folder is resampled)."""
    from fidkit.dicom.source import DicomOptions, DicomSource, open_volume_source

    options = DicomOptions.from_cli(args.spacing, args.window, args.axis, args.slices)
    source = open_volume_source(args.src, options) or DicomSource(args.src, options)
    return {"options": options.to_meta(), "slices": len(source),
            "per_volume": [{"name": name, "slices": counts}
                           for name, counts in source.slice_counts()]}
