"""Running a source through an extractor: decoding and preprocessing in threads that work ahead
of the network, the network on the chosen device in fp32 (TF32 off: the number must not depend on
the card).

Which copy of the network runs is one choice, ``network`` (:data:`NETWORK_CHOICES`):

* ``"reference"``: the module as written (for the FID Inception, pytorch-fid's float32
  operations in order). The default on CUDA and for every extractor without a faster copy.
* ``"blocked"``: the FID Inception on the CPU, kept in oneDNN's blocked layout
  (:mod:`fidkit.extractors.networks.inception_blocked`): the same convolution kernels without the
  reorders around them, features bit-identical to ``"reference"``, checked once per process on
  the machine itself (it falls back to ``"reference"`` otherwise).
* ``"auto"`` (the default): ``"blocked"`` where it exists and is supported, else ``"reference"``.

On a CUDA card the decoding threads only decode; the images are resized there in batches
(:func:`_device_batch`). Measured on a 2-core AVX-512 CPU and an H200
(``benchmarks/throughput.py``, ``benchmarks/gpu.py``, ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fidkit.defaults import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE
from fidkit.errors import BadImageError, FidkitError, UsageError, WeightsError
from fidkit.extractors import get_extractor
from fidkit.extractors.base import Convention, Extractor, ResolvedWeights
from fidkit.sources import Source

#: One loaded network at a time (the big ones are GBs): (extractor, weights sha, device) -> module.
_MODELS: dict[tuple, torch.nn.Module] = {}
#: The extractor each loaded module belongs to.
_EXTRACTOR_OF: "weakref.WeakKeyDictionary[torch.nn.Module, Extractor]" = weakref.WeakKeyDictionary()

#: The values of the ``network`` choice; see the module's docstring.
NETWORK_CHOICES: tuple[str, ...] = ("auto", "reference", "blocked")

#: Added to an unreadable item's reason when it stops the run. Sources give the reason and its
#: fix only: the same reason is what a skipping run reports, where this hint has been taken.
SKIP_BAD_HINT = "skip_bad=True / --skip-bad skips unreadable items"


def network_path(network: str | None, device: torch.device | str,
                 extractor: Extractor | str | None = None) -> str:
    """The network copy to run on ``device`` for the choice ``network`` (None is ``"auto"``):
    ``"blocked"`` for the FID Inception on a CPU with oneDNN, else ``"reference"``.
    Raises UsageError for an unknown value, or ``"blocked"`` where there is no blocked copy."""
    from fidkit.extractors.networks.inception_blocked import blocked_supported

    choice = "auto" if network is None else network
    if choice not in NETWORK_CHOICES:
        raise UsageError(f"network={network!r}: use one of {', '.join(NETWORK_CHOICES)} "
                         "(--network)")
    has_blocked = get_extractor(extractor).name == "inception"
    if choice == "reference":
        return "reference"
    if choice == "blocked" and not has_blocked:
        raise UsageError(f"network='blocked' exists for the FID Inception only, not "
                         f"{get_extractor(extractor).name}; use 'auto' or 'reference'")
    return "blocked" if has_blocked and blocked_supported(device) else "reference"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (None or "auto": CUDA when available). Raises UsageError for
    an unknown device or CUDA where there is none."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for but CUDA is not available here; use "
                         "device='cpu' (--device cpu)")
    return dev


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in key order): the
    identity of a user's own network in provenance."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def load_model(weights: str | os.PathLike | ResolvedWeights | None = None,
               outputs: Sequence[str] | None = None,
               device: str | torch.device | None = None,
               progress: bool = True, *,
               features: str | Extractor | None = None) -> tuple[torch.nn.Module, ResolvedWeights]:
    """The network of extractor ``features`` (None: the FID Inception) with ``weights`` (None:
    the canonical file, cached or downloaded) on ``device``, in eval mode, returning
    ``outputs`` (None: the default tap). Cached per process (one network at a time).
    Raises WeightsError (missing, corrupted or foreign file) and UsageError."""
    extractor = get_extractor(features)
    outputs = tuple(outputs) if outputs is not None else (extractor.tap_for(None),)
    dev = resolve_device(device)
    if extractor.weights is None:  # a user's own module: the registry holds it
        module = extractor.build({}, outputs)
        resolved = ResolvedWeights(None, state_dict_sha256(module), False)
        module = module.to(dev)
        _EXTRACTOR_OF[module] = extractor
        return module, resolved
    if isinstance(weights, ResolvedWeights):
        resolved = weights
    else:
        from fidkit.extractors.weights import resolve_weights

        resolved = resolve_weights(weights, spec=extractor.weights, progress=progress)
    key = (extractor.name, resolved.sha256, str(dev))
    model = _MODELS.get(key)
    if model is None:
        state = extractor.read_weights(resolved.path)
        try:
            model = extractor.build(state, outputs)
        except WeightsError as exc:
            raise WeightsError(f"{resolved.path}: {exc}") from None
        model = model.to(dev)
        _MODELS.clear()
        _MODELS[key] = model
        _EXTRACTOR_OF[model] = extractor
    model.outputs = outputs
    return model, resolved


def extractor_of(model: torch.nn.Module) -> Extractor:
    """The extractor a module from :func:`load_model` belongs to (the FID Inception otherwise)."""
    return _EXTRACTOR_OF.get(model) or get_extractor(None)


#: The blocked copies :func:`inference_copy` made, per model. Beside the model, not in it, so
#: that ``copy.deepcopy(model)`` and pickling never meet the blocked copy's opaque tensors.
_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def inference_copy(model: torch.nn.Module, path: str = "blocked") -> torch.nn.Module:
    """The network :func:`iter_features` runs for ``path``: ``model`` itself for
    ``"reference"``; for ``"blocked"``, :func:`~fidkit.extractors.networks.inception_blocked.
    verified_blocked_copy` (dense NCHW input), or ``model`` itself where that check failed.

    Memoised beside ``model`` and rebuilt when any of its tensors changed in place
    (``load_weights`` bumps their version counters) or it moved device, so callers may keep using
    and reloading the plain model. The copy's ``outputs`` follow the plain model's at every call.
    """
    if path == "reference":
        return model
    if path != "blocked":
        raise UsageError(f"unknown network path {path!r}; use reference or blocked")
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
        from fidkit.extractors.networks.inception_blocked import verified_blocked_copy

        fast = verified_blocked_copy(model)
        tensors = [*model.parameters(), *model.buffers()]
        copies[path] = ((first.device, first.dtype), tensors, [t._version for t in tensors], fast)
    if fast is None:  # the blocked copy did not reproduce the model here
        return model
    fast.outputs = model.outputs
    return fast


def select_network(model: torch.nn.Module, network: str | None,
                   device: torch.device | str) -> tuple[torch.nn.Module, str]:
    """The copy of ``model`` to run on ``device`` for the choice ``network``
    (:func:`network_path`) and the path that really runs: ``"reference"`` where the blocked
    copy's check failed and ``model`` itself runs."""
    path = network_path(network, device, extractor_of(model))
    chosen = inference_copy(model, path)
    return chosen, ("reference" if chosen is model else path)


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
    """(indices, batch, errors) of one batch. ``batch`` is a stacked float tensor; for raw items,
    or prepared inputs of different sizes (a convention that does not resize), a list of
    (positions, stacked tensor) groups of equal size."""
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
    elif all(t.shape == tensors[0].shape for t in tensors):
        batch = torch.stack(tensors)
    else:
        sized: dict[tuple, list[int]] = {}
        for position, x in enumerate(tensors):
            sized.setdefault(tuple(x.shape), []).append(position)
        batch = [(positions, torch.stack([tensors[p] for p in positions]))
                 for positions in sized.values()]
    return indices, batch, errors


