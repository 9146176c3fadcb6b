"""What the extractor benchmarks against torch-fidelity share (extractors_clip.py,
extractors_dinov2.py): random uint8 images, interleaved timing of fidkit and the peer on the
same batches, the result row, its printed line and the --json file."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch

Features = Callable[[torch.Tensor], torch.Tensor]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--images, --size H W, --batch, --runs and --json."""
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")


def random_batches(images: int, size: tuple[int, int], batch: int) -> list[torch.Tensor]:
    """``images`` uint8 (3, H, W) images from seed 0, in batches of ``batch``."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (images, 3, *size), generator=g, dtype=torch.uint8)
    return list(data.split(batch))


def _throughput(fn: Features, batches: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = [fn(b) for b in batches]
    return sum(len(b) for b in batches) / (time.perf_counter() - start), torch.cat(out)


def compare_with_torch_fidelity(network: Any, convention: Any, output: str, peer: Any,
                                batches: list[torch.Tensor], runs: int) -> dict:
    """fidkit's ``network`` (after ``convention.prepare``) giving ``output``, against the
    torch-fidelity extractor ``peer`` (its first output), on uint8 ``batches``: median images/s
    of both sides over ``runs`` interleaved runs (after one warm-up batch each), fidkit's ratio,
    the thread count and the largest feature difference relative to the largest peer feature."""

    def fidkit_features(b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network(convention.prepare(b.float()))[output]

    def peer_features(b: torch.Tensor) -> torch.Tensor:
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
        "threads": torch.get_num_threads(),
        "fidkit_img_s": statistics.median(rates["fidkit"]),
        "torch_fidelity_img_s": statistics.median(rates["torch-fidelity"]),
        "max_rel_diff": float((a - b).abs().max() / b.abs().max()),
    }
    result["ratio"] = result["fidkit_img_s"] / result["torch_fidelity_img_s"]
    return result


def print_result(label: str, r: dict) -> None:
    print(f"{label}: fidkit {r['fidkit_img_s']:.1f} img/s, torch-fidelity "
          f"{r['torch_fidelity_img_s']:.1f} img/s, ratio {r['ratio']:.2f}x, "
          f"max rel diff {r['max_rel_diff']:.2g} ({r['images']} images "
          f"{r['size'][0]}x{r['size'][1]}, batch {r['batch']}, {r['threads']} threads)")


def write_json(path: str | None, results: list[dict]) -> None:
    if path:
        from fidkit.fileio import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(results, indent=2).encode())
