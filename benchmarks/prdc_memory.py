"""Precision/recall/density/coverage memory and time: fidkit (blockwise, memmapped features files)
against ``prdc.compute_prdc`` (three full N x M distance matrices), same run.

    python benchmarks/prdc_memory.py                                  # 50k x 50k fidkit, 10k x 10k both
    python benchmarks/prdc_memory.py --large 3000 --peer 2000 --dims 64   # a quick check
    python benchmarks/prdc_memory.py --device cuda --json out.json

Synthetic features (Gaussian, the fake set shifted and scaled) are written once as fidkit features
files in a temporary folder. Every measurement runs in its own subprocess so that its peak memory
is its own: ``peak_rss`` is the kernel's high-water mark (``ru_maxrss``), which also counts the
pages of a memmapped features file the process has read (clean file cache the kernel can drop);
``peak_anon`` is the highest anonymous (heap) resident size sampled every 20 ms, the memory the
computation itself needs. prdc gets the features in RAM as float32, as its docstring asks, and uses k = 5 for all four
numbers; fidkit uses torch-fidelity's k = 3 for precision/recall, so only D and C are comparable.
At ``--large`` only fidkit runs (prdc would need 3 x N x M x 4 bytes: 30 GB at 50k).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fidkit.statistics.featurestore import FeatureWriter  # noqa: E402


def make_features(path: Path, n: int, dims: int, seed: int, shift: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    with FeatureWriter(path, dims, {"source": {"kind": "synthetic", "seed": seed}}) as writer:
        for start in range(0, n, 4096):
            rows = min(4096, n - start)
            writer.append((rng.standard_normal((rows, dims), dtype=np.float32) * scale + shift))


class AnonPeak:
    """Samples RssAnon from /proc/self/status in a thread; ``peak`` in bytes (0 off Linux)."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _read(self) -> int:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(every)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def child(args: argparse.Namespace) -> None:
    from fidkit.statistics.featurestore import open_features

    real, fake = open_features(args.real), open_features(args.fake)
    with AnonPeak() as anon:
        start = time.perf_counter()
        if args.child == "fidkit":
            from fidkit.distances.prdc import precision_recall_density_coverage

            pr, dc = precision_recall_density_coverage(real, fake, device=args.device,
                                                       block_rows=args.block_rows)
            values = {"precision": pr.precision, "recall": pr.recall,
                      "density": dc.density, "coverage": dc.coverage}
        else:
            from prdc import compute_prdc

            x, y = np.array(real.features), np.array(fake.features)  # float32 in RAM
            with contextlib.redirect_stdout(io.StringIO()):
                out = compute_prdc(x, y, 5)
            values = {key: float(v) for key, v in out.items()}
        seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss, "peak_anon": anon.peak, "values": values}))


def measure(kind: str, real: Path, fake: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--real", str(real),
           "--fake", str(fake), "--block-rows", str(args.block_rows)]
    if args.device:
        cmd += ["--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=50_000, help="rows per side for fidkit alone")
    parser.add_argument("--peer", type=int, default=10_000, help="rows per side for fidkit and prdc")
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--device", default=None, help="torch device for fidkit (default: numpy)")
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--folder", default=None, help="where to write the features files (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", choices=["fidkit", "prdc"], help=argparse.SUPPRESS)
    parser.add_argument("--real", help=argparse.SUPPRESS)
    parser.add_argument("--fake", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    results = []
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for size, kinds in ((args.peer, ("fidkit", "prdc")), (args.large, ("fidkit",))):
            real, fake = Path(folder) / f"real{size}.features", Path(folder) / f"fake{size}.features"
            make_features(real, size, args.dims, seed=1, shift=0.0, scale=1.0)
            make_features(fake, size, args.dims, seed=2, shift=0.05, scale=1.1)
            features_mb = 2 * size * args.dims * 4 / 2**20
            for kind in kinds:
                out = measure(kind, real, fake, args)
                out.update(kind=kind, size=size, features_mb=features_mb)
                results.append(out)
                if "error" in out:
                    print(f"{kind:7s} {size:>6d} x {size:<6d} failed: {out['error']}", flush=True)
                    continue
                v = out["values"]
                print(f"{kind:7s} {size:>6d} x {size:<6d} d={args.dims}  {out['seconds']:8.1f} s  "
                      f"peak RSS {out['peak_rss'] / 2**20:8.0f} MB  peak anon {out['peak_anon'] / 2**20:8.0f} MB  "
                      f"(features {features_mb:.0f} MB)  P {v['precision']:.6f} R {v['recall']:.6f} "
                      f"D {v['density']:.6f} C {v['coverage']:.6f}", flush=True)
            for path in (real, fake):
                path.unlink()
    pair = {r["kind"]: r for r in results if r["size"] == args.peer and "error" not in r}
    if len(pair) == 2:
        f, p = pair["fidkit"], pair["prdc"]
        print(f"at {args.peer} x {args.peer}: fidkit/prdc peak RSS {f['peak_rss'] / p['peak_rss']:.3f}, "
              f"peak anon {f['peak_anon'] / max(p['peak_anon'], 1):.3f}, time {f['seconds'] / p['seconds']:.2f}; "
              "max |value diff| " + str(max(abs(f['values'][k] - p['values'][k]) for k in ("density", "coverage")))
              + " (D, C; prdc in float32 distances)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {args.device or 'numpy'}, block_rows {args.block_rows}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
