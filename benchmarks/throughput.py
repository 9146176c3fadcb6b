"""Throughput and memory of feature extraction: fidkit vs pytorch-fid vs torch-fidelity.

In one run, on the same folders (synthetic PNG and JPEG sets this script writes, 256x256 and
1024x1024), each tool computes the pool_3 statistics (mean and covariance, 2048 dims) of each
folder in its own subprocess, with the same random test weights (``fidkit weights make-test``;
pytorch-fid gets them through its ``load_state_dict_from_url``, torch-fidelity through
``feature_extractor_weights_path``) and its own default batch size and worker count. Reported:

* images/s over the extraction (network loaded -> statistics in hand) and the process wall time;
* peak RSS of the tool's whole process tree (the process and its DataLoader workers, summed,
  sampled every 50 ms with psutil; forked workers share pages, so the sum is an upper bound;
  fidkit decodes in threads of its one process);
* this machine's fp32 matmul GFLOP/s (torch, all threads) and fidkit's share of it, counting
  the FID Inception at 5.7 GMAC = 11.4 GFLOP per image;
* fidkit's largest difference between the network it ran and the reference (plain) network on
  the first images (0 for its default, which gives the same bits), and between its statistics
  and torch-fidelity's (the same tf1 convention);
* with ``--scaling``, fidkit's peak RSS against the number of images (a generated source, no
  files) to show memory does not grow with N, one process per N; with ``--scaling-trace N``, one
  process of N images, its RSS sampled against the images loaded so far.

Tools: ``fidkit`` (its defaults), ``fidkit-exact`` (``--network reference``, the reference
network), ``pytorch-fid``, ``torch-fidelity``.

The fidkit child applies the heap setting the fidkit command line applies (fidkit.allocator);
``FIDKIT_NO_ALLOC_TUNING=1`` turns it off there as in the command line.

    python benchmarks/throughput.py --quick                 # smoke test, a few minutes
    python benchmarks/throughput.py --n 1000 --n-other 200 --scaling 1000,4000 --json out.json

The machine is shared: run the tools interleaved in one invocation and compare within it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GFLOP_PER_IMAGE = 2 * 5.7  # multiply-accumulate = 2 floating-point operations
TOOLS = ("fidkit", "pytorch-fid", "torch-fidelity")


# ----------------------------------------------------------------------------- child side

class GeneratedSource:
    """``count`` deterministic uint8 64x64 images made on demand (no files, no N-sized buffer)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.loaded = 0  # images handed out so far (read by the --scaling-trace sampler)

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> np.ndarray:
        self.loaded += 1
        return np.random.default_rng(index).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def item_name(self, index: int) -> str:
        return f"generated[{index}]"

    def describe(self) -> dict:
        return {"kind": "generated", "images": self.count}


#: The ``network`` argument each fidkit tool name runs with.
FIDKIT_TOOLS = {"fidkit": None, "fidkit-exact": "reference"}


def _run_fidkit(folder: str, weights: str, workers: int | None, dims: int, device: str = "cpu",
                network: str | None = None) -> dict:
    import torch

    import fidkit
    from fidkit.extractors.runner import iter_features, load_model
    from fidkit.preprocess import get_convention
    from fidkit.sources import FolderSource

    import fidkit.extractors.runner

    if os.environ.get("FIDKIT_BENCH_THREADS", "") not in ("", "0"):  # CUDA: threads, not processes
        fidkit.extractors.runner._DECODE_PROCESSES_ON_CARD = False
    batch = int(os.environ.get("FIDKIT_BENCH_BATCH", "0")) or None
    source = GeneratedSource(int(folder[len("generated:"):])) if folder.startswith("generated:") else folder
    model, _ = load_model(weights, device=device, progress=False)
    trace = _RssTrace(source) if isinstance(source, GeneratedSource) else None
    start = time.perf_counter()
    extra = {"batch_size": batch} if batch else {}
    stats = fidkit.compute_statistics(source, dims=dims, weights=weights, workers=workers,
                                      device=device, cache=False, progress=False, network=network,
                                      **extra)
    seconds = time.perf_counter() - start
    out = {"n": stats.n, "seconds": seconds, "mu": stats.mu.tolist(),
           "network": stats.meta.get("network")}
    if trace is not None:
        out["rss_trace"] = trace.stop()
    if not isinstance(source, str):
        return out
    # the network that ran vs the reference network on the first images (the tests check this)
    first = FolderSource(folder)
    first.files = first.files[:16]
    model.outputs = ("2048",)

    def features(path):
        return torch.cat([o["2048"] for o in iter_features(first, model, get_convention("tf1"),
                                                           workers=0, network=path,
                                                           progress=False)])

    plain, ran = features("reference"), features(network)
    out["fast_vs_plain_rel"] = float((ran - plain).abs().max() / plain.abs().max())
    return out


