"""Chunked, resumable accumulation of feature statistics: an interrupted run, resumed at any world
size, gives the float64 statistics of an uninterrupted run bit for bit.

The design: the source's fixed order is cut into chunks of ``chunk_size`` items (a multiple of
the batch size), and every chunk is batched the same way whoever computes it and whenever
(batches start at the chunk's first item). Each chunk gets its own
:class:`~fidkit.statistics.StatisticsAccumulator`; the statistics are the merge of the chunk
accumulators *in chunk order*, a left fold ``((c0 + c1) + c2) + ...`` of Chan's update, in every
run: one process, many ranks, interrupted or not. So the arithmetic is always the same, and
resuming only skips chunks whose states are already on disk. (Features themselves must come out
the same: same weights, network path, device type and software; see docs/big_runs.md.)

A checkpoint is a folder (by default ``OUT.partial`` beside the output):

* ``checkpoint.json``: the format, the run's identity (:func:`run_identity`: the input's
  ``describe()`` and its SHA-256, the extractor, dims, convention, weights SHA-256, network path,
  device type, batch size, chunk size, DICOM options) and the number of items and chunks. A run
  whose identity differs is refused (:class:`UsageError`, exit 2, one line naming the
  differences), never silently reused;
* ``prefix.npz``: the fold of chunks ``0 .. k-1`` (the contiguous finished ones);
* ``chunk-NNNNNNNN.npz``: one finished chunk not yet folded into the prefix (ranks write their
  own; rank 0 folds them in order);
* ``chunk-NNNNNNNN.partial.npz``: a chunk's state after its first ``items_done`` items (a batch
  boundary), written every ``checkpoint_seconds`` and on SIGTERM/SIGUSR1.

Every ``.npz`` holds ``n`` (int64), ``mean`` (d,) and ``m2`` (d, d) float64 arrays (``m2`` the
centred scatter, covariance = m2 / (n - 1)) and ``info``, UTF-8 JSON as uint8: the chunk range,
``items_done``, the skipped items ``[index, item, reason]`` and the identity's SHA-256. They are
read with ``allow_pickle=False`` and checked; every file is written atomically
(:mod:`fidkit.fileio`). On SIGTERM or SIGUSR1 (SLURM pre-emption) the current chunk's state is
written after the batch in flight, and :class:`fidkit.errors.PreemptedError` (exit code
:data:`fidkit.errors.EXIT_PREEMPTED`, 75) is raised.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from fidkit.errors import InputError, PreemptedError, UsageError
from fidkit.statistics import StatisticsAccumulator

CHECKPOINT_FORMAT = "fidkit-checkpoint"
CHECKPOINT_VERSION = 1
#: Items per chunk when none is given (rounded up to a multiple of the batch size): 10,000 is a
#: multiple of both default batch sizes (16 on the CPU, 50 on a GPU).
DEFAULT_CHUNK_SIZE = 10_000
#: Seconds between checkpoints of a chunk in progress (finished chunks are written at once).
DEFAULT_CHECKPOINT_SECONDS = 600.0
#: Signals that write a checkpoint and stop the run (SLURM sends SIGTERM, or SIGUSR1 with
#: ``--signal=USR1@SECONDS``, before it kills a job).
STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGUSR1")

HEADER_NAME = "checkpoint.json"
PREFIX_NAME = "prefix.npz"
_CHUNK_FILE = re.compile(r"^chunk-(\d{8})(\.partial)?\.npz$")


def default_checkpoint_path(output: str | os.PathLike) -> Path:
    """``OUT.partial``: the checkpoint folder of a run writing ``output``."""
    return Path(f"{os.fspath(output)}.partial")


# ---------------------------------------------------------------------------------------------
# The plan: which items make which chunk

@dataclass(frozen=True)
class ChunkPlan:
    """``items`` items cut into chunks of ``chunk_size`` (the last one shorter), each batched
    in ``batch_size`` from its first item."""

    items: int
    chunk_size: int
    batch_size: int

    @classmethod
    def make(cls, items: int, batch_size: int, chunk_size: int | None = None) -> "ChunkPlan":
        """Raises UsageError unless ``chunk_size`` is a positive multiple of ``batch_size``;
        None gives :data:`DEFAULT_CHUNK_SIZE` rounded up to a multiple of the batch size."""
        if batch_size < 1:
            raise UsageError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
        if chunk_size is None:
            chunk_size = -(-DEFAULT_CHUNK_SIZE // batch_size) * batch_size
        if chunk_size < 1 or chunk_size % batch_size:
            raise UsageError(f"chunk_size={chunk_size} (--chunk-size) must be a positive multiple "
                             f"of the batch "
                             f"size {batch_size}, so that every chunk is batched the same way")
        return cls(int(items), int(chunk_size), int(batch_size))

    @property
    def chunks(self) -> int:
        return -(-self.items // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """[start, stop) of ``chunk`` in the source's order."""
        start = chunk * self.chunk_size
        return start, min(self.items, start + self.chunk_size)

    def assign(self, remaining: Iterable[int], rank: int, world: int) -> list[int]:
        """This rank's chunks: a contiguous block of the ``remaining`` ones (sorted), split as
        evenly as the count allows; deterministic for a given (remaining, world)."""
        todo = sorted(remaining)
        return todo[rank * len(todo) // world:(rank + 1) * len(todo) // world]


def run_identity(*, source: dict[str, Any], extractor: str, dims: int, convention: str,
                 weights_sha256: str, network: str, device_type: str, batch_size: int,
                 chunk_size: int, dicom: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """Everything that decides a run's numbers, as recorded in ``checkpoint.json``: the input
    (``source``, its ``describe()``; its SHA-256 is compared), the extractor and its tap
    (``dims``), the convention, the weights file's SHA-256, the network path (``"reference"`` for
    networks whose features are the reference network's bits), the device type (``"cpu"``,
    ``"cuda"``), batch and chunk size, DICOM options and any ``extra`` key (JSON values).
    Worker counts and ``skip_bad`` are not in it: they do not change the numbers."""
    canonical = json.dumps(source, sort_keys=True, default=str)
    identity = {
        "source_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "extractor": str(extractor), "dims": int(dims), "convention": str(convention),
        "weights_sha256": str(weights_sha256), "network": str(network),
        "device_type": str(device_type), "batch_size": int(batch_size),
        "chunk_size": int(chunk_size), "dicom": dicom,
    }
    identity.update(extra)
    return identity


def _identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Chunk states

@dataclass
class ChunkState:
    """The accumulated state of chunks ``[first, last]`` after ``items_done`` items of ``last``
    (the whole of the earlier ones); ``skipped`` holds ``[index, item, reason]`` triples."""

    first: int
    last: int
    items_done: int
    accumulator: StatisticsAccumulator
    skipped: list[list] = field(default_factory=list)

    def arrays(self, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, mean, m2 = self.accumulator.state()
        if n == 0:
            return (np.zeros((), np.int64), np.zeros(dims, np.float64),
                    np.zeros((dims, dims), np.float64))
        return (np.asarray(n, np.int64), _numpy64(mean), _numpy64(m2))


def _numpy64(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


def fold(states: Iterable[ChunkState]) -> ChunkState | None:
    """The left fold, in the given order, of chunk states (each the whole of its chunks), Chan's
    update: the only way fidkit combines chunks, so every run does the same arithmetic."""
    total: ChunkState | None = None
    for state in states:
        if total is None:
            total = ChunkState(state.first, state.last, state.items_done,
                               _copy(state.accumulator), list(state.skipped))
            continue
        if state.first != total.last + 1:
            raise RuntimeError(f"chunk {state.first} folded after chunk {total.last}")  # a bug
        total.accumulator.merge(state.accumulator)
        total.last, total.items_done = state.last, state.items_done
        total.skipped.extend(state.skipped)
    return total


def _copy(acc: StatisticsAccumulator) -> StatisticsAccumulator:
    n, mean, m2 = acc.state()
    out = StatisticsAccumulator(acc.dims)
    if n:
        out.n, out.mean, out.m2 = n, _numpy64(mean).copy(), _numpy64(m2).copy()
    return out


def save_state(path: Path, state: ChunkState, dims: int, identity_sha256: str) -> None:
    """Write ``state`` to ``path`` (``.npz``, atomically)."""
    from fidkit.fileio import atomic_writer

    n, mean, m2 = state.arrays(dims)
    info = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "first": state.first,
            "last": state.last, "items_done": state.items_done, "skipped": state.skipped,
            "identity_sha256": identity_sha256}
    encoded = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    with atomic_writer(path) as handle:
        np.savez(handle, n=n, mean=mean, m2=m2, info=encoded)


def load_state(path: Path, dims: int, identity_sha256: str) -> ChunkState:
    """Read a state written by :func:`save_state` without running code from it; InputError
    for a damaged file or one of another run."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("n", "mean", "m2", "info")}
        info = json.loads(arrays["info"].astype(np.uint8).tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: damaged checkpoint file ({' '.join(str(exc).split())[:100]}); "
                         f"delete the folder {path.parent} to start over") from None
    n, mean, m2 = arrays["n"], arrays["mean"], arrays["m2"]
    good = (isinstance(info, dict) and info.get("format") == CHECKPOINT_FORMAT
            and n.shape == () and n.dtype.kind == "i" and int(n) >= 0
            and mean.dtype == np.float64 and mean.shape == (dims,)
            and m2.dtype == np.float64 and m2.shape == (dims, dims)
            and np.isfinite(mean).all() and np.isfinite(m2).all()
            and isinstance(info.get("first"), int) and isinstance(info.get("last"), int)
            and isinstance(info.get("items_done"), int) and isinstance(info.get("skipped"), list))
    if not good:
        raise InputError(f"{path}: not a valid fidkit checkpoint file; delete the folder "
                         f"{path.parent} to start over")
    if info.get("identity_sha256") != identity_sha256:
        raise UsageError(f"{path} belongs to another run (its options or inputs differ); delete "
                         f"the folder {path.parent} to start over")
    acc = StatisticsAccumulator.from_state(int(n), mean, m2) if int(n) else StatisticsAccumulator(dims)
    return ChunkState(info["first"], info["last"], info["items_done"], acc, info["skipped"])


# ---------------------------------------------------------------------------------------------
# The checkpoint folder

class Checkpoint:
    """A checkpoint folder of one run (see the module's docstring). Open it with :meth:`open`."""

    def __init__(self, folder: Path, identity: dict[str, Any], plan: ChunkPlan, dims: int) -> None:
        self.folder = folder
        self.identity = identity
        self.plan = plan
        self.dims = dims
        self.identity_sha256 = _identity_digest(identity)
        self._prefix: ChunkState | None = None  # cached fold of chunks [0, k)
        self._unmade = False  # True until the folder exists (see make)

    @classmethod
    def open(cls, folder: str | os.PathLike, identity: dict[str, Any], plan: ChunkPlan,
             dims: int, *, create: bool = True) -> "Checkpoint":
        """Open (or with ``create``, make) the checkpoint folder of the run ``identity``.

        Raises UsageError when the folder holds another run's checkpoint (one line naming what
        differs) or is not a checkpoint folder; InputError when it cannot be made."""
        folder = Path(folder)
        checkpoint = cls(folder, identity, plan, dims)
        header = folder / HEADER_NAME
        wanted = checkpoint._header()
        if folder.is_dir() and header.exists():
            try:
                found = json.loads(header.read_text())
            except (OSError, ValueError):
                raise UsageError(f"{header}: damaged checkpoint header; delete the folder {folder} "
                                 "to start over") from None
            if not isinstance(found, dict) or found.get("format") != CHECKPOINT_FORMAT:
                raise UsageError(f"{folder}: not a fidkit checkpoint folder; choose another "
                                 "--checkpoint folder")
            if found != wanted:
                raise UsageError(f"{folder} holds a checkpoint of another run "
                                 f"({_difference(found, wanted)}); rerun with the same options "
                                 f"and inputs to resume, or delete {folder} to start over")
            return checkpoint
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} exists and is not a checkpoint folder; choose another "
                             "--checkpoint path")
        if folder.is_dir() and any(not (p.name.startswith(".") and p.name.endswith(".tmp"))
                                   for p in folder.iterdir()):
            raise UsageError(f"{folder} is a folder that is not a fidkit checkpoint; choose another "
                             "--checkpoint path")
        if not create:
            raise InputError(f"{folder}: no checkpoint there (is the folder on a file system every "
                             "node shares?)")
        if not folder.parent.is_dir():
            raise InputError(f"cannot make the checkpoint folder {folder}: folder {folder.parent} "
                             "does not exist")
        checkpoint._unmade = True  # made at the first write: a run that ends first leaves nothing
        return checkpoint

    def make(self) -> None:
        """Create the folder and write ``checkpoint.json`` (once; before the first state)."""
        if not self._unmade:
            return
        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot make the checkpoint folder {self.folder}: "
                             f"{exc.strerror}") from None
        from fidkit.fileio import atomic_write_bytes

        header = json.dumps(self._header(), indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(self.folder / HEADER_NAME, header.encode())
        self._unmade = False

    def _header(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "identity": json.loads(json.dumps(self.identity, default=str)),
                "identity_sha256": self.identity_sha256, "items": self.plan.items,
                "chunks": self.plan.chunks}

    # -- files

    def chunk_path(self, chunk: int, partial: bool = False) -> Path:
        return self.folder / f"chunk-{chunk:08d}{'.partial' if partial else ''}.npz"

    def _files(self) -> tuple[set[int], set[int]]:
        finished, partial = set(), set()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return finished, partial
        for name in names:
            match = _CHUNK_FILE.match(name)
            if match:
                (partial if match.group(2) else finished).add(int(match.group(1)))
        return finished, partial

    def prefix(self) -> ChunkState | None:
        """The fold of the finished chunks ``0 .. k-1`` recorded in ``prefix.npz`` (or None)."""
        if self._prefix is None:
            path = self.folder / PREFIX_NAME
            if path.exists():
                self._prefix = load_state(path, self.dims, self.identity_sha256)
        return self._prefix

    def done(self) -> set[int]:
        """Chunks whose results are on disk (in the prefix or in their own file)."""
        prefix = self.prefix()
        covered = set(range(prefix.last + 1)) if prefix is not None else set()
        finished, _ = self._files()
        return covered | finished

    def load_partial(self, chunk: int) -> ChunkState | None:
        path = self.chunk_path(chunk, partial=True)
        if not path.exists():
            return None
        state = load_state(path, self.dims, self.identity_sha256)
        start, stop = self.plan.bounds(chunk)
        if (state.first, state.last) != (chunk, chunk) or not 0 <= state.items_done <= stop - start \
                or state.items_done % self.plan.batch_size and state.items_done != stop - start:
            raise InputError(f"{path}: inconsistent partial chunk; delete it to redo that chunk")
        return state

    def save_partial(self, state: ChunkState) -> None:
        self.make()
        save_state(self.chunk_path(state.last, partial=True), state, self.dims, self.identity_sha256)

    def save_chunk(self, state: ChunkState) -> None:
        """Record a finished chunk (then drop its partial file)."""
        self.make()
        save_state(self.chunk_path(state.last), state, self.dims, self.identity_sha256)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.chunk_path(state.last, partial=True))

    def compact(self) -> ChunkState | None:
        """Fold the finished chunk files that continue the prefix into it, in chunk order (the
        prefix is rewritten atomically before the folded files are removed). Returns the
        prefix. Only one process may compact a folder at a time (rank 0)."""
        prefix = self.prefix()
        finished, _ = self._files()
        following = prefix.last + 1 if prefix is not None else 0
        states = [prefix] if prefix is not None else []
        folded = []
        while following in finished:
            states.append(load_state(self.chunk_path(following), self.dims, self.identity_sha256))
            folded.append(following)
            following += 1
        if folded:
            prefix = fold(states)
            save_state(self.folder / PREFIX_NAME, prefix, self.dims, self.identity_sha256)
            self._prefix = prefix
        for chunk in [c for c in finished if c < following]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.chunk_path(chunk))
        return prefix

    def remove(self) -> None:
        """Delete the checkpoint (see :func:`remove_checkpoint`)."""
        remove_checkpoint(self.folder)


