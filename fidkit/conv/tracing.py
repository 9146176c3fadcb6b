"""Shapes through torch modules: one layer (:func:`output_shape`) or a whole model (:func:`trace`).

Needs torch (imported here, not by :mod:`fidkit.conv`). :func:`trace` runs the model's own
``forward`` on the ``meta`` device: tensors there have shapes but no storage, so a 3-D UNet on a
512³ volume is traced in milliseconds with no memory, and the user's model is left untouched (its
parameters are swapped for meta stand-ins only for the duration of the call).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fidkit.conv import arithmetic
from fidkit.errors import UsageError

# Modules whose output has the input's shape.
_SHAPE_KEEPING: tuple[type, ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Softmax, nn.LogSoftmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
)

_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_T = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
_POOL = {nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.MaxPool3d: ("max", 3),
         nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2), nn.AvgPool3d: ("avg", 3)}
_ADAPTIVE = {nn.AdaptiveMaxPool1d: ("max", 1), nn.AdaptiveMaxPool2d: ("max", 2),
             nn.AdaptiveMaxPool3d: ("max", 3), nn.AdaptiveAvgPool1d: ("avg", 1),
             nn.AdaptiveAvgPool2d: ("avg", 2), nn.AdaptiveAvgPool3d: ("avg", 3)}


def _split(layer_name: str, input_shape: Sequence[int], nd: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (nd + 1, nd + 2):
        raise UsageError(
            f"{layer_name} takes (N, C, {nd} spatial axes) or (C, {nd} spatial axes) input, not "
            f"shape {shape}; add or drop axes"
        )
    return shape[:-nd], shape[-nd:]


def output_shape(layer: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The output shape of ``layer`` for an input of ``input_shape`` — ``(N, C, *spatial)``, or
    ``(C, *spatial)`` for unbatched input — computed by :mod:`fidkit.conv.arithmetic`, not by
    running the layer.

    Handles Conv*/ConvTranspose*/MaxPool*/AvgPool*/Adaptive*Pool* 1-3d, ``nn.Upsample``,
    ``nn.Linear``, ``nn.Flatten`` and shape-keeping layers (activations, norms, dropout).
    Raises :class:`UsageError` where torch would refuse the input (wrong channel count, wrong
    number of axes, a kernel larger than the padded input, ...) or for other layer types
    (use :func:`trace`, which runs any module on the meta device).
    """
    name = type(layer).__name__
    kind = type(layer)
    if kind in _CONV:
        lead, spatial = _split(name, input_shape, _CONV[kind])
        if lead[-1] != layer.in_channels:
            raise UsageError(f"{name} expects {layer.in_channels} input channels, got {lead[-1]} in "
                             f"shape {tuple(input_shape)}")
        res = arithmetic.conv(spatial, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        return lead[:-1] + (layer.out_channels,) + res.output_size
    if kind in _CONV_T:
        lead, spatial = _split(name, input_shape, _CONV_T[kind])
        if lead[-1] != layer.in_channels:
            raise UsageError(f"{name} expects {layer.in_channels} input channels, got {lead[-1]} in "
                             f"shape {tuple(input_shape)}")
        res = arithmetic.conv_transpose(spatial, layer.kernel_size, layer.stride, layer.padding,
                                        layer.output_padding, layer.dilation)
        return lead[:-1] + (layer.out_channels,) + res.output_size
    if kind in _POOL:
        pool_kind, nd = _POOL[kind]
        lead, spatial = _split(name, input_shape, nd)
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        dilation = getattr(layer, "dilation", 1)
        res = arithmetic.pool(spatial, layer.kernel_size, stride, layer.padding, dilation,
                              layer.ceil_mode, kind=pool_kind)
        return lead + res.output_size
    if kind in _ADAPTIVE:
        pool_kind, nd = _ADAPTIVE[kind]
        lead, spatial = _split(name, input_shape, nd)
        res = arithmetic.adaptive_pool(spatial, layer.output_size, kind=pool_kind)
        return lead + res.output_size
    if kind is nn.Upsample:
        shape = tuple(int(v) for v in input_shape)
        if not 3 <= len(shape) <= 5:
            raise UsageError(f"Upsample takes (N, C, 1 to 3 spatial axes) input, not shape {shape}")
        res = arithmetic.interpolate(shape[2:], layer.size, layer.scale_factor, layer.mode)
        return shape[:2] + res.output_size
    if kind is nn.Linear:
        shape = tuple(int(v) for v in input_shape)
        if not shape or shape[-1] != layer.in_features:
            raise UsageError(f"Linear expects {layer.in_features} input features on the last axis, "
                             f"got shape {shape}")
        return shape[:-1] + (layer.out_features,)
    if kind is nn.Flatten:
        shape = tuple(int(v) for v in input_shape)
        start, end = layer.start_dim % len(shape), layer.end_dim % len(shape)
        flat = 1
        for v in shape[start:end + 1]:
            flat *= v
        return shape[:start] + (flat,) + shape[end + 1:]
    if isinstance(layer, _SHAPE_KEEPING):
        return tuple(int(v) for v in input_shape)
    raise UsageError(f"output_shape does not know {name}; use fidkit.conv.trace(model, input_shape), "
                     "which runs any module on the meta device")


@dataclass(frozen=True)
class TraceRow:
    """One call in a traced forward pass: a leaf module, or (when ``functional=True``) a
    shape-changing ``torch.nn.functional`` call made outside any leaf."""

    name: str  # module path ("Mixed_5b.branch1x1.conv") or "F.max_pool2d" for a functional call
    type: str  # class name, or the function's name
    input_shape: tuple[int, ...] | None
    output_shape: tuple[tuple[int, ...], ...]  # one shape per tensor output
    parameters: int  # the module's own parameters (not its children's); 0 for functional calls

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "output_shape": [list(s) for s in self.output_shape], "parameters": self.parameters}


