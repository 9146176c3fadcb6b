"""How many BLAS threads the distances' dense linear algebra gets: as many as there are idle cores.

OpenBLAS (numpy's and scipy's) splits each LAPACK call over all its threads and makes them wait
for each other at every step of the factorisation. When another process keeps a core busy, the
thread that lost its core holds up the others at each step. Measured at d = 2048 on 2 cores with
one competing CPU-bound process: scipy's symmetric eigenvalues 0.76-1.2 s with 2 threads against
0.50 s with 1, scipy's SVD 3.7 s against 2.3 s, numpy's SVD 14-22 s against 2.2 s; idle, 2 threads
are 1.6x faster than 1 (0.33 s for the eigenvalues). Matrix products (dgemm, dsyrk, dtrmm) lose
nothing either way. So :func:`blas_threads` counts the cores that other processes are not running
on right now and lends the libraries that many threads (at least 1, never more than they had).

The count comes from the kernel's run queue (``/proc/loadavg``'s running-tasks field, sampled a few
times) minus this process's own running threads; where that is unavailable (not Linux) the
libraries keep their setting. ``FIDKIT_BLAS_THREADS=N`` fixes the number instead. The switch uses
threadpoolctl when it is installed and does nothing otherwise.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator, Optional

_LOCK = threading.Lock()
_CONTROLLER: Any = None


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def others_running() -> Optional[int]:
    """Tasks of other processes running or waiting for a core now; None when unknown."""
    try:
        peak = 0
        for _ in range(3):
            with open("/proc/loadavg", "rb") as handle:
                peak = max(peak, int(handle.read().split()[3].split(b"/")[0]))
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:  # the thread ended meanwhile
                continue
            own += stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R"
    except (OSError, ValueError, IndexError):
        return None
    return max(0, peak - own)


def free_cores() -> Optional[int]:
    """Cores not taken by other processes now (at least 1); None when unknown."""
    busy = others_running()
    return None if busy is None else max(1, cores() - busy)


def _controller() -> Any:
    """A threadpoolctl controller over the BLAS libraries of numpy and scipy (made once)."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    import scipy.linalg.lapack  # noqa: F401 - scipy's own OpenBLAS must be loaded to be seen

    with _LOCK:
        if _CONTROLLER is None:
            _CONTROLLER = ThreadpoolController().select(user_api="blas")
        return _CONTROLLER


@contextlib.contextmanager
def blas_threads(threads: Optional[int] = None) -> Iterator[Optional[int]]:
    """Run the body with the BLAS libraries limited to ``threads`` (default: the free cores, or
    ``FIDKIT_BLAS_THREADS``); yields the number set, None when nothing was changed. The previous
    settings come back on exit. Never raises for lack of threadpoolctl or /proc. The setting is
    process-wide: BLAS calls made meanwhile by other threads of this process get it too."""
    if threads is None:
        fixed = os.environ.get("FIDKIT_BLAS_THREADS", "").strip()
        threads = int(fixed) if fixed.isdigit() and int(fixed) > 0 else free_cores()
    controller = _controller() if threads is not None else None
    if controller is None or not controller.lib_controllers:
        yield None
        return
    current = max(lib.num_threads for lib in controller.lib_controllers)
    threads = max(1, min(int(threads), current))
    if threads == current:
        yield threads
        return
    with controller.limit(limits=threads):
        yield threads
