"""Process-wide heap setting that keeps a long CPU run of the *folded* network's memory flat.

Why: torch's CPU tensors come from glibc's ``malloc``. glibc serves blocks above its *mmap
threshold* with their own mapping (returned to the system on free) and smaller ones from the heap.
By default that threshold moves: each freed mapped block up to 32 MiB raises it to that size. The
folded channels-last network (``--fold-bn``) makes activations of 2-90 MiB on a batch of 16, so
after the first batch the 4-32 MiB ones (the Mixed blocks' outputs) land in the heap, where blocks
of many sizes and lifetimes fragment it: its peak RSS crept up with the number of images (1.11 GB
at 1k, 1.26 GB at 20k, measured in benchmarks/RESULTS.md). With the threshold pinned at 4 MiB
those blocks are mapped and unmapped instead, and the peak no longer depends on how many images
went through.

The price is a page fault per fresh page of a mapped block: 18-23 % of the folded network's CPU
images/s, and 30-40 % of the default (blocked, fidkit.extractors.networks.inception_blocked) network's. The default network
does not need the setting: its memory is flat without it (benchmarks/RESULTS.md). So the command
line applies it with ``--fold-bn`` only; ``FIDKIT_NO_ALLOC_TUNING=1`` turns it off there too.

This module imports neither torch nor numpy: the command line calls :func:`tune_allocator` before
torch is loaded. Library users running the folded network for long in their own process can call
it too, or set glibc's own ``MALLOC_MMAP_THRESHOLD_=4194304`` in the environment.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: The pinned threshold: activations of a batch of 16 at 299x299 above this are mapped.
MMAP_THRESHOLD = 4 * 1024 * 1024

_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>

#: Environment variables under which the user's own choice wins and nothing is changed.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> dict:
    """Pin glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process.

    Does nothing (and says why in the returned dict) off glibc, when the user set glibc's malloc
    variables or ``GLIBC_TUNABLES`` with a malloc entry, or when ``FIDKIT_NO_ALLOC_TUNING`` is set.
    Safe to call more than once; returns ``{"mmap_threshold": bytes}`` when applied.
    """
    if os.environ.get("FIDKIT_NO_ALLOC_TUNING", "") not in ("", "0"):
        return {"skipped": "FIDKIT_NO_ALLOC_TUNING is set"}
    if not sys.platform.startswith("linux"):
        return {"skipped": f"not glibc ({sys.platform})"}
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return {"skipped": f"the user's {user[0]} is kept"}
    libc = _glibc()
    if libc is None:
        return {"skipped": "not glibc"}
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return {"skipped": "mallopt refused the setting"}
    return {"mmap_threshold": MMAP_THRESHOLD}


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")  # no find_library: it runs ldconfig
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has it
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