@dataclass(frozen=True)
class Trace:
    """The result of :func:`trace`: rows in call order, the model's output shapes, parameter counts."""

    input_shape: tuple[int, ...]
    rows: tuple[TraceRow, ...]
    output_shape: tuple[tuple[int, ...], ...]
    total_parameters: int
    uncalled: tuple[str, ...] = field(default=())  # leaf modules the forward pass never used

    def as_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "rows": [r.as_dict() for r in self.rows],
                "output_shape": [list(s) for s in self.output_shape],
                "total_parameters": self.total_parameters, "uncalled": list(self.uncalled)}

    def table(self) -> str:
        """A plain-text table, one line per row."""
        shape = lambda s: "x".join(map(str, s)) if s is not None else "-"  # noqa: E731
        lines = [("name", "type", "input", "output", "params")]
        for r in self.rows:
            lines.append((r.name, r.type, shape(r.input_shape),
                          ", ".join(shape(s) for s in r.output_shape), f"{r.parameters:,}"))
        widths = [max(len(line[i]) for line in lines) for i in range(5)]
        text = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                for line in lines]
        text.append(f"input {shape(self.input_shape)} -> output "
                    f"{', '.join(shape(s) for s in self.output_shape)}; "
                    f"{self.total_parameters:,} parameters")
        if self.uncalled:
            text.append(f"not called: {', '.join(self.uncalled)}")
        return "\n".join(text)

    def __str__(self) -> str:
        return self.table()


# torch.nn.functional calls that change spatial shape; recorded between leaves when asked.
_FUNCTIONAL = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate", "upsample", "pixel_shuffle",
    "pixel_unshuffle", "pad",
})


def _shapes(value: Any) -> tuple[tuple[int, ...], ...]:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape),)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return tuple(s for v in value for s in _shapes(v))
    return ()


class _FunctionalRecorder(TorchFunctionMode):
    def __init__(self, rows: list[TraceRow], depth: list[int]) -> None:
        super().__init__()
        self.rows, self.depth = rows, depth

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if (self.depth[0] == 0 and name in _FUNCTIONAL
                and getattr(func, "__module__", "") == "torch.nn.functional"):
            first = args[0] if args else None
            shape_in = tuple(first.shape) if isinstance(first, torch.Tensor) else None
            self.rows.append(TraceRow(f"F.{name}", name, shape_in, _shapes(result), 0))
        return result


@contextlib.contextmanager
def _hooks(model: nn.Module, rows: list[TraceRow], depth: list[int]) -> Iterator[set[str]]:
    called: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue

        def pre(mod, args, name=name):
            depth[0] += 1

        def post(mod, args, output, name=name):
            depth[0] -= 1
            first = args[0] if args else None
            own = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append(TraceRow(name or type(mod).__name__, type(mod).__name__,
                                 tuple(first.shape) if isinstance(first, torch.Tensor) else None,
                                 _shapes(output), own))
            called.add(name)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield called
    finally:
        for handle in handles:
            handle.remove()


def trace(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
          functional: bool = True) -> Trace:
    """Run ``model`` on a ``meta`` tensor of ``input_shape`` (e.g. ``(1, 3, 299, 299)`` or
    ``(1, 1, 64, 64, 64)``) and record every leaf module's call: name, type, input and output
    shapes, own parameter count. No memory is allocated and nothing is computed.

    ``functional=True`` also records shape-changing ``torch.nn.functional`` calls made between
    leaves (``F.max_pool2d`` in a ``forward``), named ``F.<function>``; other tensor operations
    (``torch.cat``, reshapes, arithmetic) are not rows, but their effect shows in the next row's
    input shape. Modules the forward pass never calls are listed in ``Trace.uncalled``.

    The model is not modified: parameters and buffers are replaced by meta tensors only for this
    call (``torch.func.functional_call``). Raises :class:`UsageError` when the forward pass
    fails (a shape mismatch torch reports), with torch's first message line.
    """
    shape = tuple(int(v) for v in input_shape)
    if not shape or any(v < 0 for v in shape):
        raise UsageError(f"input shape {input_shape!r} must be non-negative integers, e.g. 1x3x299x299")
    stand_ins = {name: torch.empty_like(t, device="meta")
                 for name, t in list(model.named_parameters()) + list(model.named_buffers())}
    rows: list[TraceRow] = []
    depth = [0]
    x = torch.empty(shape, dtype=dtype, device="meta")
    recorder = _FunctionalRecorder(rows, depth) if functional else contextlib.nullcontext()
    try:
        with _hooks(model, rows, depth) as called, torch.no_grad(), recorder:
            output = torch.func.functional_call(model, stand_ins, (x,))
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f" after {rows[-1].name}" if rows else ""
        raise UsageError(f"{type(model).__name__} fails on input {shape}{where}: {first}") from None
    leaves = [n for n, m in model.named_modules() if not any(True for _ in m.children())]
    total = sum(p.numel() for p in model.parameters())
    return Trace(shape, tuple(rows), _shapes(output), total,
                 tuple(n for n in leaves if n not in called and n))
