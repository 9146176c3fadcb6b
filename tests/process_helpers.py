"""Helpers of the tests that run fidkit in child processes (resume, checkpoints, torchrun):
the environment they run in, PNG images in tar shards, a free port for a rendezvous, waiting for
a run's first chunks, and waiting for (or killing) torchrun agents."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def one_thread_env() -> dict[str, str]:
    """This environment with one thread everywhere (so the features of every run, one process or
    many ranks, come from the same float32 kernels) and without FIDKIT_DEBUG."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("FIDKIT_DEBUG", None)
    return env


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png_shards(root: Path, images, shards: int, label: bytes) -> str:
    """``images`` (uint8 (H, W, 3) each) as PNGs in ``shards`` WebDataset tar files
    ``root/shard-00.tar``, ... in order, a ``.cls`` entry holding ``label`` beside each image;
    returns the brace pattern naming them all."""
    n = len(images)
    for shard in range(shards):
        with tarfile.open(root / f"shard-{shard:02d}.tar", "w") as tar:
            for i in range(shard * n // shards, (shard + 1) * n // shards):
                for name, data in ((f"{i:06d}.png", png_bytes(images[i])), (f"{i:06d}.cls", label)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"shard-{{00..{shards - 1:02d}}}.tar")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rel(a, b) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def start_until_first_chunks(command: list[str], checkpoint: Path, timeout: float = 240,
                             poll: float = 0.01) -> subprocess.Popen:
    """Start ``command`` (stdout and stderr piped) and return it once its checkpoint folder holds
    ``prefix.npz`` (its first chunks are done); fails the test if it exits or ``timeout`` passes
    first."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=one_thread_env())
    deadline = time.monotonic() + timeout
    while not (checkpoint / "prefix.npz").exists():
        assert child.poll() is None, child.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(poll)
    return child


def kill_group(agent: subprocess.Popen) -> None:
    """SIGKILL ``agent``'s process group (started with ``start_new_session=True``) and reap it."""
    try:
        os.killpg(agent.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    agent.communicate()


def wait_for_agents(agents: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """Each agent's (exit code, stdout, stderr) once all have exited; if ``timeout`` seconds pass
    first, every agent's process group is killed and the test fails."""
    deadline = time.monotonic() + timeout
    results = []
    for agent in agents:
        try:
            out, err = agent.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for a in agents:
                kill_group(a)
            pytest.fail("torchrun did not finish in time")
        results.append((agent.returncode, out.decode(), err.decode()))
    return results
