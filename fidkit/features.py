"""Running a source through the FID Inception: decoding and preprocessing in DataLoader workers,
the network on the chosen device in fp32 (TF32 off: the number must not depend on the card)."""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fidkit.errors import BadImageError, FidkitError, UsageError
from fidkit.inception import FIDInceptionV3
from fidkit.preprocess import Convention
from fidkit.sources import Source
from fidkit.weights import ResolvedWeights, load_state_dict, resolve_weights

_MODELS: dict[tuple, FIDInceptionV3] = {}


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


class _Prepared(torch.utils.data.Dataset):
    """Decodes and preprocesses one item in a worker; errors come back as values, not exceptions,
    so the main process can raise them as one clean line (or skip them)."""

    def __init__(self, source: Source, convention: Convention) -> None:
        self.source = source
        self.convention = convention

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            image = self.source.load(index)
            return index, self.convention.prepare_image(image), None
        except FidkitError as exc:
            return index, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - report, never crash the worker
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
            return index, None, f"{self.source.item_name(index)}: cannot read ({detail})"


def _collate(items):
    indices = [i for i, x, _ in items if x is not None]
    tensors = [x for _, x, _ in items if x is not None]
    errors = [(i, e) for i, x, e in items if x is None]
    batch = torch.stack(tensors) if tensors else None
    return indices, batch, errors


@dataclass
class ExtractionReport:
    used: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)


def default_workers() -> int:
    """Decoding workers: measured on a 2-core machine, one worker beside the network's threads."""
    cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def iter_features(
    source: Source,
    model: FIDInceptionV3,
    convention: Convention,
    *,
    batch_size: int = 50,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    report: ExtractionReport | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the network's outputs batch by batch (dict of (B, D) float32 tensors on the model's
    device). Unreadable items raise :class:`BadImageError` unless ``skip_bad``."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        _Prepared(source, convention), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=2 if workers else None,
    )
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
                    yield model(batch.to(device, non_blocking=True))
                if bar is not None:
                    bar.update(len(indices) + len(errors))
    finally:
        if bar is not None:
            bar.close()
