"""Reading a published weights file into a state dict, and loading it into a network strictly.

Shared by the registry entries whose files are plain PyTorch pickles (SwAV, VGG16, ...):

* :func:`read_tensor_dict` opens the file with ``torch.load(weights_only=True)``, whose unpickler
  only rebuilds tensors and plain containers, so a weights file cannot run code. It handles both
  the zip container (torch >= 1.6) and the legacy one that files published before mid-2020 use.
* :func:`write_tensor_dict` writes test weights atomically in torch's zip container.
* :func:`load_renamed` maps the file's keys to the network's (dropping the ones the features do not
  use, such as a training head) and refuses any missing, unexpected or mis-shaped tensor with a
  one-line :class:`~fidkit.errors.WeightsError` that names the file and the fix.
* :func:`key_mismatch` says which keys a state dict lacks or has too many of, for such messages.
* :func:`check_outputs` validates the output names a network built from such a file is asked for.
"""
from __future__ import annotations

import pickle
from typing import Callable, Iterable

import torch
from torch import nn

from fidkit.errors import UsageError, WeightsError

#: Maps a key of the file to the network's key, or None to drop it.
Rename = Callable[[str], "str | None"]


def read_tensor_dict(path: object, *, network: str, fix: str) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` dict stored in the file at ``path`` (unwrapping a checkpoint's
    ``"state_dict"`` entry), loaded on the CPU without running code from the file.

    ``network`` names what the file should hold and ``fix`` says what to use instead; both go into
    the :class:`WeightsError` raised when the file is unreadable or holds something else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
            KeyError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise WeightsError(f"{path} is not a loadable PyTorch weights file for {network} "
                           f"({msg}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path} does not hold a {network} state dict; {fix}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path} does not hold a {network} state dict (entry {bad[0]!r} is not "
                           f"a named tensor); {fix}")
    return state


def write_tensor_dict(path: object, state: dict) -> None:
    """Write ``state`` to ``path`` atomically with ``torch.save``. The zip container gives the same
    bytes for the same tensors (the legacy container that published files may use names storages
    by memory address); :func:`read_tensor_dict` reads both."""
    from fidkit.fileio import atomic_writer

    with atomic_writer(path) as handle:
        torch.save(state, handle)


def key_mismatch(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """What a state dict lacks and has too many of, for an error message: e.g. ``"2 missing keys
    (e.g. fc.bias), 1 unexpected keys (e.g. head.weight)"`` (the first key of each in sorted
    order); ``""`` when both are empty."""
    what = []
    for keys, kind in ((sorted(missing), "missing"), (sorted(unexpected), "unexpected")):
        if keys:
            what.append(f"{len(keys)} {kind} keys (e.g. {keys[0]})")
    return ", ".join(what)


def load_renamed(module: nn.Module, state: dict[str, torch.Tensor], rename: Rename, *,
                 source: str, network: str, fix: str) -> None:
    """Load ``state`` into ``module`` after renaming its keys with ``rename`` (None drops a key).

    Every parameter and buffer of ``module`` must be given once with its shape, except
    batch norm's ``num_batches_tracked`` counters (unused in eval mode, absent from old files).
    Raises WeightsError naming ``source`` and ``fix`` otherwise."""
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        target = rename(key)
        if target is None or target.endswith("num_batches_tracked"):
            continue
        if target not in own or target in mapped:
            unexpected.append(key)
            continue
        mapped[target] = tensor
    what = key_mismatch(set(own) - set(mapped), unexpected)
    if what:
        raise WeightsError(f"{source} is not a {network} state dict: {what}; {fix}")
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected "
                               f"{tuple(own[key].shape)}; the file is not a {network} state "
                               f"dict; {fix}")
    module.load_state_dict(mapped, strict=False)


def check_outputs(outputs: Iterable[str], known: tuple[str, ...], *,
                  network: str) -> tuple[str, ...]:
    """``outputs`` as a tuple of names, each one of ``known``; raises UsageError naming
    ``network`` for an unknown name or for no name at all."""
    result = tuple(str(o) for o in outputs)
    unknown = [o for o in result if o not in known]
    if unknown or not result:
        raise UsageError(f"unknown {network} output {unknown[0] if unknown else None!r}; choose "
                         f"from {', '.join(known)}")
    return result
