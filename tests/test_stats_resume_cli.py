"""``fidkit stats`` over archives, stopped and resumed: SIGKILL at random points of a run over a zip
and over tar shards, then the same command again, gives float64 statistics bit-identical to an
uninterrupted run; SIGTERM gives exit 75 and one line; a checkpoint of other options or inputs is
refused with exit 2 and one line; ``torchrun --nnodes 2 --nproc_per_node 2`` (two agents, c10d
rendezvous on localhost, gloo) and a run resumed at world size 3 equal one process.

The uninterrupted run is checked against an independent reference: ``np.mean``/``np.cov`` of the
per-image features of the same images written out as PNG files in a folder (PIL's decoding of the
files, fidkit's plain folder path, no chunks).
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fidkit.statistics import Statistics
from fidkit.statistics.checkpoint import default_checkpoint_path
from process_helpers import (free_port, one_thread_env, png_bytes, rel, start_until_first_chunks,
                             wait_for_agents, write_png_shards)

N = 48  # 6 chunks of 8 = 2 batches of 4 each
DIMS = 64
pytestmark = pytest.mark.filterwarnings("ignore::fidkit.FidkitWarning")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """The same N PNGs (16x16 to 32x32) in a zip, in 3 tar shards (with a WebDataset .cls beside
    each image) and unpacked in a folder, all in the same order."""
    root = tmp_path_factory.mktemp("stats-resume")
    rng = np.random.default_rng(19)
    images = [rng.integers(0, 256, (int(rng.integers(16, 33)), int(rng.integers(16, 33)), 3),
                           dtype=np.uint8) for _ in range(N)]
    (root / "folder").mkdir()
    with zipfile.ZipFile(root / "set.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i, image in enumerate(images):
            zf.writestr(f"img/{i:04d}.png", png_bytes(image))
            (root / "folder" / f"{i:04d}.png").write_bytes(png_bytes(image))
    return {"zip": str(root / "set.zip"), "tar": write_png_shards(root, images, 3, b"1"),
            "folder": str(root / "folder")}


def _options(weights: Path, *extra: str) -> list[str]:
    return ["--dims", str(DIMS), "--weights", str(weights), "--device", "cpu", "--batch-size", "4",
            "--chunk-size", "8", "--workers", "0", "--network", "reference", "--no-cache", *extra]


def _command(spec: str, out: Path, weights: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fidkit", "stats", spec, "-o", str(out), *_options(weights, *extra)]


def _stats(spec: str, out: Path, weights: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(spec, out, weights, *extra), capture_output=True, text=True,
                          env=one_thread_env(), timeout=300)


def _states(folder: Path) -> dict[str, int]:
    try:
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".npz"}
    except OSError:
        return {}


def _same(a: Statistics, b: Statistics) -> bool:
    return a.n == b.n and np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma)


@pytest.fixture(scope="module")
def uninterrupted(inputs, test_weights, tmp_path_factory) -> dict[str, Statistics]:
    out = {}
    for kind in ("zip", "tar"):
        path = tmp_path_factory.mktemp(f"whole-{kind}") / "ref.pkl"
        done = _stats(inputs[kind], path, test_weights)
        assert done.returncode == 0, done.stderr
        assert not default_checkpoint_path(path).exists()
        out[kind] = Statistics.load(str(path))
    return out


def test_uninterrupted_runs_equal_numpy_of_the_unpacked_images(inputs, uninterrupted, test_weights):
    import fidkit

    # The same batches of 4 from the first image, fidkit's folder path, no archive involved.
    run = fidkit.extract_features(inputs["folder"], dims=DIMS, weights=test_weights, device="cpu",
                                  batch_size=4, workers=0, network="reference", progress=False)
    x = run.features.astype(np.float64)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    for kind in ("zip", "tar"):
        got = uninterrupted[kind]
        assert got.n == N and got.meta["source"]["images"] == N
        assert np.abs(got.mu - mu).max() <= 1e-13 * np.abs(mu).max()
        assert np.abs(got.sigma - sigma).max() <= 1e-12 * np.abs(sigma).max()
    assert _same(uninterrupted["zip"], uninterrupted["tar"])  # same images, same order


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_sigkill_at_random_points_then_the_same_command_is_bit_identical(
        kind, inputs, uninterrupted, test_weights, tmp_path):
    out = tmp_path / "ref.pkl"
    folder = default_checkpoint_path(out)
    rng = random.Random(f"kill-{kind}")
    kills, resumed = 0, 0
    for attempt in range(12):
        before = _states(folder)
        child = subprocess.Popen(_command(inputs[kind], out, test_weights, "--checkpoint-every",
                                          "0.01"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=one_thread_env())
        # Kill only once this run has written a state of its own: a kill during start-up would
        # prove nothing. The states are written at batch boundaries, so the kill lands anywhere.
        deadline = time.monotonic() + 240
        while child.poll() is None and _states(folder) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        if child.poll() is None and kills < 3:
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=240)
        resumed += "resumed from" in err.decode()
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
        kills += 1
        if out.exists():  # killed between writing OUT and removing the checkpoint: OUT is whole
            break
    else:
        pytest.fail("never finished")
    assert kills >= 1, "no kill landed inside the run; the test proves nothing"
    got = Statistics.load(str(out))
    assert _same(got, uninterrupted[kind])
    assert got.meta["source"] == uninterrupted[kind].meta["source"]
    if child.returncode == 0:
        assert not folder.exists()  # removed once OUT is written


def test_sigterm_exits_75_then_refuses_other_runs_then_resumes(inputs, uninterrupted, test_weights,
                                                               tmp_path):
    out = tmp_path / "ref.pkl"
    folder = default_checkpoint_path(out)
    child = start_until_first_chunks(_command(inputs["tar"], out, test_weights,
                                              "--checkpoint-every", "0.01"), folder)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert child.returncode == 75, err.decode()
    assert len(lines) == 1 and lines[0].startswith("fidkit: error: stopped by SIGTERM"), lines
    assert str(folder) in lines[0] and "run the same command again" in lines[0]
    assert not out.exists()
    before = _states(folder)

    for spec, extra, says in ((inputs["tar"], ("--convention", "clean"), "convention tf1 there, clean here"),
                              (inputs["zip"], (), "another input")):
        run = _stats(spec, out, test_weights, *extra)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2, run.stderr
        assert len(lines) == 1 and says in lines[0] and f"delete {folder}" in lines[0], lines
    assert _states(folder) == before and not out.exists()  # the checkpoint is untouched

    # Workers and the network copy do not change the numbers: not part of the identity.
    done = _stats(inputs["tar"], out, test_weights, "--workers", "1", "--network", "auto")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    assert _same(Statistics.load(str(out)), uninterrupted["tar"])
    assert not folder.exists()


def test_cli_option_rules(inputs, test_weights, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(sorted(p.name for p in Path(inputs["folder"]).iterdir())) + "\n")
    for argv, says in (
            (["stats", "-o", str(tmp_path / "a.pkl")], "give SRC or --files-from"),
            (["stats", inputs["zip"], "--files-from", str(listing), "-o", str(tmp_path / "a.pkl")],
             "give SRC or --files-from"),
            (["stats", inputs["zip"], "-o", str(tmp_path / "a.pkl"), "--keep-features",
              "--checkpoint", str(tmp_path / "ck")], "not checkpointed"),
            (["stats", inputs["zip"], "-o", str(tmp_path / "a.pkl"), "--batch-size", "4",
              "--chunk-size", "10", "--dims", str(DIMS), "--weights", str(test_weights),
              "--device", "cpu", "--network", "reference"], "multiple of the batch size")):
        run = subprocess.run([sys.executable, "-m", "fidkit", *argv], capture_output=True,
                             text=True, env=one_thread_env(), timeout=300)
        assert run.returncode == 2 and says in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_files_from_list_equals_the_folder(inputs, uninterrupted, test_weights, tmp_path):
    """--files-from: the list's order (here the folder's), paths relative to the list."""
    listing = Path(inputs["folder"]).parent / "list.txt"
    listing.write_text("\n".join(f"folder/{i:04d}.png" for i in range(N)) + "\n")
    out = tmp_path / "list.pkl"
    run = subprocess.run([sys.executable, "-m", "fidkit", "stats", "--files-from", str(listing),
                          "-o", str(out), *_options(test_weights)], capture_output=True,
                         text=True, env=one_thread_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    got = Statistics.load(str(out))
    assert got.meta["source"]["kind"] == "file-list"
    assert _same(got, uninterrupted["zip"])


# ------------------------------------------------------------------------------ torchrun


def _torchrun(nnodes: int, nproc: int, spec: str, out: Path, weights: Path) -> list[tuple[int, str, str]]:
    """One torchrun agent per node, all on this machine, meeting at a c10d store on localhost;
    returns each agent's (exit code, stdout, stderr)."""
    port = free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node",
         str(nproc), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
         "--rdzv_id", f"fidkit-stats-{port}", "--max_restarts", "0", "--monitor_interval", "0.5",
         "-m", "fidkit", "stats", spec, "-o", str(out), *_options(weights)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=one_thread_env(),
        start_new_session=True)
        for _ in range(nnodes)]
    results = wait_for_agents(agents, timeout=400)
    for code, _, _ in results:
        assert code == 0, "\n=====\n".join(e[-2500:] for _, _, e in results)
    return results