def remove_checkpoint(folder: str | os.PathLike) -> None:
    """Delete a checkpoint folder's own files (header, states, temporary files) and the folder,
    which is left in place if it holds anything else. Nothing happens if it does not exist."""
    folder = Path(folder)
    for name in os.listdir(folder) if folder.is_dir() else ():
        if name in (HEADER_NAME, PREFIX_NAME) or _CHUNK_FILE.match(name) or (
                name.startswith(".") and name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    a, b = dict(found.get("identity") or {}), dict(wanted.get("identity") or {})
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if "source_sha256" in keys:
        keys.remove("source_sha256")
        keys.insert(0, "input")
        keys = [k for k in keys if k != "source"]
    parts = []
    for key in keys[:4]:
        if key == "input":
            parts.append("another input (archives, files or their sizes differ)")
        else:
            parts.append(f"{key} {_short(a.get(key))} there, {_short(b.get(key))} here")
    for key in ("items", "chunks", "version"):
        if not keys and found.get(key) != wanted.get(key):
            parts.append(f"{key} {found.get(key)} there, {wanted.get(key)} here")
    return "; ".join(parts) or "another format version"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "..."


# ---------------------------------------------------------------------------------------------
# Running

@dataclass
class Batch:
    """What a feature function yields per network batch of a sub-source: the positions (in that
    sub-source) of the items used, their features (len(positions), d), and the items that
    could not be read, as (position, item name, reason)."""

    positions: list[int]
    features: Any
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


#: A feature function: (a source, batch size) -> its batches in order, each holding the next
#: ``batch_size`` items (fewer at the end), the first batch starting at the source's first item.
FeatureBatches = Callable[[Any, int], Iterator[Batch]]


@dataclass
class ChunkedResult:
    """The fold of every chunk's accumulator in chunk order, the skipped items ``[index, item,
    reason]`` in order, how many chunks this rank computed and how many were already done."""

    accumulator: StatisticsAccumulator
    skipped: list[list]
    computed: int
    resumed: int


class _StopFlag:
    """Records SIGTERM/SIGUSR1 while the run is in progress, instead of dying at once (handlers
    are installed only in the main thread; the previous ones come back on exit)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)
                if number is not None:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, _frame: Any) -> None:
        self.signal = signal.Signals(number).name

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class _Escape(BaseException):
    """Carries a PreemptedError past :func:`fidkit.distributed.agreed_errors`: a pre-empted rank
    must exit now, not wait for the others to finish their chunks."""


def open_checkpoint(folder: str | os.PathLike, identity: dict[str, Any], plan: ChunkPlan,
                    dims: int, *, wait_seconds: float = 30.0) -> Checkpoint:
    """:meth:`Checkpoint.open` for every rank: rank 0 makes or checks the folder, then the
    others open it, waiting up to ``wait_seconds`` for a network file system to show it; a
    rank that cannot see it raises InputError on every rank (the folder must be on a file
    system every node shares)."""
    from fidkit import distributed

    if distributed.world_size() == 1:
        return Checkpoint.open(folder, identity, plan, dims)
    with distributed.agreed_errors():
        made = Checkpoint.open(folder, identity, plan, dims) if distributed.rank() == 0 else None
        if made is not None:
            made.make()  # now, so that every rank can check it sees the folder
    with distributed.agreed_errors():
        if made is not None:
            return made
        deadline = time.monotonic() + wait_seconds
        while not (Path(folder) / HEADER_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        try:
            return Checkpoint.open(folder, identity, plan, dims, create=False)
        except InputError:
            raise InputError(f"rank {distributed.rank()} cannot see the checkpoint folder "
                             f"{folder}; put it on a file system every node shares "
                             "(--checkpoint) or pass --no-checkpoint") from None


def accumulate_chunked(source: Any, batches: FeatureBatches, plan: ChunkPlan, dims: int, *,
                       checkpoint: Checkpoint | None = None,
                       checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
                       progress: Callable[[int], None] | None = None) -> ChunkedResult:
    """Statistics of ``source`` by chunks (see the module's docstring), resuming from and
    recording into ``checkpoint`` when given (:func:`open_checkpoint`). Under an initialised
    torch.distributed group every rank calls it with the same arguments; each computes a
    contiguous block of the chunks still to do, the states travel to every rank in chunk order,
    and every rank gets the same result, equal bit for bit to one process's.

    ``batches(sub_source, batch_size)`` computes features (see :class:`Batch`); ``progress(k)``
    is told of every ``k`` items done. With a checkpoint, SIGTERM or SIGUSR1 makes the run save
    the chunk in progress after the batch in flight and raise PreemptedError (at once, on that
    rank alone: the others are stopped by their launcher's or scheduler's signal). Anything
    ``batches`` raises is raised on every rank once all have stopped
    (:func:`fidkit.distributed.agreed_errors`); the chunks finished meanwhile are kept."""
    from fidkit import distributed

    if len(source) != plan.items:
        raise UsageError(f"the plan is for {plan.items} items, the source has {len(source)}")
    world, rank = distributed.world_size(), distributed.rank()
    with distributed.agreed_errors():
        done = _local_done(checkpoint, rank)
    if world > 1:
        done = set(distributed.gather_objects(sorted(done) if rank == 0 else None)[0])
    mine = plan.assign(set(range(plan.chunks)) - done, rank, world)
    kept: dict[int, ChunkState | None] = {}  # this rank's chunks (None: read back from its file)
    running: ChunkState | None = None  # one process without a checkpoint: the fold so far
    stop = _StopFlag() if checkpoint is not None else contextlib.nullcontext()
    try:
        with distributed.agreed_errors(), stop:
            for chunk in mine:
                try:
                    state = _run_chunk(source, batches, plan, dims, chunk, checkpoint,
                                       checkpoint_seconds, stop, progress)
                except PreemptedError as exc:
                    raise _Escape(exc) from None
                if checkpoint is not None and world == 1 and chunk == mine[-1]:
                    # The last chunk of one process: folded in memory, never written (a run of
                    # one chunk writes nothing unless stopped; a crash now redoes this chunk).
                    running = state
                elif checkpoint is not None:
                    checkpoint.save_chunk(state)
                    if world == 1:
                        checkpoint.compact()
                    kept[chunk] = None
                elif world == 1:
                    running = fold([running, state]) if running is not None else state
                else:
                    kept[chunk] = state
    except _Escape as escape:
        raise escape.args[0] from None
    if world == 1:
        total = running
        if checkpoint is not None:
            prefix = checkpoint.compact()
            if running is not None:
                total = fold([prefix, running]) if prefix is not None else running
            else:
                total = prefix
            _check_complete(total, plan, checkpoint)
    else:
        total = _merge_ranks(checkpoint, plan, dims, rank, done, kept)
    if total is None:
        return ChunkedResult(StatisticsAccumulator(dims), [], len(mine), len(done))
    return ChunkedResult(total.accumulator, list(total.skipped), len(mine), len(done))


def _local_done(checkpoint: Checkpoint | None, rank: int) -> set[int]:
    """The chunks already done, as rank 0 sees them after folding what it can (other ranks:
    empty; rank 0's view is shared with them)."""
    if checkpoint is None or rank != 0:
        return set()
    checkpoint.compact()
    return checkpoint.done()


def _run_chunk(source: Any, batches: FeatureBatches, plan: ChunkPlan, dims: int, chunk: int,
               checkpoint: Checkpoint | None, seconds: float, stop: Any,
               progress: Callable[[int], None] | None) -> ChunkState:
    from fidkit.distributed import SourceSlice

    start, end = plan.bounds(chunk)
    state = checkpoint.load_partial(chunk) if checkpoint is not None else None
    if state is None:
        state = ChunkState(chunk, chunk, 0, StatisticsAccumulator(dims))
    elif progress is not None and state.items_done:
        progress(state.items_done)
    offset = start + state.items_done
    last_save = time.monotonic()
    consumed = 0  # items of the slice [offset, end) behind us, at a batch boundary
    for batch in batches(SourceSlice(source, offset, end), plan.batch_size):
        if batch.positions and batch.features is not None:
            _update(state, batch.features)
        for position, item, reason in batch.skipped:
            state.skipped.append([offset + int(position), item, reason])
        seen = [*batch.positions, *(p for p, _, _ in batch.skipped)]
        if seen:
            boundary = min(end - offset, (max(seen) // plan.batch_size + 1) * plan.batch_size)
            if progress is not None and boundary > consumed:
                progress(boundary - consumed)
            consumed = max(consumed, boundary)
            state.items_done = offset - start + consumed
        signalled = getattr(stop, "signal", None)
        if checkpoint is not None and (signalled or time.monotonic() - last_save >= seconds):
            checkpoint.save_partial(state)
            last_save = time.monotonic()
            if signalled:
                raise PreemptedError(
                    f"stopped by {signalled} in chunk {chunk + 1} of {plan.chunks} "
                    f"({plan.items} items); progress saved in {checkpoint.folder}; run the same "
                    "command again to resume")
    if progress is not None and end - offset > consumed:
        progress(end - offset - consumed)
    state.items_done = end - start
    state.accumulator.state()  # a NaN batch still waiting on a card is raised here, in the chunk
    return state


def _on_device(features: Any) -> bool:
    return not isinstance(features, np.ndarray) and getattr(features, "is_cuda", False)


def _update(state: ChunkState, features: Any) -> None:
    """Fold a batch of features into a chunk's state, the same way in every run of the same
    device type. Features on the host: float64 numpy on the host (torch's and numpy's reductions
    do not sum in the same order, so one of them is used always). Features on a card: the batch
    moments are formed there, so that the host neither waits for the card after every batch nor
    runs a (d, d) product per batch; a state read back from a checkpoint moves there first
    (float64 both ways: exact). Chunks are folded together on the host either way (:func:`fold`)."""
    if not _on_device(features):
        state.accumulator.update(_host64(features))
        return
    held = state.accumulator
    if isinstance(held.mean, np.ndarray):  # resumed from a partial chunk file
        import torch

        n, mean, m2 = held.state()
        state.accumulator = StatisticsAccumulator.from_state(
            n, torch.as_tensor(mean, device=features.device),
            torch.as_tensor(m2, device=features.device))
    state.accumulator.update(features)


def _host64(features: Any) -> np.ndarray:
    # Always numpy on the host: batch moments computed by numpy in every run and on every rank
    # (torch's and numpy's reductions do not sum in the same order).
    if not isinstance(features, np.ndarray):
        features = features.detach().cpu().numpy()
    return features.astype(np.float64, copy=False)


def _merge_ranks(checkpoint: Checkpoint | None, plan: ChunkPlan, dims: int, rank: int,
                 done: set[int], kept: dict[int, ChunkState | None]) -> ChunkState | None:
    """Every chunk folded in chunk order, on every rank: chunk by chunk, the rank that holds
    a state (rank 0 for those done before this run, read from the checkpoint) sends it to all.
    The merge needs no shared file system; only resuming does."""
    from fidkit import distributed

    owners = distributed.gather_objects(sorted(kept))
    owner_of = {chunk: r for r, chunks in enumerate(owners) for chunk in chunks}
    total: ChunkState | None = None
    chunk = 0
    while chunk < plan.chunks:
        owner = owner_of.get(chunk, 0)
        with distributed.agreed_errors():
            state = _held_state(checkpoint, chunk, kept, done) if rank == owner else None
        state = _broadcast_state(state, owner, dims)
        if state is None:
            raise InputError(f"the result of chunk {chunk} is missing; rerun the same command to "
                             "compute it")
        total = fold([total, state]) if total is not None else state
        chunk = state.last + 1
    return total


def _held_state(checkpoint: Checkpoint | None, chunk: int, kept: dict[int, ChunkState | None],
                done: set[int]) -> ChunkState:
    """The state starting at ``chunk`` that this rank holds: in memory, its own chunk file, or
    (rank 0, a chunk done before this run) the checkpoint's prefix or chunk file."""
    state = kept.get(chunk)
    if state is not None:
        return state
    assert checkpoint is not None
    prefix = checkpoint.prefix()
    if chunk == 0 and prefix is not None and chunk in done:
        return prefix
    return load_state(checkpoint.chunk_path(chunk), checkpoint.dims, checkpoint.identity_sha256)


def _check_complete(total: ChunkState | None, plan: ChunkPlan, checkpoint: Checkpoint) -> None:
    covered = total.last + 1 if total is not None else 0
    if covered != plan.chunks:
        raise InputError(f"{checkpoint.folder}: the results of chunks {covered} to "
                         f"{plan.chunks - 1} are missing; is the folder on a file system every "
                         "node shares? (rerun the same command to compute them)")


def _broadcast_state(state: ChunkState | None, owner: int, dims: int) -> ChunkState | None:
    import torch.distributed as dist

    payload = [None]
    if state is not None:
        n, mean, m2 = state.arrays(dims)
        payload = [(state.first, state.last, state.items_done, int(n), mean, m2, state.skipped)]
    dist.broadcast_object_list(payload, src=owner)
    if payload[0] is None:
        return None
    first, last, items_done, n, mean, m2, skipped = payload[0]
    acc = StatisticsAccumulator.from_state(n, mean, m2) if n else StatisticsAccumulator(dims)
    return ChunkState(first, last, items_done, acc, skipped)


def used_indices(items: int, skipped: Iterable[list]) -> Iterator[int]:
    """Indices ``0 .. items-1`` minus the skipped ones, in order (for manifests)."""
    bad = {int(entry[0]) for entry in skipped}
    return (i for i in range(items) if i not in bad)


def report_batches(run: Callable[[Any, int, Any], Iterator[Any]], tap: str) -> FeatureBatches:
    """A :data:`FeatureBatches` from fidkit's runner contract: ``run(sub_source, batch_size,
    report)`` yields the network's output dicts batch by batch and, before each yield, extends
    ``report.used`` with the positions of that batch's items and ``report.skipped`` with
    ``(item name, reason)`` of the unreadable ones (:class:`fidkit.extractors.runner.ExtractionReport`).
    E.g. ``run = lambda sub, b, report: iter_features(sub, model, convention, batch_size=b,
    skip_bad=True, progress=False, report=report)``."""

    def batches(source: Any, batch_size: int) -> Iterator[Batch]:
        from fidkit.extractors.runner import ExtractionReport

        report = ExtractionReport()
        used = skipped = 0
        names: dict[str, int] | None = None
        for out in run(source, batch_size, report):
            positions = [int(p) for p in report.used[used:]]
            used = len(report.used)
            bad, names = _positions_of(source, report.skipped[skipped:], names)
            skipped = len(report.skipped)
            yield Batch(positions, out[tap], bad)
        bad, names = _positions_of(source, report.skipped[skipped:], names)
        if bad:  # trailing batches whose every item was unreadable
            yield Batch([], None, bad)

    return batches


def _positions_of(source: Any, entries: list, names: dict[str, int] | None
                  ) -> tuple[list[tuple[int, str, str]], dict[str, int] | None]:
    if not entries:
        return [], names
    if names is None:  # only when something was skipped: one pass over this chunk's names
        names = {source.item_name(i): i for i in range(len(source))}
    return [(names[item], item, reason) for item, reason in entries], names
