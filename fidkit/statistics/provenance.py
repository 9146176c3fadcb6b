"""Provenance: what a stats file records about how it was made, and what two records disagree on."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from fidkit import __version__
from fidkit.defaults import FID_WEIGHTS

FORMAT = "fidkit-statistics"
FORMAT_VERSION = 1

#: Rough size of the effect of each mismatch, for the refusal message (from the peers' trackers and
#: the clean-fid paper: resize/normalisation choices move FID by a few percent up to tens of percent
#: at low resolution; different layers or weights give unrelated numbers).
EFFECT = {
    "extractor": "features of different networks: the numbers are unrelated",
    "dims": "features from different layers: the numbers are unrelated",
    "convention": "resize/normalisation differences typically move FID by 1-10 % (more for small "
                  "or upscaled images)",
    "weights": "a different network: the numbers are unrelated",
    "dicom": "different spacing/window/axis/slice choices change the images themselves",
    "protocol": "a different volume protocol or protocol option (shape, spacing, planes, input "
                "size) changes what the network sees",
}


def build_meta(*, dims: int, convention: str, weights: dict[str, Any], n: int,
               source: dict[str, Any], extra: dict[str, Any] | None = None,
               extractor: Any = None) -> dict[str, Any]:
    """The ``meta`` dict of a :class:`fidkit.Statistics` (JSON-able). ``extractor``: the
    :class:`~fidkit.extractors.base.Extractor` that made the features (None: the FID Inception).
    ``meta["licence"]`` is set when the weights' licence restricts use (e.g. non-commercial)."""
    from fidkit.extractors import get_extractor

    ex = get_extractor(extractor)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fidkit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "extractor": ex.name,
        "weights": dict(weights),
        "dims": int(dims),
        "tap": ex.tap_for(int(dims)),
        "convention": convention,
        "n": int(n),
        "source": dict(source),
    }
    if restricted_licence(ex.licence):
        meta["licence"] = ex.licence
    if extra:
        meta.update(extra)
    return meta


def restricted_licence(licence: str) -> bool:
    """Whether a weights licence limits use (non-commercial, research only): said in every
    output made with it."""
    text = licence.upper()
    return "NC" in text.replace("-", " ").split() or "NON-COMMERCIAL" in text or "NONCOMMERCIAL" in text \
        or "RESEARCH" in text


def extractor_of(meta: dict[str, Any] | None) -> str:
    """The extractor a known fidkit meta was made with (files from before extractors were
    recorded were all made by the FID Inception)."""
    return str((meta or {}).get("extractor") or "inception")


def is_known(meta: dict[str, Any] | None) -> bool:
    return bool(meta) and meta.get("format") == FORMAT and "convention" in meta


def weights_label(meta: dict[str, Any]) -> str:
    w = meta.get("weights") or {}
    sha = str(w.get("sha256", "?"))
    kind = "canonical" if w.get("canonical") or sha == FID_WEIGHTS.sha256 else "NON-canonical"
    return f"{kind} {sha[:8]}"


def differences(a: dict[str, Any] | None, b: dict[str, Any] | None,
                names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Human-readable differences that make two statistics incomparable (empty when they match).

    A side whose provenance is unknown (e.g. a plain pytorch-fid ``.npz``) yields one entry that
    says so: fidkit cannot check it.
    """
    na, nb = names
    out: list[str] = []
    unknown = [name for name, meta in ((na, a), (nb, b)) if not is_known(meta)]
    if unknown:
        known = [(name, m) for name, m in ((na, a), (nb, b)) if is_known(m)]
        other = (f"; the other side is {known[0][1]['convention']}, {known[0][1]['dims']} dims, "
                 f"{weights_label(known[0][1])} weights") if known else ""
        hint = ""
        for name, meta in ((na, a), (nb, b)):
            guess = (meta or {}).get("convention_guess")
            if guess:
                hint += f" ({name} looks like {guess})"
        out.append(f"provenance of {' and '.join(unknown)} unknown (no record of dims, convention "
                   f"or weights){hint}{other}; convention or weight differences typically move FID "
                   "by 1-10 %")
        if len(unknown) == 2 or not known:
            return out
    if a is None or b is None:
        return out
    if is_known(a) and is_known(b):
        if extractor_of(a) != extractor_of(b):
            out.append(f"extractors differ: {na} {extractor_of(a)}, {nb} {extractor_of(b)} "
                       f"({EFFECT['extractor']})")
        if a.get("dims") != b.get("dims"):
            out.append(f"dims differ: {na} {a.get('dims')}, {nb} {b.get('dims')} ({EFFECT['dims']})")
        if a.get("convention") != b.get("convention"):
            out.append(f"convention differs: {na} {a.get('convention')}, {nb} {b.get('convention')} "
                       f"({EFFECT['convention']})")
        sa = (a.get("weights") or {}).get("sha256")
        sb = (b.get("weights") or {}).get("sha256")
        if sa != sb:
            out.append(f"weights differ: {na} {weights_label(a)}, {nb} {weights_label(b)} "
                       f"({EFFECT['weights']})")
        da, db = a.get("dicom"), b.get("dicom")
        if (da or db) and da != db:
            keys = sorted(set(da or {}) | set(db or {}))
            parts = [f"{k} {(da or {}).get(k)!r} vs {(db or {}).get(k)!r}" for k in keys
                     if (da or {}).get(k) != (db or {}).get(k)]
            if da is None or db is None:
                parts = [f"{na if da is None else nb} is not from DICOM"]
            out.append(f"DICOM options differ: {', '.join(parts)} ({EFFECT['dicom']})")
        pa, pb = a.get("protocol"), b.get("protocol")
        if (pa or pb) and (pa != pb or a.get("plane") != b.get("plane")):
            if pa is None or pb is None:
                parts = [f"{na if pa is None else nb} was made without a volume protocol"]
            elif pa != pb:
                keys = sorted(set(pa) | set(pb))
                parts = [f"{k} {pa.get(k)!r} vs {pb.get(k)!r}" for k in keys if pa.get(k) != pb.get(k)]
            else:
                parts = [f"plane {a.get('plane')!r} vs {b.get('plane')!r}"]
            out.append(f"protocols differ: {', '.join(parts)} ({EFFECT['protocol']})")
    return out
