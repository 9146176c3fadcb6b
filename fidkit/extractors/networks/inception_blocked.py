"""The CPU fast path that changes no bit: the FID Inception kept in oneDNN's blocked layout.

On the CPU torch runs each fp32 NCHW convolution through oneDNN, and a call does five things:
reorder the input into oneDNN's channel-blocked layout (16 channels a block with AVX-512),
reorder the weights the same way, run the convolution there, reorder the result back to NCHW;
then batch norm and ReLU are two more passes over memory. The convolution is most of the work,
the rest is memory traffic. :func:`blocked_copy` keeps only the convolution:

* activations stay blocked from one convolution to the next (torch's opaque ``mkldnn`` tensors),
  and each weight is reordered once, when the copy is made;
* batch norm and ReLU run as one oneDNN pass: a depthwise 1x1 convolution with a fused ReLU.

Why the bits do not change, step by step:

* the convolution is the same oneDNN primitive (implementation and blocking) on the same blocked
  data; only the reorders around it are gone;
* torch's CPU batch norm in eval mode computes, per channel, ``fma(x, a, b)`` with
  ``a = rsqrt(var + eps) * gamma`` and ``b = fma(-mean, a, beta)``. A depthwise 1x1
  convolution with weight ``a`` and bias ``b`` starts its accumulator at ``b`` and adds ``x * a``
  in one fused multiply-add: the same operation. ``b`` is read off torch's own batch norm applied
  to zeros, so it is torch's value bit for bit;
* ReLU, max pooling, concatenation and reorders move or compare values (a reorder done as a
  depthwise convolution by 1 too: ``fma(x, 1, 0) = x``); oneDNN's average pool (which, like TF,
  does not count padding) sums the same window in the same order.

One more fact decides which kernel the reference runs: torch sends a convolution to oneDNN only
when its own heuristic says so (:func:`torch_uses_onednn`); otherwise, e.g. a 1x1 convolution
on fewer than 16 images with one thread, it runs its own GEMM. A blocked layer does the same in
that case: it runs the reference layer itself, on a dense copy of its input.

These are facts about the kernels of the oneDNN build in torch, not guarantees of its API, so
they are checked, not assumed: ``tests/test_blocked.py`` holds every tap to bit-equality with the
reference network, and :func:`verified_blocked_copy` repeats that check on the machine it runs on
(one small batch, once per process) and falls back to the reference network if anything differs.
Where torch has no blocked operation (concatenation, the global average pool) the tensors are
reordered back to NCHW, as the reference network's own convolutions do.

Measured on a 2-core AVX-512 CPU: the forward at batch 16 takes 1.35x less time than the
reference network's; end to end on 1,000 PNGs, 7.73 img/s against 5.40 (``benchmarks/throughput.py``,
``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import copy
import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fidkit.extractors.networks.inception import BasicConv2d, Concat, FIDInceptionV3, GlobalAvgPool


def blocked_supported(device: torch.device | str) -> bool:
    """Whether :func:`blocked_copy` can run on ``device``: a CPU with torch's oneDNN, on."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


def torch_uses_onednn(shape: torch.Size | tuple[int, ...], kernel: tuple[int, int],
                      stride: tuple[int, int], groups: int = 1) -> bool:
    """Whether torch runs an fp32 CPU convolution of an NCHW input of ``shape`` through oneDNN
    (torch's ``ConvParams::use_mkldnn`` for a dense, undilated float32 input): single-threaded
    1x1 stride-1 convolutions of fewer than 16 images, and tiny ones, run on torch's own
    kernels instead. ``tests/test_blocked.py`` checks the layers that differ on each side of it."""
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    n, c, h, w = shape
    pointwise = tuple(kernel) == (1, 1) and tuple(stride) == (1, 1)
    # "For 1x1 filters, MKLDNN is faster than THNN when multi-threaded, but THNN is faster when
    # single-threaded" (torch's comment), and native is faster for some small cases.
    threaded = not pointwise or n >= 16 or torch.get_num_threads() > 1
    large = groups > 1 or (kernel[0] > 3 and kernel[1] > 3) or n > 1 or n * c * h * w > 20480
    return threaded and large


def _pack(weight: torch.Tensor, padding, stride, groups: int) -> torch.Tensor:
    """``weight`` reordered once into the blocked layout oneDNN's convolution wants."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.detach().float().contiguous().to_mkldnn(), list(padding), list(stride), [1, 1], groups)


class BlockedConv2d(nn.Module):
    """A :class:`~fidkit.extractors.networks.inception.BasicConv2d` (convolution, batch norm, ReLU) on blocked
    tensors: takes an opaque ``mkldnn`` tensor (or a dense NCHW one, reordered on entry) and
    returns an opaque one with the same values as the plain module's output."""

    def __init__(self, basic: BasicConv2d) -> None:
        super().__init__()
        conv, bn = basic.conv, basic.bn
        if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("BlockedConv2d takes the FID Inception's bias-free dense convolutions")
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.kernel = tuple(conv.kernel_size)
        # For inputs torch would not send to oneDNN (torch_uses_onednn). In a tuple: a plain
        # reference to the (shared, not copied) module, not a registered submodule.
        self._reference = (basic,)
        self.channels = conv.out_channels
        self.weight = _pack(conv.weight, conv.padding, conv.stride, 1)
        with torch.inference_mode():
            scale = torch.rsqrt(bn.running_var + bn.eps) * bn.weight
            # torch's batch norm of zeros is fma(0, a, b) = b: its own shift, bit for bit.
            zeros = torch.zeros(1, self.channels, 1, 1, dtype=scale.dtype, device=scale.device)
            shift = F.batch_norm(zeros, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                 False, 0.0, bn.eps).reshape(self.channels)
        # Dense: the fused-ReLU call takes only dense weights (a few hundred floats, reordered
        # per call at no measurable cost).
        self.scale = scale.detach().reshape(self.channels, 1, 1, 1).clone()
        self.shift = shift.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch_uses_onednn(x.shape, self.kernel, tuple(self.stride)):
            dense = x.to_dense() if x.is_mkldnn else x
            return self._reference[0](dense).to_mkldnn()
        if not x.is_mkldnn:
            x = x.contiguous().to_mkldnn()
        y = torch.mkldnn_convolution(x, self.weight, None, self.padding, self.stride, [1, 1], 1)
        return torch.ops.mkldnn._convolution_pointwise(
            y, self.scale, self.shift, [0, 0], [1, 1], [1, 1], self.channels, "relu", [], None)


