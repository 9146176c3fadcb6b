"""CLIP features: fidkit's clip-vit-* against torch-fidelity 0.4.0's extractor of the same name,
same process, same random weights archive, same uint8 images, on the CPU.

    python benchmarks/extractors_clip.py                                     # ViT-B/32, 64 images
    python benchmarks/extractors_clip.py --models clip-vit-b-32 clip-vit-l-14 --images 256 --json out.json

fidkit writes a random archive in the official TorchScript layout (``make_test_weights``) and
torch-fidelity reads it through ``feature_extractor_weights_path`` (``torch.jit.load``). Both sides
use the torch-fidelity convention (TF1 bilinear to the network's size), so their features are
compared too (max |difference| relative to the largest feature).

Runs are interleaved (run r times every implementation once); reported: median images/s and
fidkit's speed as a multiple of torch-fidelity's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from fidkit.extractors import get_extractor  # noqa: E402

MODELS = ("clip-vit-b-32", "clip-vit-l-14", "clip-vit-l-14-336px")


def _throughput(fn, batches) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = [fn(b) for b in batches]
    return sum(len(b) for b in batches) / (time.perf_counter() - start), torch.cat(out)


def run(name: str, images: int, size: tuple[int, int], batch: int, runs: int, folder: Path) -> dict:
    from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP

    extractor = get_extractor(name)
    weights = folder / f"test-{name}.pt"
    extractor.make_test_weights(weights, seed=0)
    network = extractor.build(extractor.read_weights(weights), ("embedding",))
    convention = extractor.convention("torch-fidelity")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = FeatureExtractorCLIP(name, ["clip"], feature_extractor_weights_path=str(weights))
    peer.eval()

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (images, 3, *size), generator=g, dtype=torch.uint8)
    batches = list(data.split(batch))

    def fidkit_features(b):
        with torch.inference_mode():
            return network(convention.prepare(b.float()))["embedding"]

    def peer_features(b):
        with torch.inference_mode():
            return peer(b)[0]

    for fn in (fidkit_features, peer_features):  # warm-up: one-off allocations, oneDNN kernels
        fn(batches[0])
    rates: dict[str, list[float]] = {"fidkit": [], "torch-fidelity": []}
    outputs = {}
    for _ in range(runs):
        for tool, fn in (("fidkit", fidkit_features), ("torch-fidelity", peer_features)):
            rate, outputs[tool] = _throughput(fn, batches)
            rates[tool].append(rate)
    a, b = outputs["fidkit"].double(), outputs["torch-fidelity"].double()
    result = {
        "model": name, "images": images, "size": list(size), "batch": batch, "runs": runs,
        "threads": torch.get_num_threads(),
        "fidkit_img_s": statistics.median(rates["fidkit"]),
        "torch_fidelity_img_s": statistics.median(rates["torch-fidelity"]),
        "max_rel_diff": float((a - b).abs().max() / b.abs().max()),
    }
    result["ratio"] = result["fidkit_img_s"] / result["torch_fidelity_img_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["clip-vit-b-32"], choices=MODELS)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = run(name, args.images, tuple(args.size), args.batch, args.runs, Path(tmp))
            results.append(r)
            print(f"{r['model']}: fidkit {r['fidkit_img_s']:.1f} img/s, torch-fidelity "
                  f"{r['torch_fidelity_img_s']:.1f} img/s, ratio {r['ratio']:.2f}x, "
                  f"max rel diff {r['max_rel_diff']:.2g} ({r['images']} images "
                  f"{r['size'][0]}x{r['size'][1]}, batch {r['batch']}, {r['threads']} threads)")
    if args.json:
        from fidkit.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(results, indent=2).encode())


if __name__ == "__main__":
    main()
