"""Running a source through the FID Inception: decoding and preprocessing in threads that work
ahead of the network, the network on the chosen device in fp32 (TF32 off: the number must not
depend on the card).

Three ways to run the same network (:data:`NETWORK_PATHS`, picked by :func:`network_path`):

* ``"reference"``: the module as written, pytorch-fid's float32 operations in order. The
  CLI's ``--exact``, ``fast=False``; the default on CUDA, where nothing faster measured faster
  at equal numerics (benchmarks/RESULTS.md).
* ``"blocked"``: the default on the CPU. The same convolution kernels on the same data, without
  the reorders around them (:mod:`fidkit.extractors.networks.inception_blocked`): features bit-identical to ``"reference"``,
  checked once per process on the machine itself (it falls back to ``"reference"`` otherwise).
* ``"folded"``: batch norm folded into the convolutions, in the layout its device's fp32 kernels
  are fastest in (:func:`fast_layout`). Opt-in (``--fold-bn``, ``fast="folded"``): its CPU
  forward is ~15 % faster than the blocked one's, but it changes the order of floating-point
  operations, and with the random test
  weights its pool_3 features are up to ~8e-5 of their largest magnitude from the reference's
  (as far as the reference's own float32 features are from float64: ``benchmarks/rounding.py``).
  Statistics record it in ``meta["fast_path"]``.

On a CUDA card the decoding threads only decode; the images are resized there in batches
(:func:`_device_batch`). Measured on a 2-core AVX-512 CPU and an H200
(``benchmarks/throughput.py``, ``benchmarks/gpu.py``, ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fidkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE
from fidkit.errors import BadImageError, FidkitError, UsageError
from fidkit.extractors.networks.inception import BasicConv2d, FIDInceptionV3
from fidkit.preprocess import Convention
from fidkit.sources import Source
from fidkit.extractors.weights import ResolvedWeights, load_state_dict, resolve_weights

_MODELS: dict[tuple, FIDInceptionV3] = {}

#: The networks :func:`iter_features` can run; see the module's docstring.
NETWORK_PATHS: tuple[str, ...] = ("reference", "blocked", "folded")
#: ``meta["fast_path"]`` of statistics made by the folded network (absent for the others, whose
#: features are the reference network's bit for bit).
FAST_PATH_NOTE = "batch norm folded into the convolutions, channels-last"


def network_path(fast: bool | str | None, device: torch.device | str) -> str:
    """The network to run on ``device`` for the API's ``fast`` argument: False is
    ``"reference"``; ``"folded"`` is ``"folded"``; None or True (the default) is ``"blocked"`` on
    a CPU with oneDNN and ``"reference"`` elsewhere. Raises UsageError for other values."""
    from fidkit.extractors.networks.inception_blocked import blocked_supported

    if fast is None or fast is True:
        return "blocked" if blocked_supported(device) else "reference"
    if fast is False:
        return "reference"
    if fast == "folded":
        return "folded"
    raise UsageError(f"fast={fast!r}: use None (the default), True, False (the reference "
                     "network) or 'folded'")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for but CUDA is not available here; use --device cpu")
    return dev


def load_model(weights: str | os.PathLike | ResolvedWeights | None = None,
               outputs: Sequence[str] = ("2048",),
               device: str | torch.device | None = None,
               progress: bool = True) -> tuple[FIDInceptionV3, ResolvedWeights]:
    """The FID Inception with the given weights on ``device`` (cached per process)."""
    resolved = weights if isinstance(weights, ResolvedWeights) else resolve_weights(weights, progress=progress)
    dev = resolve_device(device)
    key = (resolved.sha256, str(dev))
    model = _MODELS.get(key)
    if model is None:
        model = FIDInceptionV3(outputs=("2048",))
        model.load_weights(load_state_dict(resolved), source=str(resolved.path))
        model = model.to(dev)
        _MODELS.clear()  # one network (95 MB) at a time is enough
        _MODELS[key] = model
    model.outputs = tuple(outputs)
    return model, resolved


def fold_batchnorm(model: FIDInceptionV3) -> FIDInceptionV3:
    """A copy of ``model`` in which each convolution + batch norm pair is one convolution with a
    bias: ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``.

    The products are formed in float64 and rounded once to float32, so the folded network differs
    from the original only by the rounding of the reordered sums: each block within 1e-5 of the
    original block on the same input, growing through the depth to ~8e-5 of the largest pool_3
    feature with the random test weights (benchmarks/rounding.py).
    ``model`` itself is left untouched; the copy is in eval mode on the same device.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if not isinstance(module, BasicConv2d) or isinstance(module.bn, torch.nn.Identity):
            continue
        conv, bn = module.conv, module.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        fused = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                stride=conv.stride, padding=conv.padding, bias=True)
        with torch.no_grad():
            fused.weight.copy_(conv.weight.detach().double() * scale.view(-1, 1, 1, 1))
            fused.bias.copy_(bn.bias.detach().double() - bn.running_mean.detach().double() * scale)
        module.conv = fused.to(conv.weight.device)
        module.bn = torch.nn.Identity()
    return folded.train(False)


