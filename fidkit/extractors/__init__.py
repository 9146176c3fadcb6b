"""The registry of feature extractors: every stage (features, statistics, provenance, cache, the
streaming metric, the CLI) looks a network up here by name.

>>> from fidkit.extractors import get_extractor, extractor_names
>>> get_extractor("inception").dims
(64, 192, 768, 2048)

Built-in entries are declared by the modules in :data:`BUILTIN_MODULES` (imported on first use;
none imports torch at import time). A user's own ``nn.Module`` joins with
:func:`fidkit.extractors.custom.register_module`.
"""
from __future__ import annotations

import importlib
from typing import Iterator

from fidkit.errors import UsageError
from fidkit.extractors.base import Convention, Extractor, ResolvedWeights, WeightsFile

__all__ = ["Convention", "Extractor", "ResolvedWeights", "WeightsFile", "register",
           "get_extractor", "extractor_names", "iter_extractors", "DEFAULT_EXTRACTOR"]

#: The extractor used when none is named: the FID Inception (TF 2015-12-05 graph).
DEFAULT_EXTRACTOR = "inception"

#: Modules that register the built-in extractors when imported (a missing one is skipped, so a
#: family can be added or removed without touching this file's users).
BUILTIN_MODULES: tuple[str, ...] = (
    "fidkit.extractors.inception",
    "fidkit.extractors.dinov2",
    "fidkit.extractors.clip",
    "fidkit.extractors.swav",
    "fidkit.extractors.vgg16",
    "fidkit.extractors.radimagenet",
    "fidkit.extractors.medicalnet",
)

_REGISTRY: dict[str, Extractor] = {}
_LOADED = False


def register(extractor: Extractor, *, replace: bool = False) -> Extractor:
    """Add ``extractor`` under its name. Raises UsageError if the name is taken (unless
    ``replace``) or its default convention / default dims are not among its own."""
    if extractor.name in _REGISTRY and not replace:
        raise UsageError(f"an extractor named {extractor.name!r} is already registered; choose "
                         "another name or pass replace=True")
    if extractor.default_convention not in extractor.convention_names:
        raise UsageError(f"{extractor.name}: default convention {extractor.default_convention!r} "
                         "is not one of its conventions")
    if extractor.default_dims not in extractor.taps.values():
        raise UsageError(f"{extractor.name}: default dims {extractor.default_dims} is not a tap")
    if len(set(extractor.taps.values())) != len(extractor.taps):
        raise UsageError(f"{extractor.name}: two taps have the same dimension")
    _REGISTRY[extractor.name] = extractor
    return extractor


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def get_extractor(name: str | Extractor | None = None) -> Extractor:
    """The registered extractor ``name`` (None: :data:`DEFAULT_EXTRACTOR`); an Extractor is
    returned as is. Raises UsageError naming the known ones."""
    if isinstance(name, Extractor):
        return name
    _load_builtins()
    key = DEFAULT_EXTRACTOR if name is None else str(name)
    if key not in _REGISTRY:
        raise UsageError(f"unknown feature extractor {key!r}; choose from "
                         f"{', '.join(extractor_names())} (features=/--features; "
                         "'fidkit features list' shows them)")
    return _REGISTRY[key]


def extractor_names() -> list[str]:
    """Every registered name, in registration order."""
    _load_builtins()
    return list(_REGISTRY)


def iter_extractors() -> Iterator[Extractor]:
    _load_builtins()
    return iter(list(_REGISTRY.values()))
