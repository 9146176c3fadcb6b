"""With ``--fold-bn`` the command line pins glibc's mmap threshold (fidkit.allocator) so that
long runs of the folded network do not fragment the heap; the default network does not need it.

Observed from glibc itself: after a 20 MiB block is freed, glibc's default raises its threshold to
20 MiB, so a following 6 MiB block comes from the heap; with the threshold pinned at 4 MiB it is
mapped on its own (``mallinfo2().hblks`` counts mapped blocks). Each probe runs in a fresh process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

PROBE = r"""
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
how = sys.argv[1]
applied = None
if how == "api":
    from fidkit.allocator import tune_allocator
    applied = tune_allocator()
elif how in ("cli", "cli-folded"):
    from fidkit.cli import main
    folded = ["--fold-bn"] if how == "cli-folded" else []
    code = main(["stats", "/nonexistent-fidkit-probe", "-o", "/nonexistent-fidkit-probe.pkl"] + folded)
    assert code == 2  # a missing folder: reported before torch is loaded
    assert "torch" not in sys.modules, "the stats verb loaded torch for a missing folder"
big = libc.malloc(20 << 20)
libc.free(big)
before = libc.mallinfo2().hblks
block = libc.malloc(6 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"applied": applied, "mapped": mapped}))
"""


def _probe(how: str, **env_extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "FIDKIT_NO_ALLOC_TUNING")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_glibc_default_takes_a_6mib_block_from_the_heap():
    # the control: without fidkit's setting the probe's block is not mapped
    assert _probe("none")["mapped"] == 0


def test_tune_allocator_maps_blocks_above_4mib():
    result = _probe("api")
    assert result["applied"] == {"mmap_threshold": 4 << 20}
    assert result["mapped"] == 1


def test_command_line_applies_it_before_torch_for_the_folded_network_only():
    assert _probe("cli-folded")["mapped"] == 1
    assert _probe("cli")["mapped"] == 0


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": str(64 << 20)},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=67108864"},
                                 {"FIDKIT_NO_ALLOC_TUNING": "1"}])
def test_users_own_setting_wins(env):
    result = _probe("api", **env)
    assert "skipped" in result["applied"]
    assert result["mapped"] == 0  # the user's 64 MiB threshold (or glibc's default) still rules