def fast_layout(device: torch.device | str) -> torch.memory_format:
    """Memory layout of the fast network on ``device``: channels-last on the CPU, where oneDNN's
    fp32 convolutions are fastest in it; NCHW on CUDA, where cuDNN's fp32 (non-TF32) kernels were
    faster in NCHW on an H200 (benchmarks/gpu.py, benchmarks/RESULTS.md)."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


#: The copies :func:`inference_copy` made, per model and path. Beside the model, not in it, so
#: that ``copy.deepcopy(model)`` and pickling never meet the blocked copy's opaque tensors.
_COPIES: "weakref.WeakKeyDictionary[FIDInceptionV3, dict]" = weakref.WeakKeyDictionary()


def inference_copy(model: FIDInceptionV3, path: str = "folded") -> FIDInceptionV3:
    """The network :func:`iter_features` runs for ``path`` (:data:`NETWORK_PATHS`): ``model``
    itself for ``"reference"``; for ``"folded"``, batch norm folded, weights in
    :func:`fast_layout` for the model's device (feed it inputs in that layout); for
    ``"blocked"``, :func:`fidkit.extractors.networks.inception_blocked.verified_blocked_copy` (dense NCHW input), or ``model``
    itself where that check failed.

    Memoised on ``model`` and rebuilt when any of its tensors changed in place (``load_weights``
    bumps their version counters) or it moved device, so callers may keep using and reloading
    the plain model. The copy's ``outputs`` follow the plain model's at every call.
    """
    if path == "reference":
        return model
    # Called once per batch, so the check must cost microseconds, not a state_dict() walk (which
    # was ~15 % of a batch of 50 on an H200): the tensors are listed once per copy and their
    # version counters compared; ``model.to`` swaps ``.data`` without bumping them, so the first
    # parameter's device and dtype are compared too.
    first = next(model.parameters())
    copies = _COPIES.setdefault(model, {})
    cached = copies.get(path)
    if cached is not None:
        where, tensors, versions, fast = cached
        if where != (first.device, first.dtype) or versions != [t._version for t in tensors]:
            cached = None
    if cached is None:
        if path == "folded":
            fast = fold_batchnorm(model).to(memory_format=fast_layout(first.device))
        elif path == "blocked":
            from fidkit.extractors.networks.inception_blocked import verified_blocked_copy

            fast = verified_blocked_copy(model)
        else:
            raise UsageError(f"unknown network path {path!r}; use one of {', '.join(NETWORK_PATHS)}")
        tensors = [*model.parameters(), *model.buffers()]
        copies[path] = ((first.device, first.dtype), tensors, [t._version for t in tensors], fast)
    if fast is None:  # the blocked copy did not reproduce the model here
        return model
    fast.outputs = model.outputs
    return fast


def select_network(model: FIDInceptionV3, fast: bool | str | None,
                   device: torch.device | str) -> tuple[FIDInceptionV3, str]:
    """The network to run on ``device`` for the API's ``fast`` argument (:func:`network_path`,
    :func:`inference_copy`) and the path that really runs: ``"reference"`` where the blocked
    copy's check failed and ``model`` itself runs."""
    path = network_path(fast, device)
    network = inference_copy(model, path)
    return network, ("reference" if network is model else path)


