"""Preprocessing: how a decoded image (uint8 (H, W, 3)) becomes a network's input.

Each extractor names its own conventions (:meth:`fidkit.extractors.base.Extractor.conventions`),
each reproducing one tool's resize and normalisation exactly; the name is recorded in every stats
file. The FID Inception's four live in :mod:`fidkit.preprocess.inception`; shared resize
primitives in :mod:`fidkit.preprocess.resize`.
"""
from __future__ import annotations

from fidkit.extractors.base import Convention

__all__ = ["Convention", "get_convention", "convention_names"]


def get_convention(name: str | None, features: str | None = None) -> Convention:
    """The convention ``name`` of extractor ``features`` (None: the FID Inception; a None name:
    the extractor's default). Raises UsageError for an unknown name."""
    from fidkit.extractors import get_extractor

    return get_extractor(features).convention(name)


def convention_names(features: str | None = None) -> list[str]:
    """The convention names of extractor ``features`` (None: the FID Inception)."""
    from fidkit.extractors import get_extractor

    return list(get_extractor(features).convention_names)


def __getattr__(name: str):
    # The Inception resize functions, where tests and benchmarks have long imported them from.
    if name in ("resize_tf1_bilinear", "resize_pil_bicubic_float", "CONVENTIONS"):
        from fidkit.preprocess import inception

        return getattr(inception, name)
    raise AttributeError(f"module 'fidkit.preprocess' has no attribute {name!r}")
