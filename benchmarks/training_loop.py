"""Streaming FID in a training loop: what ``FID.update`` costs beyond the network, and its memory.

    python benchmarks/training_loop.py                               # GPU: 1k..20k images, pool_3
    python benchmarks/training_loop.py --device cpu --dims 64 --sizes 200 800 1600 --batch 16

1. Cost: ``metric.update(batch)`` (range check, rescale, preprocess, network, float64 accumulate)
   against the bare network on the same batch, ``model(convention.prepare(x))`` (the network
   ``compute_statistics`` runs: on the CPU its blocked copy, fidkit.extractors.networks.inception_blocked) without autograd,
   which is the least any FID in a training loop must pay. Runs are interleaved (each repeat times
   both once) so load from other processes hits both alike; the median of each is reported.
2. Memory: a fresh metric fed N generated images (float in [-1, 1], made on the fly batch by
   batch, as a generator would), for each N; the peak is CUDA's ``max_memory_allocated`` on a GPU
   and the process RSS (sampled after every batch) on the CPU, both above the level before the
   first image. Flat means the metric holds O(d^2), not O(N d).

Weights: ``--weights`` or $FIDKIT_WEIGHTS, else a random test file (timings do not depend on the
values). Prints one line per measurement and the ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    import psutil
    import torch

    import fidkit
    from fidkit.extractors.runner import fp32_numerics, resolve_device, select_network
    from fidkit.preprocess import get_convention

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=None, help="default 100 on GPU, 16 on CPU")
    parser.add_argument("--image-size", type=int, default=64, help="generated images are S x S")
    parser.add_argument("--repeats", type=int, default=None, help="default 20 on GPU, 5 on CPU")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    parser.add_argument("--weights", default=os.environ.get("FIDKIT_WEIGHTS"))
    parser.add_argument("--one-stream", action="store_true",
                        help="memory: one metric fed max(--sizes) images, the peak so far read "
                             "at each size (instead of a fresh metric per size)")
    parser.add_argument("--skip-cost", action="store_true", help="memory part only")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (100 if cuda else 16)
    repeats = args.repeats or (20 if cuda else 5)
    weights = args.weights
    if weights is None:
        from fidkit.extractors.weights import make_test_weights

        weights = os.path.join(tempfile.mkdtemp(), "random-inception.pth")
        make_test_weights(weights, seed=0, calibration_images=4)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def generated(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.rand(n, 3, args.image_size, args.image_size, generator=g, device=device) * 2 - 1

    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else os.cpu_count()} "
          f"{'GPU' if cuda else 'CPU cores'}), torch {torch.__version__}, dims {args.dims}, "
          f"batch {batch}, images {args.image_size}x{args.image_size}")

    # ---------------------------------------------------------------- 1. cost per batch
    metric = fidkit.FID(dims=args.dims, weights=weights, device=device, input_range=(-1, 1))
    model, convention = metric.model, get_convention("tf1")
    tap = str(args.dims)
    x = generated(batch, 0)

    def bare() -> None:
        with torch.no_grad(), fp32_numerics():
            model.outputs = (tap,)
            # the same network the metric runs (default: the blocked copy on the CPU)
            network, _ = select_network(model, metric._network_choice, x.device)
            network(convention.prepare((x + 1) * 127.5).contiguous())

    def streamed() -> None:
        metric.update(x)

    for fn in (bare, streamed):  # warm-up: cuDNN autotune, allocator, first-call costs
        fn()
    times: dict[str, list[float]] = {"bare": [], "update": []}
    for _ in range(0 if args.skip_cost else repeats):
        for name, fn in (("bare", bare), ("update", streamed)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    if args.one_stream:
        return _one_stream(args, metric_factory=lambda: fidkit.FID(
            dims=args.dims, weights=weights, device=device, input_range=(-1, 1)),
            generated=generated, batch=batch, cuda=cuda, device=device, sync=sync)
    if args.skip_cost:
        raise SystemExit("--skip-cost is for the --one-stream memory run")
    t_bare, t_update = (statistics.median(times[k]) for k in ("bare", "update"))
    print(f"bare forward   {t_bare * 1e3:9.2f} ms/batch  ({batch / t_bare:8.1f} img/s)")
    print(f"FID.update     {t_update * 1e3:9.2f} ms/batch  ({batch / t_update:8.1f} img/s)")
    # The minimum is the run least disturbed by other processes: on a shared machine it is the
    # better estimate of the intrinsic cost, the median the more honest one of what a loop sees.
    m_bare, m_update = (min(times[k]) for k in ("bare", "update"))
    print(f"ratio update / bare: {t_update / t_bare:.3f} (medians of {repeats}), "
          f"{m_update / m_bare:.3f} (minima)")

    # ---------------------------------------------------------------- 2. memory against N
    process = psutil.Process()
    peaks = []
    for n in args.sizes:
        metric = fidkit.FID(dims=args.dims, weights=weights, device=device, input_range=(-1, 1))
        sync()
        base = _memory_base(cuda, device, process)
        peak = 0
        start = time.perf_counter()
        for i in range(0, n, batch):
            metric.update(generated(min(batch, n - i), i + 1))
            if not cuda:
                peak = max(peak, process.memory_info().rss - base)
        sync()
        if cuda:
            peak = torch.cuda.max_memory_allocated(device) - base
        peaks.append(peak)
        stats = metric.statistics()
        print(f"N = {n:6d}: peak {peak / 2**20:9.1f} MiB above start, n = {stats.n}, "
              f"{n / (time.perf_counter() - start):8.1f} img/s")
    print("peak memory ratio to the smallest N: "
          + ", ".join(f"{n}: {p / max(peaks[0], 1):.3f}" for n, p in zip(args.sizes, peaks)))
    return 0


def _memory_base(cuda: bool, device, process) -> int:
    """The level peaks are measured from: CUDA's allocated bytes (peak stats reset), else RSS."""
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return process.memory_info().rss


def _one_stream(args, *, metric_factory, generated, batch, cuda, device, sync) -> int:
    """One metric fed max(sizes) images; the peak memory so far is read at each size."""
    import psutil
    import torch

    process = psutil.Process()
    metric = metric_factory()
    sync()
    base = _memory_base(cuda, device, process)
    print(f"start: {base / 2**20:.1f} MiB {'allocated' if cuda else 'RSS'} (network loaded)")
    peak, seen, start = 0, 0, time.perf_counter()
    sizes = sorted(set(args.sizes))
    peaks = []
    for n in sizes:
        while seen < n:
            metric.update(generated(min(batch, n - seen), seen + 1))
            seen += min(batch, n - seen)
            if not cuda:
                peak = max(peak, process.memory_info().rss - base)
        sync()
        if cuda:
            peak = torch.cuda.max_memory_allocated(device) - base
        peaks.append(peak)
        print(f"after N = {n:6d}: peak so far {peak / 2**20:9.1f} MiB above start "
              f"({(base + peak) / 2**20:.1f} MiB in all), "
              f"{seen / (time.perf_counter() - start):6.1f} img/s", flush=True)
    print(f"n = {metric.statistics().n}; peak ratio to N = {sizes[0]}: "
          + ", ".join(f"{n}: {p / max(peaks[0], 1):.3f}" for n, p in zip(sizes, peaks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
