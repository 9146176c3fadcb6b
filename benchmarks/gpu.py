"""fidkit on a CUDA card: numerics, in-memory images/s and folder images/s against the peers.

One run, one card, the same random test weights for every tool (``fidkit weights make-test``):

1. numerics: pool_3 (and the 64/192/768 taps) of 32 synthetic images on the card, against the
   same network in float64 on the CPU; and the same with TF32
   switched on globally beforehand, to show fidkit turns it off (and what TF32 would cost);
2. in-memory tensors: a streaming ``fidkit.FID`` fed uint8 (B, 3, 256, 256) batches that already
   sit on the card, against torchmetrics' ``FrechetInceptionDistance`` (torch-fidelity's network)
   and pytorch-fid's ``InceptionV3`` with its activations copied to the host as its own loop does,
   each with cuDNN's default TF32 convolutions and with TF32 off (fidkit's numerics); images/s
   per batch size, synchronised timing;
3. a folder of PNGs (256x256, written here in parallel): ``fidkit`` vs ``pytorch-fid`` vs
   ``torch-fidelity`` end to end on the card, each in its own process with its own default
   workers (``benchmarks/throughput.py``'s child runs with ``--device cuda``), the peers also with
   TF32 off, and fidkit also decoding in threads instead of processes (``--worker-sweep`` adds
   other worker counts).

The card's plain fp32 matmul rate (TF32 off) is measured in the same run; fidkit's share of it
counts 11.4 GFLOP per image.

    python benchmarks/gpu.py --json gpu.json           # about 3 minutes on an H100/H200
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (the folder run reuses its child processes)

GFLOP_PER_IMAGE = throughput.GFLOP_PER_IMAGE
#: The card; ``--device cpu`` runs the same code as a smoke test on a machine without one.
DEVICE = "cuda"


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def environment() -> dict:
    if not DEVICE.startswith("cuda"):
        return {"card": "none (cpu smoke test)", "torch": torch.__version__, "cpus": os.cpu_count()}
    props = torch.cuda.get_device_properties(0)
    return {"card": torch.cuda.get_device_name(0), "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cpus": os.cpu_count(), "tf32_defaults": {
                "matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn": torch.backends.cudnn.allow_tf32}}


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    """The card's fp32 matmul rate with TF32 off (TFLOP/s, the mean of ``repeats`` products)."""
    from fidkit.extractors.runner import fp32_numerics

    if not DEVICE.startswith("cuda"):
        size, repeats = 1024, 2

    a = torch.randn(size, size, device=DEVICE)
    b = torch.randn(size, size, device=DEVICE)
    with fp32_numerics():
        a @ b
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12


def numerics(weights: str) -> dict:
    """Largest difference from the float64 network, relative to the largest feature, per tap."""
    from fidkit.extractors.runner import fp32_numerics, inference_copy, load_model
    from fidkit.preprocess import get_convention
    from fidkit.extractors.weights import synthetic_images

    taps = ("64", "192", "768", "2048")
    images = synthetic_images(32, size=256, generator=torch.Generator().manual_seed(7))
    x = get_convention("tf1").prepare(images.float())
    cpu_model, _ = load_model(weights, outputs=taps, device="cpu", progress=False)
    with torch.no_grad():
        truth = copy.deepcopy(cpu_model).double()(x.double())
        cpu_plain = cpu_model(x)
    model, _ = load_model(weights, outputs=taps, device=DEVICE, progress=False)
    fast = inference_copy(model, "reference")  # on a card the default copy is the module itself
    xc = x.to(DEVICE)
    out: dict = {"cpu_plain": {t: _rel(cpu_plain[t], truth[t]) for t in taps}}
    with torch.no_grad(), fp32_numerics():
        plain = model(xc)
        quick = fast(xc.contiguous())
    out["cuda_plain"] = {t: _rel(plain[t], truth[t]) for t in taps}
    out["cuda_fast"] = {t: _rel(quick[t], truth[t]) for t in taps}
    out["cuda_fast_vs_plain"] = {t: _rel(quick[t], plain[t]) for t in taps}
    # TF32 on, as a training script may leave it: the raw network, and fidkit's metric after it
    with _tf32(True):
        with torch.no_grad():
            tf32 = model(xc)
        out["cuda_tf32_raw"] = {t: _rel(tf32[t], truth[t]) for t in taps}
        import fidkit

        metric = fidkit.FID(dims=2048, weights=weights, device=DEVICE)
        metric.update(images.to(DEVICE))
        guarded = metric.statistics().mu
        out["metric_mu_under_tf32_vs_float64_mu"] = float(
            np.abs(guarded - truth["2048"].mean(0).numpy()).max() / np.abs(truth["2048"].mean(0).numpy()).max())
        out["tf32_flags_after_metric"] = [torch.backends.cuda.matmul.allow_tf32,
                                          torch.backends.cudnn.allow_tf32]
    model.outputs = ("2048",)
    return out