class _RssTrace:
    """This process's RSS every 50 ms against the number of images loaded so far, so one run of N
    images gives the peak over its first 1k, 5k, ... images (fidkit decodes in threads on the
    CPU, so the process is the whole tree). ``stop`` returns [[images, peak RSS MB so far], ...]
    at each power-of-ten-ish checkpoint and at the end."""

    def __init__(self, source: "GeneratedSource") -> None:
        import threading

        self.source, self.samples, self.done = source, [], False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.done:
            with open("/proc/self/statm") as handle:
                rss = int(handle.read().split()[1]) * page
            self.samples.append((self.source.loaded, rss))
            time.sleep(0.05)

    def stop(self) -> list:
        self.done = True
        self.thread.join()
        marks = sorted({m for m in (1000, 2000, 5000, 10000, 20000, 50000) if m < self.source.count}
                       | {self.source.count})
        return [[m, max(r for k, r in self.samples if k <= m) / 2 ** 20] for m in marks]


def _run_pytorch_fid(folder: str, weights: str, device: str = "cpu") -> dict:
    import torch
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pfi

    state = torch.load(weights, weights_only=True)
    pfi.load_state_dict_from_url = lambda *a, **k: state
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
    workers = min(len(os.sched_getaffinity(0)), 8)  # pytorch-fid's own CLI default
    start = time.perf_counter()
    mu, _sigma = fid_score.compute_statistics_of_path(folder, model, 50, 2048, device, workers)
    files = [p for p in Path(folder).iterdir() if p.suffix[1:].lower() in fid_score.IMAGE_EXTENSIONS]
    return {"n": len(files), "seconds": time.perf_counter() - start, "mu": mu.tolist()}


def _run_torch_fidelity(folder: str, weights: str, device: str = "cpu") -> dict:
    from torch_fidelity.metric_fid import fid_input_id_to_statistics
    from torch_fidelity.utils import create_feature_extractor

    kwargs = dict(input1=folder, cuda=device.startswith("cuda"), cache=False, verbose=False,
                  feature_extractor_weights_path=weights)
    extractor = create_feature_extractor("inception-v3-compat", ["2048"], **kwargs)
    start = time.perf_counter()
    stats = fid_input_id_to_statistics(1, extractor, "2048", **kwargs)
    n = sum(1 for p in Path(folder).iterdir() if p.suffix in (".png", ".jpg"))
    return {"n": n, "seconds": time.perf_counter() - start, "mu": stats["mu"].tolist()}


def child_main(args: argparse.Namespace) -> None:
    tool = args.run
    if os.environ.get("FIDKIT_BENCH_NO_TF32", "") not in ("", "0"):
        import torch  # a peer made to run plain fp32 convolutions, as fidkit always does

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if tool in FIDKIT_TOOLS:
        result = _run_fidkit(args.folder, args.weights, args.workers, args.dims, args.device,
                             FIDKIT_TOOLS[tool])
    elif tool == "pytorch-fid":
        result = _run_pytorch_fid(args.folder, args.weights, args.device)
    elif tool == "torch-fidelity":
        result = _run_torch_fidelity(args.folder, args.weights, args.device)
    else:
        raise SystemExit(f"unknown tool {tool}")
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent side

