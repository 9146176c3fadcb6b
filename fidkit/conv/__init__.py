"""Conv, pool and resize shape arithmetic, and a model shape trace.

The arithmetic (:mod:`fidkit.conv.arithmetic`) is pure Python and importing this package does not
import torch; :func:`output_shape` and :func:`trace` (:mod:`fidkit.conv.tracing`) import it on first
use.

>>> from fidkit import conv
>>> conv.conv((8, 8), kernel_size=3, stride=2, padding=1).output_size
(4, 4)
>>> conv.conv_transpose((16, 16, 16), kernel_size=4, stride=2, padding=1).output_size
(32, 32, 32)
"""
from __future__ import annotations

import importlib
from typing import Any

from fidkit.conv.arithmetic import (
    ShapeResult,
    adaptive_pool,
    conv,
    conv_transpose,
    downsampling_choices,
    interpolate,
    padding_for,
    pool,
    same_padding,
    transpose_padding_for,
    upsampling_choices,
)

_LAZY = {"trace": "fidkit.conv.tracing", "output_shape": "fidkit.conv.tracing",
         "Trace": "fidkit.conv.tracing", "TraceRow": "fidkit.conv.tracing"}

__all__ = [
    "ShapeResult", "adaptive_pool", "conv", "conv_transpose", "downsampling_choices", "interpolate",
    "padding_for", "pool", "same_padding", "transpose_padding_for", "upsampling_choices",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fidkit.conv' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