def _timed(step, batch: torch.Tensor, images: int) -> float:
    """images/s of ``step(batch)`` over about ``images`` images after two warm-up calls."""
    step(batch)
    step(batch)
    sync()
    calls = max(2, images // batch.shape[0])
    start = time.perf_counter()
    for _ in range(calls):
        step(batch)
    sync()
    return calls * batch.shape[0] / (time.perf_counter() - start)


class _tf32:
    """TF32 on or off for the peers (cuDNN's default is on; fidkit switches it off itself)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def in_memory(weights: str, batches: list[int], images: int) -> list[dict]:
    import fidkit

    rows = []
    state = torch.load(weights, weights_only=True)
    cudnn_default = torch.backends.cudnn.allow_tf32
    for batch_size in batches:
        batch = torch.randint(0, 256, (batch_size, 3, 256, 256), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(batch_size)).to(DEVICE)
        row: dict = {"batch": batch_size}
        metric = fidkit.FID(dims=2048, weights=weights, device=DEVICE)  # the reference network
        row["fidkit"] = _timed(metric.update, batch, images)
        for tf32 in (cudnn_default, False) if cudnn_default else (False,):
            tag = " (TF32 on, its default)" if tf32 else " (TF32 off)"
            with _tf32(tf32):
                try:
                    from torchmetrics.image.fid import FrechetInceptionDistance

                    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights)
                    tm = tm.to(DEVICE)
                    row["torchmetrics" + tag] = _timed(lambda b: tm.update(b, real=False), batch, images)
                except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
                    row["torchmetrics" + tag] = f"failed: {type(exc).__name__}: {exc}"[:200]
                try:
                    from pytorch_fid import inception as pfi

                    pfi.load_state_dict_from_url = lambda *a, **k: state
                    net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(DEVICE)
                    kept: list = []

                    def pfid_step(b):
                        with torch.no_grad():
                            pred = net(b.float() / 255)[0]  # its loop: [0, 1] floats in, pool_3 out
                        kept.append(pred.squeeze(3).squeeze(2).cpu().numpy())

                    row["pytorch-fid" + tag] = _timed(pfid_step, batch, images)
                except Exception as exc:  # noqa: BLE001
                    row["pytorch-fid" + tag] = f"failed: {type(exc).__name__}: {exc}"[:200]
        rows.append(row)
        print("in-memory", json.dumps(row), flush=True)
    return rows


def _write_chunk(args: tuple) -> None:
    from PIL import Image

    from fidkit.extractors.weights import synthetic_images

    folder, start, stop = args
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(start)
    batch = synthetic_images(stop - start, size=256, generator=gen)
    for k, img in enumerate(batch.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(Path(folder) / f"img_{start + k:05d}.png", compress_level=1)


def make_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(str(folder), s, min(count, s + 50)) for s in range(0, count, 50)]
    with Pool(max(1, (os.cpu_count() or 2) - 1)) as pool:
        pool.map(_write_chunk, chunks)
    return folder


def folder_runs(weights: str, work: Path, count: int, tools: list[str], sweep: list[int]) -> list[dict]:
    folder = make_folder(work / f"png256-{count}", count)
    rows = []
    for tool in tools:
        rows.append(throughput.run_tool(tool, str(folder), weights, work, device=DEVICE))
        if tool != "fidkit" and DEVICE.startswith("cuda"):
            os.environ["FIDKIT_BENCH_NO_TF32"] = "1"
            try:
                row = throughput.run_tool(tool, str(folder), weights, work, device=DEVICE)
            finally:
                del os.environ["FIDKIT_BENCH_NO_TF32"]
            rows.append(dict(row, tool=f"{tool} (TF32 off)"))
    if "fidkit" in tools and DEVICE.startswith("cuda"):
        os.environ["FIDKIT_BENCH_THREADS"] = "1"
        try:
            row = throughput.run_tool("fidkit", str(folder), weights, work, device=DEVICE)
        finally:
            del os.environ["FIDKIT_BENCH_THREADS"]
        rows.append(dict(row, tool="fidkit, decoding threads"))
    for workers in sweep:
        row = throughput.run_tool("fidkit", str(folder), weights, work, workers=workers, device=DEVICE)
        rows.append(dict(row, tool=f"fidkit workers={workers}"))
    for row in rows:
        row.pop("mu", None)
        print("folder", json.dumps(row), flush=True)
    base = next((r for r in rows if r["tool"] == "fidkit" and "images_per_s" in r), None)
    for row in rows:
        if base and not row["tool"].startswith("fidkit") and "images_per_s" in row:
            print(f"folder fidkit / {row['tool']}: {base['images_per_s'] / row['images_per_s']:.2f}x")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="50,200", help="in-memory batch sizes")
    p.add_argument("--images", type=int, default=2000, help="images timed per in-memory case")
    p.add_argument("--folder-images", type=int, default=5000, help="PNGs in the folder run")
    p.add_argument("--tools", default="fidkit,pytorch-fid,torch-fidelity")
    p.add_argument("--worker-sweep", default="", help="also run fidkit with these worker counts")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: numerics,memory,folder")
    p.add_argument("--weights", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only as a smoke test")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu.py: no CUDA device here; run it on a machine with one (or --device cpu "
                         "for a smoke test)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fidkit-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    weights = args.weights or str(work / "test-weights.pth")
    if not Path(weights).exists():
        from fidkit.extractors.weights import make_test_weights

        make_test_weights(weights, seed=0)
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"environment": environment()}
    print(json.dumps(report["environment"]), flush=True)
    report["fp32_matmul_tflops"] = tflops = matmul_tflops()
    print(f"fp32 matmul (TF32 off): {tflops:.1f} TFLOP/s", flush=True)

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))

    for part, run in (
            ("numerics", lambda: numerics(weights)),
            ("memory", lambda: in_memory(weights, [int(b) for b in args.batches.split(",")], args.images)),
            ("folder", lambda: folder_runs(weights, work, args.folder_images, args.tools.split(","),
                                           [int(w) for w in args.worker_sweep.split(",") if w]))):
        if part in skip:
            continue
        start = time.perf_counter()
        try:
            report[part] = run()
        except Exception as exc:  # noqa: BLE001 - keep the other parts' numbers
            report[part] = {"error": f"{type(exc).__name__}: {exc}"}
            import traceback

            traceback.print_exc()
        print(f"{part}: {time.perf_counter() - start:.1f} s", flush=True)
        if part == "numerics":
            print("numerics", json.dumps(report[part]), flush=True)
        save()
    for row in report.get("memory", []) if isinstance(report.get("memory"), list) else []:
        share = row["fidkit"] * GFLOP_PER_IMAGE / (tflops * 1e3)
        print(f"in-memory batch {row['batch']}: fidkit {row['fidkit']:.0f} img/s "
              f"({share:.0%} of fp32 matmul rate)")
    save()


if __name__ == "__main__":
    main()
