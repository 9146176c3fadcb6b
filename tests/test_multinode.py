"""Many nodes: ``torchrun --nnodes 2 --nproc_per_node 2`` (two torchrun node agents on this
machine, c10d rendezvous on localhost, gloo on the CPU) over tar shards gives the one-process
statistics (bit for bit: every run folds the same chunk states in chunk order); a run stopped by
SIGTERM and resumed at world size 3 gives them too; a rank that dies fails the job."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from fidkit.statistics import Statistics
from fidkit.statistics.checkpoint import default_checkpoint_path
from process_helpers import (free_port, one_thread_env, png_bytes, rel, start_until_first_chunks,
                             wait_for_agents)

HERE = Path(__file__).parent
N = 96
OPTIONS = ("--batch-size", "4", "--chunk-size", "8")
pytestmark = pytest.mark.filterwarnings("ignore::fidkit.statistics.statsio.ProvenanceWarning")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("multinode")
    images = np.random.default_rng(21).integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    for shard in range(4):
        with tarfile.open(root / f"part-{shard:04d}.tar", "w") as tar:
            for i in range(shard * N // 4, (shard + 1) * N // 4):
                data = png_bytes(images[i])
                info = tarfile.TarInfo(f"{i:06d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(root / "part-{0000..0003}.tar")


def _torchrun(nnodes: int, nproc: int, port: int, spec: str, out: Path, *extra: str) -> list[subprocess.Popen]:
    """One torchrun agent per node, all on this machine, meeting at a c10d store on localhost."""
    agents = []
    for _ in range(nnodes):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
                   "--nproc_per_node", str(nproc), "--rdzv_backend", "c10d",
                   "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"fidkit-test-{port}",
                   "--max_restarts", "0", "--monitor_interval", "0.5",
                   str(HERE / "chunked_child.py"), spec, str(out), *OPTIONS, *extra]
        agents.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env=one_thread_env(), start_new_session=True))
    return agents


@pytest.fixture(scope="module")
def one_process(shards, tmp_path_factory) -> Statistics:
    out = tmp_path_factory.mktemp("single") / "one.pkl"
    run = subprocess.run([sys.executable, str(HERE / "chunked_child.py"), shards, str(out), *OPTIONS],
                         capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    return Statistics.load(str(out))


def test_two_nodes_of_two_ranks_equal_one_process(shards, one_process, tmp_path):
    out = tmp_path / "four.pkl"
    results = wait_for_agents(_torchrun(2, 2, free_port(), shards, out), timeout=240)
    for code, _, err in results:
        assert code == 0, "\n=====\n".join(e[-2500:] for _, _, e in results)
    assert sum(o.count("wrote") for _, o, _ in results) == 1  # rank 0 alone writes
    got = Statistics.load(str(out))
    assert got.n == one_process.n == N
    assert rel(got.mu, one_process.mu) <= 1e-12 and rel(got.sigma, one_process.sigma) <= 1e-12
    assert np.array_equal(got.mu, one_process.mu) and np.array_equal(got.sigma, one_process.sigma)
    # each of the four ranks computed its own block of the 12 chunks (3 each)
    logs = sorted(tmp_path.glob("four.pkl.rank*.log"))
    assert len(logs) == 4 and all(sum(map(int, log.read_text().split())) == N // 4 for log in logs)
    assert not default_checkpoint_path(out).exists()


def test_stopped_then_resumed_at_world_size_three(shards, one_process, tmp_path):
    out = tmp_path / "resumed.pkl"
    folder = default_checkpoint_path(out)
    child = start_until_first_chunks([sys.executable, str(HERE / "chunked_child.py"), shards,
                                      str(out), *OPTIONS, "--sleep", "0.05"], folder,
                                     timeout=120, poll=0.02)
    time.sleep(0.3)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 75, err.decode()
    results = wait_for_agents(_torchrun(1, 3, free_port(), shards, out), timeout=240)
    for code, _, err in results:
        assert code == 0, "\n=====\n".join(e[-2500:] for _, _, e in results)
    assert "resumed 0" not in results[0][1]
    got = Statistics.load(str(out))
    assert got.n == N
    assert rel(got.mu, one_process.mu) <= 1e-12 and rel(got.sigma, one_process.sigma) <= 1e-12
    assert np.array_equal(got.mu, one_process.mu) and np.array_equal(got.sigma, one_process.sigma)


def test_a_rank_that_dies_fails_the_job(shards, tmp_path):
    out = tmp_path / "dies.pkl"
    agents = _torchrun(1, 2, free_port(), shards, out, "--sleep", "0.1")
    # wait until both ranks are computing, then kill one worker (not the agent)
    deadline = time.monotonic() + 120
    logs = []
    while len(logs) < 2:
        assert time.monotonic() < deadline, "the ranks never started"
        logs = list(tmp_path.glob("dies.pkl.rank*.log"))
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(agents[0].pid), "chunked_child.py"],
                             capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)
    started = time.monotonic()
    (code, _, err), = wait_for_agents(agents, timeout=120)
    assert code != 0 and not out.exists()
    assert time.monotonic() - started < 60  # torchrun stops the other rank; no gloo timeout wait
    # the survivors' finished chunks are kept for the next run
    assert default_checkpoint_path(out).is_dir()