def input_layout(path: str, device: torch.device | str) -> torch.memory_format:
    """Memory layout the network of ``path`` takes its input in."""
    return fast_layout(device) if path == "folded" else torch.contiguous_format


@contextlib.contextmanager
def fp32_numerics():
    """Disable TF32 for matmul and cuDNN while the network runs (restored after)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


class _Prepared:
    """Decodes and preprocesses one item (in a decoding thread or process); errors come back as
    values, not exceptions, so the main thread can raise them as one clean line (or skip them).

    With ``raw`` the item comes back decoded but not resized: a C-contiguous (H, W, 3) array,
    uint8 as decoded (other dtypes as float32), for :func:`_device_batch` to stack, send to the
    card and resize there in one batched call."""

    def __init__(self, source: Source, convention: Convention, raw: bool = False) -> None:
        self.source = source
        self.convention = convention
        self.raw = raw

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            image = self.source.load(index)
            if self.raw:
                image = np.asarray(image)
                if image.dtype != np.uint8:
                    image = image.astype(np.float32)  # what torch's .float() gives, exactly
                return index, np.ascontiguousarray(image), None
            return index, self.convention.prepare_image(image), None
        except FidkitError as exc:
            return index, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash the thread
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
            return index, None, f"{self.source.item_name(index)}: cannot read ({detail})"


def _collate(items):
    """(indices, batch, errors) of one batch. ``batch`` is a stacked float tensor, or for raw
    items a list of (positions, stacked (k, H, W, 3) tensor) groups of equal-size images."""
    indices = [i for i, x, _ in items if x is not None]
    tensors = [x for _, x, _ in items if x is not None]
    errors = [(i, e) for i, x, e in items if x is None]
    if not tensors:
        batch = None
    elif isinstance(tensors[0], np.ndarray):
        groups: dict[tuple, list[int]] = {}
        for position, image in enumerate(tensors):
            groups.setdefault((image.shape, image.dtype.str), []).append(position)
        batch = [(positions, torch.from_numpy(np.stack([tensors[p] for p in positions])))
                 for positions in groups.values()]
    else:
        batch = torch.stack(tensors)
    return indices, batch, errors


def _resize_on_device(device: torch.device, convention: Convention) -> bool:
    return device.type == "cuda" and convention.batched_on_device


def _device_batch(groups: list[tuple[list[int], torch.Tensor]], convention: Convention,
                  device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """Decoded images, stacked by size as :func:`_collate` groups them -> the network's
    (N, 3, 299, 299) float32 input on ``device``, in order. They travel as uint8 through pinned
    memory (a quarter of the float bytes) and each size is resized in one call on the card; the
    convention's arithmetic is the same elementwise float32 operations as on the CPU."""
    parts = []
    for positions, host in groups:
        if device.type == "cuda" and not host.is_pinned():
            host = host.pin_memory()
        x = host.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
        parts.append((positions, convention.prepare(x)))
    if len(parts) == 1:
        out = parts[0][1]
    else:
        first = parts[0][1]
        count = sum(len(positions) for positions, _ in parts)
        out = torch.empty((count,) + tuple(first.shape[1:]), dtype=first.dtype, device=device)
        for positions, x in parts:
            out[torch.tensor(positions, device=device)] = x
    return out.contiguous(memory_format=layout)


#: Whether a CUDA run decodes in worker processes (:func:`_process_batches`) rather than threads.
_DECODE_PROCESSES_ON_CARD = True


def _process_batches(items: _Prepared, batch_size: int, workers: int) -> Iterator[tuple]:
    """Like :func:`_batches`, decoding in ``workers`` processes (torch's DataLoader, batches
    handed over in shared memory and pinned by its pin thread). Used on CUDA, where the host
    must decode as fast as the card computes: PIL's decoders take the GIL back many times per
    image, so decoding threads were held to ~600 PNGs/s on a 16-core host (benchmarks/gpu.py),
    whereas the CPU path is bound by the network and keeps the threads' smaller memory."""
    from torch.utils.data import DataLoader

    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=torch.cuda.is_available(),
                        prefetch_factor=4)
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        del iterator  # stops the worker processes


