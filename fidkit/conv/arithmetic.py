"""Exact output sizes of convolutions, pools and resizes, as torch computes them.

Pure integer arithmetic (no torch import). Every function takes the *spatial* size of the input
(an ``int`` for 1-d, or a tuple of 1 to 3 ints such as ``(H, W)`` or ``(D, H, W)``, in pixels or
voxels), checks the configuration the way torch's layers do, and returns a :class:`ShapeResult`
holding the output size, the formula used, and the formula with each axis's numbers substituted.
A configuration that torch refuses (a kernel larger than the padded input, padding over half a
pooling kernel, ``output_padding`` not below the stride or dilation, ``padding="same"`` with a
stride, ...) raises :class:`fidkit.errors.UsageError` with a one-line message saying what to change.

The inverse helpers (:func:`same_padding`, :func:`padding_for`, :func:`transpose_padding_for`,
:func:`downsampling_choices`, :func:`upsampling_choices`) answer the questions one asks when
designing a network: which padding keeps the size, which kernel/stride/padding halve or double it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

from fidkit.errors import UsageError

SizeArg = Union[int, Sequence[int]]
#: ``int`` / tuple of ints, or the strings ``"same"`` / ``"valid"`` (convolutions only).
PaddingArg = Union[int, Sequence[int], str]

CONV_FORMULA = "out = floor((in + 2*p - d*(k-1) - 1) / s) + 1"
CONV_SAME_FORMULA = "out = in (padding='same', stride 1: total padding d*(k-1), left half rounded down)"
CONV_TRANSPOSE_FORMULA = "out = (in - 1)*s - 2*p + d*(k-1) + output_padding + 1"
POOL_FORMULA = "out = floor((in + 2*p - d*(k-1) - 1) / s) + 1"
POOL_CEIL_FORMULA = (
    "out = ceil((in + 2*p - d*(k-1) - 1) / s) + 1, minus 1 if the last window would start "
    "at or after in + p (torch: every window starts inside the input or the left padding)"
)
ADAPTIVE_FORMULA = "out = output_size (None keeps in)"
INTERPOLATE_SIZE_FORMULA = "out = size"
INTERPOLATE_SCALE_FORMULA = "out = floor(in * scale_factor)"


@dataclass(frozen=True)
class ShapeResult:
    """The output size of one layer and how it was computed.

    ``input_size`` and ``output_size`` are spatial sizes (no batch or channel axes), one int per
    axis. ``formula`` is the general rule; ``worked`` holds one line per axis with its numbers in.
    """

    operation: str
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    formula: str
    worked: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "operation": self.operation,
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "formula": self.formula,
            "worked": list(self.worked),
            "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()},
        }

    def __str__(self) -> str:
        size = lambda s: "x".join(map(str, s))  # noqa: E731
        return f"{self.operation}: {size(self.input_size)} -> {size(self.output_size)}"


# -- argument normalisation ---------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spatial(input_size: SizeArg) -> tuple[int, ...]:
    size = (input_size,) if _is_int(input_size) else tuple(input_size)  # type: ignore[arg-type]
    if not 1 <= len(size) <= 3 or not all(_is_int(v) for v in size):
        raise UsageError(f"input size {input_size!r} must be 1 to 3 integers (e.g. 64 or 64x64 or 16x64x64)")
    if any(v < 1 for v in size):
        raise UsageError(f"input size {_fmt(size)} has an empty axis; every spatial size must be at least 1")
    return size


def _per_axis(value: SizeArg, ndim: int, name: str) -> tuple[int, ...]:
    if _is_int(value):
        return (value,) * ndim  # type: ignore[return-value]
    try:
        values = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError(f"{name} {value!r} must be an integer or {ndim} integers") from None
    if len(values) != ndim or not all(_is_int(v) for v in values):
        raise UsageError(f"{name} {value!r} must be an integer or {ndim} integers, one per spatial axis")
    return values


def _at_least(values: tuple[int, ...], minimum: int, name: str) -> None:
    if any(v < minimum for v in values):
        raise UsageError(f"{name} {_fmt(values)} must be at least {minimum} on every axis")


def _fmt(values: Sequence[int]) -> str:
    return "x".join(map(str, values))


def _dilated(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


# -- forward arithmetic -------------------------------------------------------------------------

def conv(input_size: SizeArg, kernel_size: SizeArg, stride: SizeArg = 1,
         padding: PaddingArg = 0, dilation: SizeArg = 1) -> ShapeResult:
    """Output size of ``nn.Conv1d/2d/3d`` (``groups`` and channels do not change it).

    ``padding`` is per-side zero padding in pixels, or ``"same"`` (output = input; stride 1 only,
    the total padding ``d*(k-1)`` is split with the extra pixel on the right, as torch does) or
    ``"valid"`` (no padding). Raises :class:`UsageError` where torch would refuse the layer.
    """
    size = _spatial(input_size)
    nd = len(size)
    k = _per_axis(kernel_size, nd, "kernel size")
    s = _per_axis(stride, nd, "stride")
    d = _per_axis(dilation, nd, "dilation")
    _at_least(k, 1, "kernel size")
    _at_least(s, 1, "stride")
    _at_least(d, 1, "dilation")
    name = f"conv{nd}d"
    params: dict[str, Any] = {"kernel_size": k, "stride": s, "dilation": d}
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if any(v != 1 for v in s):
                raise UsageError(f"padding='same' needs stride 1, not {_fmt(s)}; give the padding "
                                 "as numbers (see fidkit conv same-padding)")
            params["padding"] = "same"
            worked = tuple(
                f"out = in = {n} (pads {d_ * (k_ - 1) // 2} left, {d_ * (k_ - 1) - d_ * (k_ - 1) // 2} right)"
                for n, k_, d_ in zip(size, k, d)
            )
            return ShapeResult(name, size, size, CONV_SAME_FORMULA, worked, params)
        else:
            raise UsageError(f"padding {padding!r} is not a number, 'same' or 'valid'")
    p = _per_axis(padding, nd, "padding")
    _at_least(p, 0, "padding")
    params["padding"] = p
    out, worked = [], []
    for n, k_, s_, p_, d_ in zip(size, k, s, p, d):
        span = _dilated(k_, d_)
        if n + 2 * p_ < span:
            raise UsageError(
                f"{name}: kernel {k_} (dilation {d_}, spans {span}) is larger than the padded input "
                f"{n}+2*{p_}={n + 2 * p_}; use a larger input, more padding or a smaller kernel"
            )
        o = (n + 2 * p_ - span) // s_ + 1
        out.append(o)
        worked.append(f"floor(({n} + 2*{p_} - {d_}*({k_}-1) - 1) / {s_}) + 1 = {o}")
    return ShapeResult(name, size, tuple(out), CONV_FORMULA, tuple(worked), params)


def conv_transpose(input_size: SizeArg, kernel_size: SizeArg, stride: SizeArg = 1,
                   padding: SizeArg = 0, output_padding: SizeArg = 0,
                   dilation: SizeArg = 1) -> ShapeResult:
    """Output size of ``nn.ConvTranspose1d/2d/3d``.

    ``output_padding`` (added on one side only) must be smaller than the stride or the dilation
    on each axis, as torch requires; the output must be at least 1. Raises :class:`UsageError`.
    """
    size = _spatial(input_size)
    nd = len(size)
    if isinstance(padding, str):
        raise UsageError(f"transposed convolutions take numeric padding, not {padding!r}")
    k = _per_axis(kernel_size, nd, "kernel size")
    s = _per_axis(stride, nd, "stride")
    p = _per_axis(padding, nd, "padding")
    op = _per_axis(output_padding, nd, "output padding")
    d = _per_axis(dilation, nd, "dilation")
    _at_least(k, 1, "kernel size")
    _at_least(s, 1, "stride")
    _at_least(d, 1, "dilation")
    _at_least(p, 0, "padding")
    _at_least(op, 0, "output padding")
    name = f"conv_transpose{nd}d"
    out, worked = [], []
    for n, k_, s_, p_, op_, d_ in zip(size, k, s, p, op, d):
        if op_ >= max(s_, d_):
            raise UsageError(
                f"{name}: output padding {op_} must be smaller than the stride {s_} or the dilation "
                f"{d_}; lower it"
            )
        o = (n - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + op_ + 1
        if o < 1:
            raise UsageError(
                f"{name}: input {n} with kernel {k_}, stride {s_}, padding {p_} gives output {o}; "
                "use less padding or a larger kernel or stride"
            )
        out.append(o)
        worked.append(f"({n} - 1)*{s_} - 2*{p_} + {d_}*({k_}-1) + {op_} + 1 = {o}")
    params = {"kernel_size": k, "stride": s, "padding": p, "output_padding": op, "dilation": d}
    return ShapeResult(name, size, tuple(out), CONV_TRANSPOSE_FORMULA, tuple(worked), params)


def pool(input_size: SizeArg, kernel_size: SizeArg, stride: SizeArg | None = None,
         padding: SizeArg = 0, dilation: SizeArg = 1, ceil_mode: bool = False,
         kind: str = "max") -> ShapeResult:
    """Output size of ``nn.MaxPool1d/2d/3d`` (``kind="max"``) or ``nn.AvgPool1d/2d/3d``
    (``kind="avg"``, which has no dilation).

    ``stride`` defaults to the kernel size, as in torch. Padding may be at most half the kernel
    size (rounded down); a 3-d average pool also needs the unpadded input to be at least the
    kernel size. With ``ceil_mode`` the size is rounded up, except that a last window
    starting at or after ``in + p`` (entirely in the right padding) is dropped. Raises
    :class:`UsageError` where torch would refuse.
    """
    if kind not in ("max", "avg"):
        raise UsageError(f"pool kind {kind!r} must be 'max' or 'avg'")
    size = _spatial(input_size)
    nd = len(size)
    k = _per_axis(kernel_size, nd, "kernel size")
    s = k if stride is None else _per_axis(stride, nd, "stride")
    if isinstance(padding, str):
        raise UsageError(f"pools take numeric padding, not {padding!r}")
    p = _per_axis(padding, nd, "padding")
    d = _per_axis(dilation, nd, "dilation")
    if kind == "avg" and any(v != 1 for v in d):
        raise UsageError("average pools have no dilation; use a max pool or dilation 1")
    _at_least(k, 1, "kernel size")
    _at_least(s, 1, "stride")
    _at_least(d, 1, "dilation")
    _at_least(p, 0, "padding")
    name = f"{kind}_pool{nd}d"
    out, worked = [], []
    for n, k_, s_, p_, d_ in zip(size, k, s, p, d):
        if 2 * p_ > k_:
            raise UsageError(f"{name}: padding {p_} is more than half the kernel size {k_}; "
                             f"use padding at most {k_ // 2}")
        if kind == "avg" and nd == 3 and n < k_:
            # avg_pool3d alone checks the unpadded input against the kernel (torch's
            # pool3d_shape_check with check_input_size); 1-d and 2-d accept padding to fit.
            raise UsageError(f"{name}: input {n} is smaller than the kernel {k_}; torch's 3-d "
                             "average pool refuses that even with padding; use a smaller kernel")
        span = _dilated(k_, d_)
        numerator = n + 2 * p_ - span
        if ceil_mode:
            o = -(-numerator // s_) + 1
            dropped = (o - 1) * s_ >= n + p_
            if dropped:
                o -= 1
            text = f"ceil(({n} + 2*{p_} - {d_}*({k_}-1) - 1) / {s_}) + 1" + (" - 1" if dropped else "")
        else:
            o = numerator // s_ + 1
            text = f"floor(({n} + 2*{p_} - {d_}*({k_}-1) - 1) / {s_}) + 1"
        if o < 1:
            raise UsageError(
                f"{name}: kernel {k_} (dilation {d_}, spans {span}) does not fit the padded input "
                f"{n}+2*{p_}={n + 2 * p_}; use a smaller kernel or a larger input"
            )
        out.append(o)
        worked.append(f"{text} = {o}")
    params = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": bool(ceil_mode)}
    if kind == "max":
        params["dilation"] = d
    formula = POOL_CEIL_FORMULA if ceil_mode else POOL_FORMULA
    return ShapeResult(name, size, tuple(out), formula, tuple(worked), params)


def adaptive_pool(input_size: SizeArg, output_size: int | None | Sequence[int | None],
                  kind: str = "avg") -> ShapeResult:
    """Output size of ``nn.AdaptiveAvgPool1d/2d/3d`` or ``nn.AdaptiveMaxPool1d/2d/3d``: the
    requested ``output_size`` (``None`` inside a 2-d/3-d tuple keeps that axis's input size; 0 is
    allowed). Raises :class:`UsageError` for negative sizes or a ``None`` torch would refuse."""
    if kind not in ("max", "avg"):
        raise UsageError(f"pool kind {kind!r} must be 'max' or 'avg'")
    size = _spatial(input_size)
    nd = len(size)
    if _is_int(output_size):
        wanted: tuple[int | None, ...] = (output_size,) * nd  # type: ignore[assignment]
    elif output_size is None:
        raise UsageError("adaptive pool output size None: give a size (None only inside a tuple)")
    else:
        wanted = tuple(output_size)  # type: ignore[arg-type]
        if len(wanted) != nd:
            raise UsageError(f"output size {output_size!r} must have {nd} entries, one per axis")
        if nd == 1 and wanted[0] is None:
            # torch's 1-d adaptive pools take only integers.
            raise UsageError("a 1-d adaptive pool needs an integer output size, not None")
    out, worked = [], []
    for n, w in zip(size, wanted):
        if w is None:
            o = n
            worked.append(f"None -> in = {n}")
        elif _is_int(w) and w >= 0:
            o = w
            worked.append(f"{w}")
        else:
            raise UsageError(f"adaptive pool output size {w!r} must be a non-negative integer or None")
        out.append(o)
    return ShapeResult(f"adaptive_{kind}_pool{nd}d", size, tuple(out), ADAPTIVE_FORMULA,
                       tuple(worked), {"output_size": wanted})


#: Interpolation modes that torch allows only for one number of spatial axes.
_MODE_AXES = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}


def interpolate(input_size: SizeArg, size: SizeArg | None = None,
                scale_factor: float | Sequence[float] | None = None,
                mode: str = "nearest") -> ShapeResult:
    """Output size of ``F.interpolate`` / ``nn.Upsample``. The mode does not change the size,
    but torch allows ``linear`` only on 1 axis, ``bilinear``/``bicubic`` on 2, ``trilinear`` on 3.

    Give exactly one of ``size`` (pixels) and ``scale_factor`` (the output is
    ``floor(in * scale_factor)`` in double precision, as torch computes it). Every output axis must
    be at least 1 (0 is allowed in ``area`` mode). Raises :class:`UsageError`.
    """
    spatial = _spatial(input_size)
    nd = len(spatial)
    if (size is None) == (scale_factor is None):
        raise UsageError("give exactly one of size and scale_factor")
    if mode in _MODE_AXES and _MODE_AXES[mode] != nd:
        raise UsageError(f"interpolation mode {mode!r} works on {_MODE_AXES[mode]} spatial axes, "
                         f"not {nd}; use {', '.join(m for m, n in _MODE_AXES.items() if n == nd)} "
                         "or 'nearest'")
    if size is not None:
        out = _per_axis(size, nd, "size")
        formula = INTERPOLATE_SIZE_FORMULA
        worked = tuple(str(o) for o in out)
        params: dict[str, Any] = {"size": out}
    else:
        if isinstance(scale_factor, (int, float)) and not isinstance(scale_factor, bool):
            factors = (float(scale_factor),) * nd
        else:
            factors = tuple(float(f) for f in scale_factor)  # type: ignore[union-attr]
            if len(factors) != nd:
                raise UsageError(f"scale factor {scale_factor!r} must have {nd} entries, one per axis")
        if not all(math.isfinite(f) for f in factors):
            raise UsageError(f"scale factor {scale_factor!r} must be finite")
        out = tuple(math.floor(n * f) for n, f in zip(spatial, factors))
        formula = INTERPOLATE_SCALE_FORMULA
        worked = tuple(f"floor({n} * {f!r}) = {o}" for n, f, o in zip(spatial, factors, out))
        params = {"scale_factor": factors}
    # 'area' is an adaptive average pool in torch, which accepts an empty output axis.
    minimum = 0 if mode == "area" else 1
    if any(o < minimum for o in out):
        raise UsageError(f"interpolate: output size {_fmt(out)} has an axis below {minimum}; use a "
                         "larger size or scale factor")
    return ShapeResult(f"interpolate{nd}d", spatial, out, formula, worked, params)


# -- inverse helpers ----------------------------------------------------------------------------

def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """The per-side padding that keeps the size of a stride-1 convolution (or a stride-1 pool):
    ``d*(k-1)/2``. Raises :class:`UsageError` when ``d*(k-1)`` is odd (an even kernel with odd
    dilation): then no symmetric padding keeps the size."""
    if not (_is_int(kernel_size) and kernel_size >= 1 and _is_int(dilation) and dilation >= 1):
        raise UsageError(f"kernel {kernel_size!r} and dilation {dilation!r} must be integers >= 1")
    total = dilation * (kernel_size - 1)
    if total % 2:
        raise UsageError(
            f"kernel {kernel_size} with dilation {dilation} needs {total} pixels of padding in total, "
            "an odd number: no symmetric padding keeps the size; use an odd kernel or padding='same'"
        )
    return total // 2


def padding_for(input_size: int, output_size: int, kernel_size: int, stride: int = 1,
                dilation: int = 1) -> int:
    """The smallest per-side padding ``p >= 0`` with which a convolution maps ``input_size`` to
    ``output_size``. Raises :class:`UsageError` (naming the sizes that are reachable) when none does."""
    for name, v, low in (("input size", input_size, 1), ("output size", output_size, 1),
                         ("kernel size", kernel_size, 1), ("stride", stride, 1), ("dilation", dilation, 1)):
        if not _is_int(v) or v < low:
            raise UsageError(f"{name} {v!r} must be an integer >= {low}")
    span = _dilated(kernel_size, dilation)
    # out == o  <=>  (o-1)*s <= in + 2p - span <= o*s - 1
    low = (output_size - 1) * stride + span - input_size
    high = output_size * stride - 1 + span - input_size
    p = max(0, -(-low // 2))
    if 2 * p > high:
        smallest = conv(input_size, kernel_size, stride, 0, dilation).output_size[0] \
            if input_size >= span else None
        reach = f"with padding 0 it gives {smallest}" if smallest else "it needs padding to fit"
        raise UsageError(
            f"no padding makes a kernel {kernel_size}, stride {stride}, dilation {dilation} "
            f"convolution map {input_size} to {output_size} ({reach}, and padding only adds); "
            "change the kernel or stride"
        )
    return p


def transpose_padding_for(input_size: int, output_size: int, kernel_size: int, stride: int = 1,
                          dilation: int = 1) -> tuple[int, int]:
    """The smallest ``(padding, output_padding)`` with which a transposed convolution maps
    ``input_size`` to ``output_size`` (``output_padding`` below the stride or dilation). Raises
    :class:`UsageError` when none does."""
    for name, v in (("input size", input_size), ("output size", output_size),
                    ("kernel size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not _is_int(v) or v < 1:
            raise UsageError(f"{name} {v!r} must be an integer >= 1")
    # out = (in-1)*s + span - 2p + op   =>   2p - op = r
    r = (input_size - 1) * stride + _dilated(kernel_size, dilation) - output_size
    p = max(0, -(-r // 2))
    op = 2 * p - r
    if op >= max(stride, dilation):
        largest = (input_size - 1) * stride + _dilated(kernel_size, dilation) + max(stride, dilation) - 1
        raise UsageError(
            f"no padding makes a kernel {kernel_size}, stride {stride}, dilation {dilation} transposed "
            f"convolution map {input_size} to {output_size} (at most {largest}); use a larger kernel "
            "or stride"
        )
    return p, op


def downsampling_choices(input_size: int, factor: int = 2, max_kernel: int = 7,
                         dilation: int = 1) -> list[dict[str, int]]:
    """Convolutions (stride ``factor``) that map ``input_size`` to exactly ``input_size / factor``:
    one ``{"kernel_size", "stride", "padding"}`` per kernel size 1..``max_kernel`` that can.
    Raises :class:`UsageError` when ``input_size`` is not a multiple of ``factor``."""
    if not (_is_int(factor) and factor >= 1 and _is_int(input_size) and input_size >= 1):
        raise UsageError(f"size {input_size!r} and factor {factor!r} must be integers >= 1")
    if input_size % factor:
        raise UsageError(
            f"{input_size} is not a multiple of {factor}: no layer divides it exactly; "
            f"crop or pad the input to {input_size - input_size % factor} or "
            f"{input_size + factor - input_size % factor} first"
        )
    choices = []
    for k in range(1, max_kernel + 1):
        try:
            p = padding_for(input_size, input_size // factor, k, factor, dilation)
        except UsageError:
            continue
        if 2 * p <= dilation * (k - 1):  # more padding than that reads only zeros at the edges
            choices.append({"kernel_size": k, "stride": factor, "padding": p})
    if not choices:
        raise UsageError(f"no kernel up to {max_kernel} divides {input_size} by {factor}; allow larger kernels")
    return choices


def upsampling_choices(input_size: int, factor: int = 2, max_kernel: int = 8,
                       dilation: int = 1) -> list[dict[str, int]]:
    """Transposed convolutions (stride ``factor``) that map ``input_size`` to exactly
    ``input_size * factor``: one ``{"kernel_size", "stride", "padding", "output_padding"}`` per
    kernel size 1..``max_kernel`` that can. Raises :class:`UsageError` when none can."""
    if not (_is_int(factor) and factor >= 1 and _is_int(input_size) and input_size >= 1):
        raise UsageError(f"size {input_size!r} and factor {factor!r} must be integers >= 1")
    choices = []
    for k in range(1, max_kernel + 1):
        try:
            p, op = transpose_padding_for(input_size, input_size * factor, k, factor, dilation)
        except UsageError:
            continue
        choices.append({"kernel_size": k, "stride": factor, "padding": p, "output_padding": op})
    if not choices:
        raise UsageError(f"no kernel up to {max_kernel} multiplies {input_size} by {factor}; "
                         "allow larger kernels")
    return choices