def measure(cmd: list[str]) -> tuple[float, float, float, int]:
    """Run ``cmd``; return (wall seconds, peak summed RSS and peak summed PSS of its process tree
    in bytes, exit code). Forked workers share the parent's pages (torch alone is ~0.7 GB
    resident), which summed RSS counts once per process and PSS splits between them."""
    import psutil

    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            procs = [proc] + proc.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return time.perf_counter() - start, peak_rss, peak_pss, proc.returncode


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul rate of this machine with torch's default threads (GFLOP/s)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def make_set(folder: Path, count: int, size: int, fmt: str) -> Path:
    """``count`` synthetic images (smooth colour fields + texture) at size x size, written once."""
    import torch
    from PIL import Image

    from fidkit.extractors.weights import synthetic_images

    done = folder / ".complete"
    if done.exists() and int(done.read_text()) >= count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(size)
    for start in range(0, count, 20):
        batch = synthetic_images(min(20, count - start), size=size, generator=gen)
        for k, img in enumerate(batch.permute(0, 2, 3, 1).numpy()):
            path = folder / f"img_{start + k:05d}.{fmt}"
            if fmt == "png":
                Image.fromarray(img).save(path, compress_level=1)
            else:
                Image.fromarray(img).save(path, quality=90)
    done.write_text(str(count))
    return folder


def run_tool(tool: str, folder: str, weights: str, work: Path, *, workers: int | None = None,
             dims: int = 2048, device: str = "cpu") -> dict:
    result = work / f"result-{os.getpid()}-{time.time_ns()}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--run", tool, "--folder", folder,
           "--weights", weights, "--result", str(result), "--dims", str(dims), "--device", device]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    wall, peak, peak_pss, code = measure(cmd)
    if code:
        return {"tool": tool, "error": f"exit code {code}"}
    out = json.loads(result.read_text())
    result.unlink()
    out.update(tool=tool, wall_s=wall, peak_rss_mb=peak / 2 ** 20, peak_pss_mb=peak_pss / 2 ** 20,
               images_per_s=out["n"] / out["seconds"])
    return out