#: Depthwise weights of ones, per channel count, for :func:`concat_blocked`.
_ONES: dict[int, torch.Tensor] = {}


def concat_blocked(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Channel concatenation of opaque (or dense) NCHW tensors, as one opaque blocked tensor.

    torch cannot concatenate opaque tensors: they go to NCHW, are concatenated there, and the
    result is reordered once into the blocked layout, by a depthwise 1x1 convolution with weight
    1 (``fma(x, 1, 0)`` is ``x``), so that the next block's three or four convolutions and its
    pool do not each reorder it again (3-7 % of the forward, measured)."""
    dense = torch.cat([t.to_dense() if t.is_mkldnn else t for t in parts], 1)
    channels = dense.size(1)
    ones = _ONES.get(channels)
    if ones is None:
        ones = _ONES[channels] = torch.ones(channels, 1, 1, 1)
    return torch.ops.mkldnn._convolution_pointwise(
        dense.to_mkldnn(), ones, None, [0, 0], [1, 1], [1, 1], channels, "none", [], None)


class BlockedConcat(Concat):
    """The blocks' concatenation on opaque blocked tensors (:func:`concat_blocked`)."""

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if not any(t.is_mkldnn for t in parts):
            return torch.cat(list(parts), 1)
        return concat_blocked(parts)


class DenseGlobalAvgPool(GlobalAvgPool):
    """The spatial mean in NCHW: oneDNN's global pool sums in another order than torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to_dense() if x.is_mkldnn else x)


def blocked_copy(model: FIDInceptionV3) -> FIDInceptionV3:
    """A copy of ``model`` (on the CPU) whose convolution + batch norm + ReLU layers run on
    blocked tensors (:class:`BlockedConv2d`). Same outputs, same bits; feed it dense NCHW float32
    input. ``model`` is left untouched. Raises ValueError off the CPU or without oneDNN."""
    first = next(model.parameters())
    if not blocked_supported(first.device):
        raise ValueError("the blocked network runs on a CPU with torch's oneDNN (mkldnn) only")
    blocked = copy.deepcopy(model)
    for parent_name, parent in list(blocked.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicConv2d):
                # built from the model's own layer, which it keeps for torch's non-oneDNN cases
                original = model.get_submodule(f"{parent_name}.{name}" if parent_name else name)
                setattr(parent, name, BlockedConv2d(original))
            elif isinstance(child, Concat):
                setattr(parent, name, BlockedConcat())
            elif isinstance(child, GlobalAvgPool):
                setattr(parent, name, DenseGlobalAvgPool())
    return blocked.train(False)


def check_bit_identical(model: FIDInceptionV3, blocked: FIDInceptionV3,
                        batch: int = 2, seed: int = 0) -> str | None:
    """Run one small random batch through both networks at every output; None when every
    output is bit-identical, else a one-line reason."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 299, 299, generator=generator) * 2 - 1
    outputs = model.outputs
    want = ("64", "192", "768", "2048", "logits_unbiased")
    try:
        model.outputs = blocked.outputs = want
        with torch.inference_mode():
            ref, got = model(x), blocked(x)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        return f"the blocked network failed ({_first_line(exc)})"
    finally:
        model.outputs = blocked.outputs = outputs
    for tap in want:
        if not torch.equal(ref[tap], got[tap]):
            diff = (ref[tap] - got[tap]).abs().max().item()
            return f"tap {tap} differs from the reference network by up to {diff:.2e}"
    return None


def verified_blocked_copy(model: FIDInceptionV3) -> FIDInceptionV3 | None:
    """:func:`blocked_copy` of ``model`` if, on this machine, it reproduces ``model`` bit for bit
    on a check batch (:func:`check_bit_identical`, ~0.5 s once per process); else None, with
    one line on stderr saying why (the caller then runs ``model`` itself)."""
    try:
        blocked = blocked_copy(model)
    except Exception as exc:  # noqa: BLE001 - a torch without these ops: run the reference
        _note(f"the blocked network cannot be built here ({_first_line(exc)})")
        return None
    reason = check_bit_identical(model, blocked)
    if reason is not None:
        _note(reason)
        return None
    return blocked


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__


def _note(reason: str) -> None:
    print(f"fidkit: note: running the reference network (slower) because {reason}",
          file=sys.stderr)