def _batches(items: _Prepared, batch_size: int, threads: int) -> Iterator[tuple]:
    """Collated batches in order. With ``threads`` > 0 a pool of that many threads decodes ahead
    (at most the current and the next batch in flight) while the caller runs the network.

    Threads on the CPU path: there the network, not decoding, sets the pace, and a thread adds
    no memory, whereas each forked DataLoader worker carried its own resident copy of torch and
    the model (+0.5-0.7 GB summed RSS per worker measured here). PIL's decoders take the GIL
    back several times per image, which caps threads at ~600 PNGs/s on a 16-core host; the CUDA
    path, which needs more, decodes in processes (:func:`_process_batches`)."""
    n = len(items)
    if threads == 0:
        for start in range(0, n, batch_size):
            yield _collate([items[i] for i in range(start, min(n, start + batch_size))])
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fidkit-decode")
    pending: deque = deque()
    submitted = 0
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            while submitted < min(n, stop + batch_size):
                pending.append(pool.submit(items.__getitem__, submitted))
                submitted += 1
            yield _collate([pending.popleft().result() for _ in range(stop - start)])
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class ExtractionReport:
    used: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    network: str = ""  # the network path that ran (NETWORK_PATHS)


def network_meta(path: str) -> dict[str, str]:
    """Provenance of the network path that ran: ``{"network": path}``, plus ``"fast_path"`` for
    the folded network, the one whose features are not the reference network's bits."""
    meta = {"network": path} if path else {}
    if path == "folded":
        meta["fast_path"] = FAST_PATH_NOTE
    return meta


def default_workers() -> int:
    """Decoding workers (threads on the CPU, processes on CUDA): half the CPUs, at least 1, at
    most 8 (on a 2-core machine one thread beside the network's two intra-op threads;
    ``benchmarks/throughput.py --worker-sweep``)."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def iter_features(
    source: Source,
    model: FIDInceptionV3,
    convention: Convention,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    report: ExtractionReport | None = None,
    optimized: bool | str | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the network's outputs batch by batch (dict of (B, D) float32 tensors on the model's
    device), in the source's order.

    ``workers``: decoding threads, or on CUDA (resize on the card) decoding processes (None:
    :func:`default_workers`; 0 decodes in the caller's thread between batches).
    ``optimized``: which network runs, as :func:`network_path` reads it (None: ``"blocked"`` on
    the CPU, ``model`` itself on CUDA; False: ``model`` itself, the reference the tests compare
    against; ``"folded"``: the folded copy).
    Raises :class:`BadImageError` for an unreadable item unless ``skip_bad``; UsageError for a
    batch size under 1 or a negative worker count."""
    device = next(model.parameters()).device
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if device.type == "cuda" else DEFAULT_CPU_BATCH_SIZE
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    network, path = select_network(model, optimized, device)
    if report is not None:
        report.network = path
    layout = input_layout(path, device)
    # On a card the resize runs there, batched (decoding threads only decode); conventions whose
    # resize is PIL's own (clean) stay per image in the threads.
    on_card = _resize_on_device(device, convention)
    items = _Prepared(source, convention, raw=on_card)
    if on_card and workers > 0 and _DECODE_PROCESSES_ON_CARD:
        loader = _process_batches(items, batch_size, workers)
    else:
        loader = _batches(items, batch_size, workers)
    pin = device.type == "cuda"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source), unit="img", desc="features", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty() and progress != "always")
    try:
        with torch.inference_mode(), fp32_numerics():
            for indices, batch, errors in loader:
                for index, reason in errors:
                    if not skip_bad:
                        raise BadImageError(reason)
                    if report is not None:
                        report.skipped.append((source.item_name(index), reason))
                if batch is not None:
                    if report is not None:
                        report.used.extend(indices)
                    if on_card:
                        batch = _device_batch(batch, convention, device, layout)
                    else:
                        if pin:
                            batch = batch.pin_memory()
                        batch = batch.to(device, non_blocking=True).contiguous(memory_format=layout)
                    yield network(batch)
                if bar is not None:
                    bar.update(len(indices) + len(errors))
    finally:
        loader.close()
        if bar is not None:
            bar.close()
