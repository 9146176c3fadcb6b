"""Running fidkit on torch.distributed: sharding a source across ranks, merging statistics and
gathering features so that N processes give the numbers one process gives.

fidkit never starts a process group of its own inside library code: :func:`compute_statistics` and
the streaming metrics use whatever group the caller (or ``torchrun`` + the CLI, see
:func:`init_from_environment`) initialised, with gloo on CPU and nccl on GPU.

Merging is exact up to rounding and deterministic: every rank all-gathers every rank's
``(n, mean, M2)`` and folds them with Chan's update *in rank order*, so all ranks hold the same bits
and the result equals one pass over the concatenated features to ~1e-15 relative. Summing raw
moments (sum x, sum x x^T) instead would lose digits to the mean. Ranks take contiguous blocks of
a source, so features gathered in rank order are in the source's order (KID subsets and
``keep_features`` match a single process exactly).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import numpy as np

from fidkit.statistics import StatisticsAccumulator


def _dist():
    import torch.distributed as dist

    return dist


def is_active() -> bool:
    """True when a torch.distributed process group is initialised (any world size)."""
    if "torch" not in sys.modules:
        return False  # no process group without torch; and a cache hit must not import it
    try:
        dist = _dist()
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return bool(dist.is_available() and dist.is_initialized())


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return int(_dist().get_rank()) if is_active() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return int(_dist().get_world_size()) if is_active() else 1


def is_writer() -> bool:
    """True on the one process that writes files and prints results (rank 0)."""
    return rank() == 0


def init_from_environment(device: str | None = None) -> str | None:
    """Initialise the default process group when launched by ``torchrun`` (WORLD_SIZE > 1 in the
    environment) and none exists yet: nccl when this rank will use CUDA, gloo otherwise.

    Returns the device this rank should use (``cuda:LOCAL_RANK`` for a CUDA run, else ``device``
    unchanged). Does nothing outside torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_active():
        return device
    import torch

    dist = _dist()
    use_cuda = torch.cuda.is_available() and (device is None or str(device) in ("cuda", "auto"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def _collective_device(reference: Any = None):
    import torch

    if _dist().get_backend() == "nccl":
        if reference is not None and getattr(reference, "is_cuda", False):
            return reference.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def merge_accumulator(acc: StatisticsAccumulator, dims: int) -> StatisticsAccumulator:
    """The accumulator of all ranks' samples (a new object; ``acc`` is left as it is). Every rank
    must call it; each gets the same result, on ``acc``'s device (CPU torch tensors if empty)."""
    if not is_active():
        return acc
    import torch

    dist = _dist()
    n, mean, m2 = acc.state()
    device = _collective_device(mean if isinstance(mean, torch.Tensor) else None)
    if n == 0:
        mean_t = torch.zeros(dims, dtype=torch.float64, device=device)
        m2_t = torch.zeros(dims, dims, dtype=torch.float64, device=device)
    else:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).to(device)
        m2_t = torch.as_tensor(m2, dtype=torch.float64).to(device)
    n_t = torch.tensor([int(n)], dtype=torch.int64, device=device)
    world = world_size()
    ns = [torch.zeros_like(n_t) for _ in range(world)]
    means = [torch.zeros_like(mean_t) for _ in range(world)]
    m2s = [torch.zeros_like(m2_t) for _ in range(world)]
    dist.all_gather(ns, n_t)
    dist.all_gather(means, mean_t)
    dist.all_gather(m2s, m2_t)
    target = mean.device if isinstance(mean, torch.Tensor) else torch.device("cpu")
    merged = StatisticsAccumulator(dims)
    for count, mu, scatter in zip(ns, means, m2s):
        merged.merge(StatisticsAccumulator.from_state(int(count.item()), mu.to(target), scatter.to(target)))
    return merged


def gather_rows(rows: Any, width: int, dtype: Any = None) -> Any:
    """Concatenate every rank's (n_r, width) tensor in rank order (ranks may hold different n_r,
    including 0 or ``None``). Returns a tensor on ``rows``' device (CPU if ``rows`` is None)."""
    import torch

    dtype = dtype or (rows.dtype if rows is not None else torch.float32)
    if rows is None:
        rows = torch.zeros(0, width, dtype=dtype)
    if not is_active():
        return rows
    dist = _dist()
    home = rows.device
    device = _collective_device(rows)
    local = rows.to(device=device, dtype=dtype).contiguous()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    sizes = [int(c.item()) for c in counts]
    most = max(sizes)
    # all_gather needs equal shapes: pad to the largest rank, then trim.
    padded = torch.zeros(most, width, dtype=dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(home)


class SourceSlice:
    """Items ``[start, stop)`` of a source, indexed from 0; ``item_name`` names the original item
    and ``describe()`` is the whole source's (the statistics describe what was measured, not who
    measured which part). Any other attribute is the source's: DICOM sources carry their options
    (spacing, window) for the provenance."""

    def __init__(self, source: Any, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, index: int) -> np.ndarray:
        return self.source.load(self.start + index)

    def item_name(self, index: int) -> str:
        return self.source.item_name(self.start + index)

    def describe(self) -> dict[str, Any]:
        return self.source.describe()

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet (unpickling): no recursion through self.source
            raise AttributeError(name)
        return getattr(self.source, name)


class ShardedSource(SourceSlice):
    """Rank ``rank``'s contiguous block ``[rank N // W, (rank + 1) N // W)`` of a source."""

    def __init__(self, source: Any, rank_: int, world: int) -> None:
        n = len(source)
        super().__init__(source, rank_ * n // world, (rank_ + 1) * n // world)


def shard(source: Any) -> Any:
    """This rank's part of ``source`` (the source itself without a process group)."""
    if not is_active():
        return source
    return ShardedSource(source, rank(), world_size())


@contextlib.contextmanager
def agreed_errors() -> Iterator[None]:
    """Make every rank raise when any rank raises inside the block (a lone failing rank would
    leave the others waiting forever in the next collective). The failing rank re-raises its own
    exception; the others raise the same :class:`FidkitError` class with the same message (or a
    RuntimeError naming the rank for anything else). No-op without a process group."""
    if not is_active():
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
        error = exc
    infos = gather_objects(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for index, info in enumerate(infos):
        if info is not None:
            raise _rebuild(info, index)


def _rebuild(info: tuple[str, str], index: int) -> Exception:
    from fidkit import errors

    name, message = info
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.FidkitError):
        return cls(message)
    return RuntimeError(f"rank {index} failed: {name}: {message}")


def merge_extraction(acc: StatisticsAccumulator, dims: int, sharded: Any, report: Any,
                     kept: dict[str, list]) -> StatisticsAccumulator:
    """After each rank has run its shard in :func:`fidkit.api.compute_statistics`: merge the
    statistics, turn the report's indices into the whole source's and gather it, and gather the
    kept per-image arrays (lists of float32 numpy batches, one entry per rank afterwards).
    No-op without a process group."""
    if not is_active():
        return acc
    merged = merge_accumulator(acc, dims)
    offset = getattr(sharded, "start", 0)
    local = ([offset + i for i in report.used], list(report.skipped),
             {name: (np.concatenate(parts) if parts else None) for name, parts in kept.items()})
    everyone = gather_objects(local)
    report.used = [i for used, _, _ in everyone for i in used]
    report.skipped = [s for _, skipped, _ in everyone for s in skipped]
    for name in kept:
        kept[name] = [arrays[name] for _, _, arrays in everyone if arrays[name] is not None]
    return merged
