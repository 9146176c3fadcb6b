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
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks._common import (add_run_options, compare_with_torch_fidelity,  # noqa: E402
                                print_result, random_batches, write_json)
from fidkit.extractors import get_extractor  # noqa: E402

MODELS = ("clip-vit-b-32", "clip-vit-l-14", "clip-vit-l-14-336px")


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

    timing = compare_with_torch_fidelity(network, convention, "embedding", peer,
                                         random_batches(images, size, batch), runs)
    return {"model": name, "images": images, "size": list(size), "batch": batch, "runs": runs,
            **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["clip-vit-b-32"], choices=MODELS)
    add_run_options(parser)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = run(name, args.images, tuple(args.size), args.batch, args.runs, Path(tmp))
            results.append(r)
            print_result(r["model"], r)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
