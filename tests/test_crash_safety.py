"""Crash safety of every file fidkit writes: a SIGKILL mid-write leaves the old file intact, and
concurrent writers of one name never produce a mixture.

The kill is made to land inside the write, not merely somewhere in the run: the child is the real
``fidkit stats`` command line, with the file handle of ``fidkit.fileio.atomic_writer`` wrapped so that
it stops after the first megabyte has reached the disk and says so. A second test kills a plain
``python -m fidkit stats`` as soon as its temporary file appears.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fidkit.errors import InputError
from fidkit.statistics import Statistics
from fidkit.statistics.statsio import ProvenanceWarning, load_statistics, save_statistics

from conftest import make_images, write_folder

_STALLING_CHILD = r"""
import contextlib, os, sys, time
import fidkit.fileio, fidkit.statistics.statsio
ready, out, argv = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]
real = fidkit.fileio.atomic_writer

class Stalling:
    # Passes writes through until 1 MiB is on disk, then signals and waits to be killed.
    def __init__(self, handle):
        self.handle, self.written = handle, 0
    def write(self, data):
        n = self.handle.write(data)
        self.written += len(data)
        if self.written >= 1 << 20:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            open(ready, "w").close()
            time.sleep(600)
        return n
    def __getattr__(self, name):
        return getattr(self.handle, name)

@contextlib.contextmanager
def stalling_writer(path, **kw):
    with real(path, **kw) as handle:
        # only OUT stalls; other files (the folder-statistics cache) are written normally
        yield Stalling(handle) if os.path.abspath(path) == out else handle

fidkit.statistics.statsio.atomic_writer = stalling_writer
from fidkit.cli import main
sys.exit(main(argv))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FIDKIT_WEIGHTS", "FIDKIT_DEBUG")}
    env["FIDKIT_OFFLINE"] = "1"
    return env


def _old_stats(path: Path) -> bytes:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2048))
    save_statistics(Statistics(x.mean(0), np.cov(x, rowvar=False), 40, {"convention": "tf1"}), path)
    return path.read_bytes()


def _leftovers(folder: Path, out: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{out.name}.") and p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("crash") / "imgs", make_images(3, (32, 32), seed=5))


def test_sigkill_inside_the_write_keeps_the_old_output(tmp_path, small_folder, test_weights):
    out = tmp_path / "ref.pkl"
    old = _old_stats(out)
    ready = tmp_path / "ready"
    argv = ["stats", str(small_folder), "-o", str(out), "--overwrite", "--dims", "2048",
            "--weights", str(test_weights), "--workers", "0"]
    child = subprocess.Popen([sys.executable, "-c", _STALLING_CHILD, str(ready), str(out), *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.02)
        partial = _leftovers(tmp_path, out)
        assert len(partial) == 1 and partial[0].stat().st_size >= 1 << 20  # really mid-write
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert out.read_bytes() == old
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProvenanceWarning)
        load_statistics(out)  # still a whole, valid stats file
    # nothing but OUT under its own name; the hidden temporary file is all that is left
    assert sorted(p.name for p in tmp_path.iterdir() if out.name in p.name) == [partial[0].name, out.name]


def test_sigkill_of_the_plain_command_when_its_temporary_file_appears(tmp_path, small_folder,
                                                                     test_weights):
    out = tmp_path / "ref.pkl"
    old = _old_stats(out)
    child = subprocess.Popen(
        [sys.executable, "-m", "fidkit", "stats", str(small_folder), "-o", str(out), "--overwrite",
         "--dims", "2048", "--weights", str(test_weights), "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        while child.poll() is None:
            if _leftovers(tmp_path, out):
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        child.communicate()
    # Killed while writing: the old file. Beaten by the rename (the last step), or never caught
    # writing: the whole new file. Never anything in between.
    assert child.returncode in (0, -signal.SIGKILL)
    assert out.read_bytes() == old or _loads_whole(out)
    if child.returncode == 0:
        assert _loads_whole(out) and not _leftovers(tmp_path, out)


def _loads_whole(path: Path) -> bool:
    stats = load_statistics(path)
    return stats.dims == 2048 and stats.n == 3


def test_two_concurrent_stats_commands_on_one_output(tmp_path, test_weights):
    from fidkit.api import compute_statistics

    folders = [write_folder(tmp_path / f"side{k}", make_images(3, (24, 24), seed=40 + k)) for k in (0, 1)]
    out = tmp_path / "shared.npz"
    procs = [subprocess.Popen([sys.executable, "-m", "fidkit", "stats", str(f), "-o", str(out),
                               "--overwrite", "--dims", "64", "--weights", str(test_weights),
                               "--workers", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env()) for f in folders]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    got = load_statistics(out)
    refs = [compute_statistics(f, dims=64, workers=0, weights=test_weights, progress=False, cache=False)
            for f in folders]
    matches = [np.array_equal(got.mu, r.mu) and np.array_equal(got.sigma, r.sigma) for r in refs]
    assert sum(matches) == 1, "the output is not exactly one writer's statistics"
    assert not _leftovers(tmp_path, out)


_WRITER = r"""
import sys
from fidkit.fileio import atomic_write_bytes
target, tag, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = bytes([tag]) * (1 << 22)
for _ in range(rounds):
    atomic_write_bytes(target, payload)
"""


def test_concurrent_atomic_writers_never_mix(tmp_path):
    target = tmp_path / "target.bin"
    target.write_bytes(bytes([255]) * (1 << 22))
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(tag), "12"])
               for tag in range(4)]
    reads = 0
    while any(w.poll() is None for w in writers) or reads == 0:
        data = target.read_bytes()
        reads += 1
        # always one writer's whole payload: the right length and a single byte value
        assert len(data) == 1 << 22 and data.count(data[:1]) == len(data)
    assert all(w.wait() == 0 for w in writers)
    assert target.read_bytes()[0] in range(4)
    assert not _leftovers(tmp_path, target)
    assert reads > 1


def test_concurrent_writers_without_overwrite_never_clobber(tmp_path):
    target = tmp_path / "once.bin"
    code = ("import sys\nfrom fidkit.fileio import atomic_write_bytes\nfrom fidkit.errors import InputError\n"
            "try:\n    atomic_write_bytes(sys.argv[1], sys.argv[2].encode() * 100000, overwrite=False)\n"
            "except InputError:\n    sys.exit(7)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), tag]) for tag in "abcd"]
    codes = sorted(p.wait() for p in procs)
    assert codes == [0, 7, 7, 7]
    data = target.read_bytes()
    assert len(data) == 100000 and data.count(data[:1]) == len(data)
    with pytest.raises(InputError, match="exists"):
        from fidkit.fileio import atomic_write_bytes

        atomic_write_bytes(target, b"late", overwrite=False)
    assert not _leftovers(tmp_path, target)


def test_failed_write_leaves_nothing(tmp_path):
    from fidkit.fileio import atomic_writer

    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and not _leftovers(tmp_path, target)


def test_written_files_get_the_usual_mode(tmp_path):
    from fidkit.fileio import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    fresh = tmp_path / "fresh.bin"
    atomic_write_bytes(fresh, b"x")
    reference = tmp_path / "reference.bin"
    with open(reference, "wb"):
        pass  # what a plain open() gives under the same umask
    assert fresh.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
    fresh.chmod(0o640)
    atomic_write_bytes(fresh, b"y")  # replacing keeps the owner's choice
    assert fresh.stat().st_mode & 0o777 == 0o640
