"""torch.distributed: two gloo processes give the statistics, FID, KID and IS that one process gives
on the same images (sharded source and streaming metric), and all ranks raise when one fails."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images, write_folder

WORLD = 2
PER_RANK = 4
DIMS = 64


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _metric(weights: str):
    return fidkit.FID(dims=DIMS, weights=weights, device="cpu", kid=True, inception_score=True,
                      kid_subset_size=WORLD * PER_RANK, kid_subsets=3, is_splits=2)


def _worker(rank: int, world: int, init_file: str, weights: str, root: str) -> None:
    import torch.distributed as dist

    from fidkit.fileio import atomic_write_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        base = Path(root)
        out: dict = {}
        result = fidkit.extract_features(base / "a", dims=DIMS, weights=weights, workers=0,
                                         progress=False)
        stats = result.statistics()
        out["stats"] = (stats.mu, stats.sigma, stats.n, result.features, stats.meta["source"])
        fake, real = np.load(base / "fake.npy"), np.load(base / "real.npy")
        block = slice(rank * PER_RANK, (rank + 1) * PER_RANK)  # contiguous, as ShardedSource
        metric = _metric(weights)
        metric.update(torch.from_numpy(fake[block]))
        metric.update(torch.from_numpy(real[block]), real=True)
        out["metric"] = metric.compute_all()
        generated = metric.statistics()
        out["generated"] = (generated.mu, generated.sigma, generated.n)
        try:
            fidkit.compute_statistics(base / "broken", dims=DIMS, weights=weights, workers=0,
                                      progress=False)
            out["error"] = None
        except Exception as exc:  # noqa: BLE001 - recorded for the parent to check
            out["error"] = (type(exc).__name__, str(exc))
        atomic_write_bytes(base / f"rank{rank}.pkl", pickle.dumps(out))
    finally:
        dist.destroy_process_group()


def _spawn(args: tuple, timeout: float = 300.0) -> None:
    import torch.multiprocessing as mp

    context = mp.start_processes(_worker, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {timeout:.0f} s")


def test_two_gloo_ranks_equal_one_process(tmp_path, test_weights):
    n = WORLD * PER_RANK
    write_folder(tmp_path / "a", make_images(n, (32, 32), seed=51))
    fake = torch.from_numpy(make_images(n, (32, 32), seed=52)).permute(0, 3, 1, 2).contiguous()
    real = torch.from_numpy(make_images(n, (32, 32), seed=53)).permute(0, 3, 1, 2).contiguous()
    np.save(tmp_path / "fake.npy", fake.numpy())
    np.save(tmp_path / "real.npy", real.numpy())
    broken = write_folder(tmp_path / "broken", make_images(n, (32, 32), seed=54))
    (broken / "img_00006.png").write_bytes(b"not a png")  # in rank 1's block only

    _spawn((WORLD, str(tmp_path / "store"), str(test_weights), str(tmp_path)))
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]

    single_run = fidkit.extract_features(tmp_path / "a", dims=DIMS, weights=test_weights,
                                         workers=0, progress=False)
    single = single_run.statistics()
    single.features = single_run.features
    metric = _metric(str(test_weights))
    metric.update(fake)
    metric.update(real, real=True)
    expected = metric.compute_all()
    generated = metric.statistics()
    for out in ranks:
        mu, sigma, count, features, source = out["stats"]
        assert count == single.n and source == single.meta["source"]
        assert rel(mu, single.mu) <= 1e-10 and rel(sigma, single.sigma) <= 1e-10
        assert np.array_equal(features, single.features)  # rank order = source order
        mu, sigma, count = out["generated"]
        assert count == n and rel(mu, generated.mu) <= 1e-10 and rel(sigma, generated.sigma) <= 1e-10
        got = out["metric"]
        assert abs(got["fid"] - expected["fid"]) <= 1e-10 * expected["fid"]
        assert abs(got["kid"].mean - expected["kid"].mean) <= 1e-10 * abs(expected["kid"].mean)
        # The logits come out of the full network, whose float32 result depends on the batch size
        # and thread count (4 images on 1 thread per rank vs 8 here) at ~1e-7.
        assert abs(got["is"].mean - expected["is"].mean) <= 1e-6 * expected["is"].mean
        # rank 0 read nothing wrong, yet raises the same error as rank 1
        assert out["error"] is not None and out["error"][0] == "BadImageError"
        assert "img_00006.png" in out["error"][1]
    assert ranks[0]["error"] == ranks[1]["error"]


@pytest.mark.slow
def test_torchrun_stats_writes_the_single_process_file(tmp_path, test_weights):
    """``torchrun --nproc_per_node 2 -m fidkit stats`` (rank 0 writes) equals ``fidkit stats``."""
    folder = write_folder(tmp_path / "a", make_images(8, (32, 32), seed=61))
    common = ["stats", str(folder), "--dims", str(DIMS), "--weights", str(test_weights), "--workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "fidkit", *common, "-o", str(tmp_path / "one.pkl")],
                   check=True, env=env, timeout=300)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "fidkit", *common, "-o", str(tmp_path / "two.pkl")],
                         env=env, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote") == 1  # only rank 0 prints
    one = fidkit.load_statistics(tmp_path / "one.pkl")
    two = fidkit.load_statistics(tmp_path / "two.pkl")
    assert two.n == one.n and two.meta["source"] == one.meta["source"]
    assert rel(two.mu, one.mu) <= 1e-10 and rel(two.sigma, one.sigma) <= 1e-10
