"""DINOv2 features: fidkit's dinov2-vit-*-14 against torch-fidelity 0.4.0's extractor of the same
name, same process, same random weights file, same uint8 images, on the CPU.

    python benchmarks/extractors_dinov2.py --dinov2-repo PATH                  # ViT-S, 64 images
    python benchmarks/extractors_dinov2.py --dinov2-repo PATH --variants s l --images 256 --json out.json

torch-fidelity loads the official network with ``torch.hub.load("facebookresearch/dinov2", ...)``
and cannot be given a local network or weights file, so the hub is answered from a checkout of
facebookresearch/dinov2 (``--dinov2-repo``, default ``$FIDKIT_DINOV2_REPO``, else torch hub's
cache folder ``facebookresearch_dinov2_main``) with ``source="local"``, and its weights come from
torch hub's checkpoint folder, pointed at a temporary folder holding fidkit's test weights under
the official file name. Both sides use the torch-fidelity convention (TF1 bilinear to 224), so
their features are compared too (max |difference| relative to the largest feature).

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


def _official_repo(given: str | None) -> Path:
    for candidate in (given, os.environ.get("FIDKIT_DINOV2_REPO"),
                      os.path.join(torch.hub.get_dir(), "facebookresearch_dinov2_main")):
        if candidate and (Path(candidate) / "hubconf.py").is_file():
            return Path(candidate)
    sys.exit("extractors_dinov2.py: no facebookresearch/dinov2 checkout; clone "
             "https://github.com/facebookresearch/dinov2 and pass --dinov2-repo PATH")


def _torch_fidelity(variant: str, repo: Path):
    """torch-fidelity's FeatureExtractorDinoV2 with torch.hub.load answered from ``repo``."""
    from torch_fidelity import feature_extractor_dinov2 as tfd

    os.environ["XFORMERS_DISABLED"] = "1"
    original = torch.hub.load
    tfd.torch.hub.load = lambda _repo, name, *a, **k: original(str(repo), name, source="local")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tfd.FeatureExtractorDinoV2(f"dinov2-vit-{variant}-14", ["dinov2"])
    finally:
        tfd.torch.hub.load = original


def run(variant: str, repo: Path, images: int, size: tuple[int, int], batch: int, runs: int,
        hub: Path) -> dict:
    extractor = get_extractor(f"dinov2-vit-{variant}-14")
    weights = hub / "checkpoints" / extractor.weights.filename
    extractor.make_test_weights(weights, seed=0)
    network = extractor.build(extractor.read_weights(weights), ("cls",))
    convention = extractor.convention("torch-fidelity")
    peer = _torch_fidelity(variant, repo)

    timing = compare_with_torch_fidelity(network, convention, "cls", peer,
                                         random_batches(images, size, batch), runs)
    return {"variant": f"dinov2-vit-{variant}-14", "images": images, "size": list(size),
            "batch": batch, "runs": runs, **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dinov2-repo", help="checkout of facebookresearch/dinov2")
    parser.add_argument("--variants", nargs="+", default=["s"], choices=["s", "b", "l", "g"])
    add_run_options(parser)
    args = parser.parse_args()
    repo = _official_repo(args.dinov2_repo)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp)
        (hub / "checkpoints").mkdir()
        previous = torch.hub.get_dir()
        torch.hub.set_dir(str(hub))
        try:
            for variant in args.variants:
                r = run(variant, repo, args.images, tuple(args.size), args.batch, args.runs, hub)
                results.append(r)
                print_result(r["variant"], r)
        finally:
            torch.hub.set_dir(previous)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