def _run_groups(runnable: Any, groups: list[tuple[list[int], torch.Tensor]],
                device: torch.device) -> dict[str, torch.Tensor]:
    """The network over groups of equal-size inputs, outputs put back in the batch's order."""
    count = sum(len(positions) for positions, _ in groups)
    out: dict[str, torch.Tensor] = {}
    for positions, x in groups:
        part = runnable(x.to(device, non_blocking=True).contiguous())
        for name, value in part.items():
            if name not in out:
                out[name] = value.new_empty((count,) + tuple(value.shape[1:]))
            out[name][torch.tensor(positions, device=value.device)] = value
    return out


def _resize_on_device(device: torch.device, convention: Convention) -> bool:
    return device.type == "cuda" and convention.batched_on_device


def _device_batch(groups: list[tuple[list[int], torch.Tensor]], convention: Convention,
                  device: torch.device) -> torch.Tensor:
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
    return out.contiguous()


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
    """Provenance of the network copy that ran: ``{"network": path}`` (both copies give the
    reference network's bits; the record says which ran)."""
    return {"network": path} if path else {}


def default_workers() -> int:
    """Decoding workers (threads on the CPU, processes on CUDA): half the CPUs, at least 1, at
    most 8 (on a 2-core machine one thread beside the network's two intra-op threads;
    ``benchmarks/throughput.py --worker-sweep``)."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def iter_features(
    source: Source,
    model: torch.nn.Module,
    convention: Convention,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    report: ExtractionReport | None = None,
    network: str | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the network's outputs batch by batch (dict of (B, D) float32 tensors on the model's
    device), in the source's order.

    ``workers``: decoding threads, or on CUDA (resize on the card) decoding processes (None:
    :func:`default_workers`; 0 decodes in the caller's thread between batches).
    ``network``: which copy runs (:func:`network_path`: None/"auto" is the blocked copy of the
    FID Inception on a CPU with oneDNN, else ``model`` itself; "reference" is ``model`` itself,
    the copy the tests compare against).
    Raises :class:`BadImageError` for an unreadable item unless ``skip_bad``; UsageError for a
    batch size under 1 or a negative worker count."""
    device = next(model.parameters()).device
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE if device.type == "cuda" else DEFAULT_CPU_BATCH_SIZE
    if batch_size < 1:
        raise UsageError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise UsageError(f"workers (--workers) must be 0 or more, got {workers}")
    runnable, path = select_network(model, network, device)
    if report is not None:
        report.network = path
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
                        raise BadImageError(f"{reason} ({SKIP_BAD_HINT})")
                    if report is not None:
                        report.skipped.append((source.item_name(index), reason))
                if batch is not None:
                    if report is not None:
                        report.used.extend(indices)
                    if on_card:
                        batch = _device_batch(batch, convention, device)
                    elif isinstance(batch, list):  # inputs of several sizes
                        yield _run_groups(runnable, batch, device)
                        if bar is not None:
                            bar.update(len(indices) + len(errors))
                        continue
                    else:
                        if pin:
                            batch = batch.pin_memory()
                        batch = batch.to(device, non_blocking=True).contiguous()
                    yield runnable(batch)
                if bar is not None:
                    bar.update(len(indices) + len(errors))
    finally:
        loader.close()
        if bar is not None:
            bar.close()