def parent_main(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fidkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = Path(args.weights) if args.weights else work / "test-weights.pth"
    if not weights.exists():
        from fidkit.extractors.weights import make_test_weights

        make_test_weights(weights, seed=0)
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg()}}
    report["machine"]["matmul_gflops"] = gflops = matmul_gflops()
    print(f"fp32 matmul: {gflops:.1f} GFLOP/s ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    sets = []
    for spec in [s for s in args.sets.split(",") if s]:  # --sets "" runs no sets
        fmt, size = spec[:3], int(spec[3:])
        count = args.n if not sets else args.n_other
        sets.append((spec, make_set(work / f"{spec}-{count}", count, size, fmt)))
    report["runs"] = []
    tools = args.tools.split(",")
    for name, folder in sets:
        rows = {}
        for tool in tools:
            row = run_tool(tool, str(folder), str(weights), work)
            row["set"] = name
            rows[tool] = row
            report["runs"].append({k: v for k, v in row.items() if k != "mu"})
            if "error" in row:
                print(f"{name:8s} {tool:15s} FAILED {row['error']}")
                continue
            share = row["images_per_s"] * GFLOP_PER_IMAGE / gflops
            extra = ""
            if "fast_vs_plain_rel" in row:
                extra = (f" [{row['network']}: vs reference {row['fast_vs_plain_rel']:.1e}"
                         f"{' (same bits)' if row['fast_vs_plain_rel'] == 0 else ''}]")
            print(f"{name:8s} {tool:15s} n={row['n']:5d} {row['images_per_s']:6.2f} img/s "
                  f"({share:5.1%} of matmul peak) wall {row['wall_s']:6.1f} s "
                  f"peak RSS {row['peak_rss_mb']:5.0f} MB PSS {row['peak_pss_mb']:5.0f} MB{extra}", flush=True)
        for ours in FIDKIT_TOOLS:
            if "mu" not in rows.get(ours, {}):
                continue
            for peer in ("pytorch-fid", "torch-fidelity"):
                if "mu" in rows.get(peer, {}):
                    ratio = rows[ours]["images_per_s"] / rows[peer]["images_per_s"]
                    print(f"{name:8s} {ours} / {peer}: {ratio:.2f}x")
                    report.setdefault("speedups", []).append(
                        {"set": name, "tool": ours, "peer": peer, "ratio": ratio})
            if "mu" in rows.get("torch-fidelity", {}):
                a, b = np.array(rows[ours]["mu"]), np.array(rows["torch-fidelity"]["mu"])
                rel = float(np.abs(a - b).max() / np.abs(b).max())
                print(f"{name:8s} {ours} vs torch-fidelity mu (both tf1): max rel diff {rel:.1e}")
                report.setdefault("agreement", []).append({"set": name, "tool": ours, "mu_rel": rel})
    if args.batch_sweep:
        name, folder = sets[-1]
        for batch in (int(b) for b in args.batch_sweep.split(",")):
            os.environ["FIDKIT_BENCH_BATCH"] = str(batch)
            try:
                row = run_tool("fidkit", str(folder), str(weights), work)
            finally:
                del os.environ["FIDKIT_BENCH_BATCH"]
            row.pop("mu", None)
            report.setdefault("batch_sweep", []).append(dict(row, set=name, batch=batch))
            print(f"{name:8s} fidkit batch={batch}: {row.get('images_per_s', 0):.2f} img/s "
                  f"peak RSS {row.get('peak_rss_mb', 0):.0f} MB PSS {row.get('peak_pss_mb', 0):.0f} MB",
                  flush=True)
    if args.worker_sweep:
        name, folder = sets[-1]
        for workers in (0, 1, 2):
            row = run_tool("fidkit", str(folder), str(weights), work, workers=workers)
            row.pop("mu", None)
            report.setdefault("worker_sweep", []).append(dict(row, set=name, workers=workers))
            print(f"{name:8s} fidkit workers={workers}: {row.get('images_per_s', 0):.2f} img/s "
                  f"peak RSS {row.get('peak_rss_mb', 0):.0f} MB PSS {row.get('peak_pss_mb', 0):.0f} MB")
    if args.scaling:
        for count in (int(c) for c in args.scaling.split(",")):
            row = run_tool("fidkit", f"generated:{count}", str(weights), work, dims=args.scaling_dims)
            row.pop("mu", None)
            report.setdefault("scaling", []).append(dict(row, dims=args.scaling_dims))
            print(f"scaling  fidkit n={count:6d} dims={args.scaling_dims}: "
                  f"{row.get('images_per_s', 0):.1f} img/s peak RSS {row.get('peak_rss_mb', 0):.0f} MB "
                  f"PSS {row.get('peak_pss_mb', 0):.0f} MB",
                  flush=True)
    if args.scaling_trace:
        count = args.scaling_trace
        row = run_tool("fidkit", f"generated:{count}", str(weights), work, dims=args.scaling_dims)
        row.pop("mu", None)
        report["scaling_trace"] = dict(row, dims=args.scaling_dims)
        if "error" in row:
            print(f"scaling-trace fidkit FAILED {row['error']}")
        else:
            first = row["rss_trace"][0][1]
            marks = ", ".join(f"{m}: {mb:.0f} MB ({mb / first - 1:+.1%})" for m, mb in row["rss_trace"])
            print(f"scaling-trace fidkit dims={args.scaling_dims} {row['images_per_s']:.2f} img/s; "
                  f"peak RSS over the first N images: {marks}; whole tree {row['peak_rss_mb']:.0f} MB",
                  flush=True)
    report["machine"]["load_avg_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 24 images per set, no scaling")
    p.add_argument("--n", type=int, default=1000, help="images in the first set (default 1000)")
    p.add_argument("--n-other", type=int, default=None, help="images in the other sets (default --n)")
    p.add_argument("--sets", default="png256,jpg256,png1024,jpg1024",
                   help="comma-separated FORMAT+SIZE sets; the first gets --n images")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--batch-sweep", default=None, metavar="B,B,...",
                   help="also run fidkit on the last set with each of these batch sizes")
    p.add_argument("--worker-sweep", action="store_true",
                   help="also run fidkit with 0, 1 and 2 decoding workers on the last set")
    p.add_argument("--scaling", default=None, metavar="N,N,...",
                   help="fidkit peak RSS for these image counts (generated 64x64 images)")
    p.add_argument("--scaling-trace", type=int, default=None, metavar="N",
                   help="one fidkit run of N generated images; peak RSS over its first 1k, 2k, 5k, ...")
    p.add_argument("--scaling-dims", type=int, default=64,
                   help="tap for --scaling (64 stops the network early so large N fit in minutes)")
    p.add_argument("--weights", default=None, help="weights file (default: make-test weights)")
    p.add_argument("--workdir", default=None, help="where the image sets are written (reused)")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    # child mode (one tool, one folder, in its own process)
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dims", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)  # benchmarks/gpu.py sets cuda
    args = p.parse_args()
    if args.run:
        child_main(args)
        return
    if args.quick:
        args.n, args.n_other = 24, 24
    if args.n_other is None:
        args.n_other = args.n
    parent_main(args)


if __name__ == "__main__":
    main()
