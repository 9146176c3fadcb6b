"""``--ci`` and ``--fid-inf`` on synthetic features: fidkit's time, and the straightforward way's.

    python benchmarks/sample_size.py                        # N = 10,000, d = 2048, 50 replicates
    python benchmarks/sample_size.py --n 2000 --dims 256    # a quick check
    python benchmarks/sample_size.py --load 1               # with one competing CPU-bound process

Features: N generated rows and a reference of N rows, Gaussian with a power-law spectrum
(eigenvalue k proportional to k^-1, like Inception pool_3 features roughly), the generated ones
with 5 % more spread and a shifted mean; the reference is held fixed as :class:`Statistics`,
as for a published reference file. Timed: ``sample_size_report(ci=True, fid_inf=True)`` with the
CLI's defaults (50 replicates, 15 sizes from N / 10 to N, no FID-infinity interval), then, with
``--fid-inf-boot K``, the FID-infinity interval too.

"straightforward" is what fidkit did before (and what a user would write): per replicate, the
weighted covariance of the resampled rows, then the exact Frechet distance on it (its own
factorisation); per FID-infinity size, the prefix's statistics and the distance. It runs under
the same BLAS thread setting as fidkit (``blas_threads``), so the ratio is the algorithm's. It is timed on
``--straight`` replicates and sizes and scaled to the full count; the same replicates'
values are compared with fidkit's (max relative difference).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fidkit.distances.blas_threads import blas_threads  # noqa: E402
from fidkit.distances.bootstrap import sample_size_report  # noqa: E402
from fidkit.distances.frechet import covariance_factor, frechet_from_moments  # noqa: E402
from fidkit.statistics import Statistics, StatisticsAccumulator  # noqa: E402


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, Statistics]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = 1.0 / np.sqrt(np.arange(1, d + 1))
    ref = (rng.standard_normal((n, d)) * scale) @ q.T + 0.5
    gen = (rng.standard_normal((n, d)) * scale * 1.05) @ q.T + 0.5 + 0.02 * rng.standard_normal(d)
    acc = StatisticsAccumulator(d)
    acc.update(ref)
    return gen, acc.statistics()


def straightforward(x: np.ndarray, ref: Statistics, reps: int, seed: int,
                    sizes: list[int]) -> tuple[float, float, list[float], list[float]]:
    """The old way on the first ``reps`` replicates and sizes: (seconds a replicate, seconds a
    size, replicate values, size values)."""
    with blas_threads():
        return _straightforward(x, ref, reps, seed, sizes)


def _straightforward(x: np.ndarray, ref: Statistics, reps: int, seed: int,
                     sizes: list[int]) -> tuple[float, float, list[float], list[float]]:
    n = len(x)
    factor = covariance_factor(ref.sigma)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    values, size_values = [], []
    start = time.perf_counter()
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        counts = np.bincount(idx, minlength=n).astype(np.float64)
        mean = counts @ x / n
        scaled = (x - mean) * np.sqrt(counts)[:, None]
        sigma = scaled.T @ scaled / (n - 1)
        values.append(frechet_from_moments(mean, (sigma + sigma.T) / 2, ref.mu, ref.sigma,
                                           factor_b=factor).value)
    per_replicate = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for size in sizes[:reps]:
        rows = x[order[:size]]
        acc = StatisticsAccumulator(x.shape[1])
        acc.update(rows)
        s = acc.statistics()
        size_values.append(frechet_from_moments(s.mu, s.sigma, ref.mu, ref.sigma, factor_b=factor).value)
    per_size = (time.perf_counter() - start) / max(len(sizes[:reps]), 1)
    return per_replicate, per_size, values, size_values


@contextlib.contextmanager
def competitors(count: int):
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="generated (and reference) rows")
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--n-boot", type=int, default=50)
    parser.add_argument("--fid-inf-boot", type=int, default=0)
    parser.add_argument("--straight", type=int, default=2,
                        help="replicates and sizes timed the straightforward way (0: skip)")
    parser.add_argument("--load", type=int, default=0, help="competing CPU-bound processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"N = {args.n}, d = {args.dims}, n_boot = {args.n_boot}, fid_inf_boot = {args.fid_inf_boot}, "
          f"competing processes {args.load}")
    x, ref = features(args.n, args.dims, args.seed)
    with competitors(args.load) if args.load else contextlib.nullcontext():
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        start = time.perf_counter()
        report = sample_size_report(x, ref, ci=True, fid_inf=True, n_boot=args.n_boot,
                                    fid_inf_boot=args.fid_inf_boot, seed=args.seed, progress=True)
        fidkit_s = time.perf_counter() - start
        print(f"fidkit: {fidkit_s:.1f} s  (FID {report.fid:.4f}, interval "
              f"[{report.interval.low:.4f}, {report.interval.high:.4f}], FID-inf "
              f"{report.fid_infinity.value:.4f}, slope {report.fid_infinity.slope:.1f})", flush=True)
        if args.straight:
            sizes = report.fid_infinity.sizes
            per_rep, per_size, values, size_values = straightforward(x, ref, args.straight, args.seed, sizes)
            total = per_rep * args.n_boot + per_size * len(sizes) * (1 + args.fid_inf_boot)
            # the same draws as fidkit's: the permutation first, then the replicates
            diff_rep = max(abs(a / b - 1) for a, b in zip(report.interval.replicates, values))
            diff_size = max(abs(a / b - 1) for a, b in zip(report.fid_infinity.fids, size_values))
            print(f"straightforward: {per_rep:.2f} s a replicate, {per_size:.2f} s a size; "
                  f"{total:.0f} s for the same work (x{total / fidkit_s:.1f} fidkit); "
                  f"max relative difference {diff_rep:.1e} (replicates), {diff_size:.1e} (sizes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
