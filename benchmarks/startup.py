"""Start-up and cache-hit latency, in one run: `fidkit --help` against `python -m pytorch_fid
--help`; a second `fidkit stats` on an unchanged folder against the first; and `fidkit compare DIR
STATS` with DIR's statistics cached (d = 2048, the whole command: start-up, cache check, load,
Fréchet distance), idle and with one competing CPU-bound process.

    python benchmarks/startup.py --weights test.pth [--images 50]

Prints best-of-N wall times and ratios. Makes its own folder of PNGs in a temporary directory;
the reference is 3,000 random 2048-d feature rows (a full-rank covariance, as a real reference).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="weights file (fidkit weights make-test)")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, FIDKIT_CACHE=str(Path(tmp) / "cache"))
        help_ours = wall([py, "-m", "fidkit", "--help"], env, args.repeats)
        help_peer = wall([py, "-m", "pytorch_fid", "--help"], env, args.repeats)
        print(f"--help: fidkit {help_ours:.3f} s, pytorch-fid {help_peer:.3f} s, "
              f"ratio {help_peer / help_ours:.1f}x")
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import make_images, write_folder

        folder = write_folder(Path(tmp) / "imgs", make_images(args.images, (64, 64), seed=0))
        stats = [py, "-m", "fidkit", "stats", str(folder), "--weights", args.weights,
                 "--overwrite", "-o", str(Path(tmp) / "out.pkl")]
        first = wall(stats, env, 1)
        second = wall(stats, env, args.repeats)
        (folder / "img_00000.png").touch()
        after_touch = wall(stats, env, 1)
        print(f"stats on {args.images} images: first {first:.2f} s, unchanged folder {second:.2f} s "
              f"(ratio {first / second:.1f}x), after touching one file {after_touch:.2f} s")
        compare_cached(py, env, folder, Path(tmp), args)


def compare_cached(py: str, env: dict[str, str], folder: Path, tmp: Path, args) -> None:
    """``fidkit compare DIR STATS`` with DIR cached, idle and beside one busy-looping process."""
    import multiprocessing

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fidkit.statistics import Statistics

    rows = np.random.default_rng(0).standard_normal((3000, 2048)) * 0.1
    meta = __import__("fidkit").compute_statistics(folder, weights=args.weights, progress=False,
                                                   cache=False).meta
    ref = Statistics(rows.mean(0), np.cov(rows, rowvar=False), len(rows), dict(meta, n=len(rows)))
    ref.save(str(tmp / "ref.pkl"))
    cmd = [py, "-m", "fidkit", "compare", str(folder), str(tmp / "ref.pkl"), "--weights",
           args.weights]
    wall(cmd, env, 1)  # fills the cache
    idle = wall(cmd, env, args.repeats)
    stop = multiprocessing.Event()
    hog = multiprocessing.Process(target=_spin, args=(stop,))
    hog.start()
    try:
        loaded = wall(cmd, env, args.repeats)
    finally:
        stop.set()
        hog.join()
    print(f"compare DIR STATS (DIR cached, d=2048): idle {idle:.2f} s, one competing process "
          f"{loaded:.2f} s")


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


if __name__ == "__main__":
    main()