@pytest.mark.slow
def test_torchrun_two_nodes_of_two_ranks_equal_one_process(inputs, uninterrupted, test_weights,
                                                           tmp_path):
    out = tmp_path / "four.pkl"
    results = _torchrun(2, 2, inputs["tar"], out, test_weights)
    assert sum(o.count("wrote") for _, o, _ in results) == 1  # rank 0 alone writes
    got, want = Statistics.load(str(out)), uninterrupted["tar"]
    assert got.n == N and got.meta["source"] == want.meta["source"]
    assert rel(got.mu, want.mu) <= 1e-12 and rel(got.sigma, want.sigma) <= 1e-12
    assert _same(got, want)  # every run folds the same chunk states in chunk order
    assert not default_checkpoint_path(out).exists()


@pytest.mark.slow
def test_stopped_then_resumed_by_torchrun_at_world_size_three(inputs, uninterrupted, test_weights,
                                                              tmp_path):
    out = tmp_path / "resumed.pkl"
    folder = default_checkpoint_path(out)
    child = start_until_first_chunks(_command(inputs["tar"], out, test_weights,
                                              "--checkpoint-every", "0.01"), folder)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 75, err.decode()
    results = _torchrun(1, 3, inputs["tar"], out, test_weights)
    assert "resumed from" in results[0][2]
    got, want = Statistics.load(str(out)), uninterrupted["tar"]
    assert rel(got.mu, want.mu) <= 1e-12 and rel(got.sigma, want.sigma) <= 1e-12
    assert _same(got, want)
    assert not folder.exists()


def test_compare_takes_archives_and_patterns_as_sides(inputs, test_weights, tmp_path):
    """The same images as a zip and as tar shards: FID 0 (to rounding); a pattern naming a
    missing shard is refused before anything is computed, naming it."""
    run = subprocess.run([sys.executable, "-m", "fidkit", "compare", inputs["zip"], inputs["tar"],
                          "--json", "--dims", str(DIMS), "--weights", str(test_weights),
                          "--device", "cpu", "--workers", "0", "--network", "reference"],
                         capture_output=True, text=True,
                         env=one_thread_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    import json

    assert abs(json.loads(run.stdout)["fid"]) <= 1e-6
    missing = inputs["tar"].replace("{00..02}", "{00..04}")
    run = subprocess.run([sys.executable, "-m", "fidkit", "compare", inputs["zip"], missing],
                         capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert run.returncode == 2 and "shard-03.tar does not exist (2 of the 5 paths" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
