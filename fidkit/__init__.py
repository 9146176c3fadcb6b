"""fidkit: Fréchet distances (FID, FD-DINOv2, CLIP-FID, ...), KID and Inception Score you can
reproduce.

Importing :mod:`fidkit` is cheap: torch is imported the first time a name that needs it is used.

Pipeline (one module per stage)::

    sources (images, arrays, DICOM) -> preprocess (the extractor's named convention)
        -> extractors (a registered network's tap) -> statistics (mean, covariance, n,
        provenance) -> distances (Frechet, KID, IS) -> report (fidkit.compare)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Statistics": "fidkit.statistics",
    "StatisticsAccumulator": "fidkit.statistics",
    "frechet_distance": "fidkit.distances.frechet",
    "FrechetResult": "fidkit.distances.frechet",
    "compute_statistics": "fidkit.api",
    "extract_features": "fidkit.api",
    "compare": "fidkit.report",
    "Report": "fidkit.report",
    "register_extractor": "fidkit.extractors.custom",
    "FidkitWarning": "fidkit.errors",
    "fid": "fidkit.api",
    "load_statistics": "fidkit.api",
    "FIDInceptionV3": "fidkit.extractors.networks.inception",
    "FID": "fidkit.metrics",
    "KID": "fidkit.metrics",
    "InceptionScore": "fidkit.metrics",
    "FidkitError": "fidkit.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fidkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
