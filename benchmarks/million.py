"""Streaming a million images from tar shards: memory stays flat, reading in place keeps up.

    python benchmarks/million.py --images 1000000 [--per-shard 10000] [--workers 2]

Writes ``--images`` small PNGs (16x16, 1,000 distinct ones reused under different names) into
WebDataset-style tar shards in a temporary folder, then

1. streams them through the chunked, checkpointed statistics path
   (:func:`fidkit.statistics.checkpoint.accumulate_chunked`: decoding threads working ahead of a
   cheap torch network, 3x3 convolution to 32 channels + global pooling) and prints the peak RSS
   when 10k, 100k and 1M images are done (those within ``--images``), and their ratio to the
   first: flat means within 10 %;
2. times reading alone (read + decode, one thread) of the same ``--compare`` images from the
   shards and from the same files unpacked into a folder (fidkit's FolderSource), and prints
   images/s of each and their ratio (opening, i.e. indexing the shards or listing the folder, is
   timed separately).

Checked here only at 10k (``--images 10000``); the lead reruns it at 1M on a quiet machine.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MARKS = (10_000, 100_000, 1_000_000)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def encoded_images(count: int = 1000) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def write_shards(folder: Path, images: int, per_shard: int) -> str:
    pngs = encoded_images()
    shards = -(-images // per_shard)
    for shard in range(shards):
        with tarfile.open(folder / f"bench-{shard:06d}.tar", "w") as tar:
            for i in range(shard * per_shard, min(images, (shard + 1) * per_shard)):
                for name, data in ((f"{i:09d}.png", pngs[i % len(pngs)]), (f"{i:09d}.cls", b"0")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"bench-{{000000..{shards - 1:06d}}}.tar")


def unpack(spec: str, folder: Path, count: int) -> None:
    from fidkit.sources.archives import open_archive_source

    source = open_archive_source(spec)
    folder.mkdir()
    for index in range(count):
        archive, j = source._locate(index)
        (folder / archive.names[j]).write_bytes(archive.read(j, source.item_name(index)))


def network_batches(workers: int):
    """Decoding threads working ahead of a cheap torch network (the shape of fidkit's runner)."""
    import torch

    from fidkit.errors import BadImageError
    from fidkit.statistics.checkpoint import Batch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def load(source, position):
        try:
            return position, source.load(position), None
        except BadImageError as exc:
            return position, None, str(exc)

    def batches(source, batch_size):
        n = len(source)
        futures = [pool.submit(load, source, i) for i in range(min(n, 2 * batch_size))]
        submitted = len(futures)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            done = [futures[k].result() for k in range(stop - start)]
            futures = futures[stop - start:]
            while submitted < min(n, stop + batch_size):
                futures.append(pool.submit(load, source, submitted))
                submitted += 1
            good = [(p, img) for p, img, _ in done if img is not None]
            skipped = [(p, source.item_name(p), e) for p, img, e in done if img is None]
            x = torch.from_numpy(np.stack([img for _, img in good])).permute(0, 3, 1, 2).float() / 255
            with torch.inference_mode():
                yield Batch([p for p, _ in good], net(x), skipped)

    return batches


def stream(spec: str, workers: int, batch_size: int, chunk_size: int, folder: Path) -> None:
    from fidkit.sources.archives import open_archive_source
    from fidkit.statistics.checkpoint import (ChunkPlan, accumulate_chunked, open_checkpoint,
                                              run_identity)

    start = time.perf_counter()
    source = open_archive_source(spec)
    indexed = time.perf_counter() - start
    print(f"indexed {len(source)} images in {source.describe()['archives']} shards in "
          f"{indexed:.1f} s; RSS now {current_rss_mb():.0f} MB")
    plan = ChunkPlan.make(len(source), batch_size, chunk_size)
    identity = run_identity(source=source.describe(), extractor="bench", dims=32, convention="x",
                            weights_sha256="none", network="bench", device_type="cpu",
                            batch_size=batch_size, chunk_size=plan.chunk_size)
    checkpoint = open_checkpoint(folder / "bench.partial", identity, plan, 32)
    marks = [m for m in MARKS if m <= len(source)]
    seen = {"done": 0, "peaks": []}

    def progress(count: int) -> None:
        before = seen["done"]
        seen["done"] += count
        for mark in marks:
            if before < mark <= seen["done"]:
                seen["peaks"].append((mark, peak_rss_mb(), time.perf_counter() - start))

    result = accumulate_chunked(source, network_batches(workers), plan, 32, checkpoint=checkpoint,
                                progress=progress)
    assert result.accumulator.n == len(source)
    checkpoint.remove()
    first = seen["peaks"][0][1]
    for mark, peak, elapsed in seen["peaks"]:
        print(f"  {mark:>9,} images: peak RSS {peak:7.1f} MB ({peak / first:.3f}x the first), "
              f"{mark / elapsed:7.0f} img/s so far")


def read_alone(spec: str, folder: Path, count: int) -> None:
    from fidkit.sources import FolderSource
    from fidkit.sources.archives import open_archive_source

    timings = {}
    for name, opener in (("tar shards", lambda: open_archive_source(spec)),
                         ("folder", lambda: FolderSource(folder))):
        start = time.perf_counter()
        source = opener()
        opened = time.perf_counter() - start
        start = time.perf_counter()
        for index in range(count):
            source.load(index)
        timings[name] = count / (time.perf_counter() - start)
        print(f"  reading alone from {name:10s}: {timings[name]:8.0f} img/s over {count} images "
              f"(opening: {opened:.2f} s for {len(source)} images, not counted)")
    print(f"  tar / folder: {timings['tar shards'] / timings['folder']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--compare", type=int, default=None,
                        help="images unpacked to a folder for the reading comparison "
                             "(default: min(--images, 100000))")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--tmp", default=None, help="folder for the shards (default: a temporary one)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fidkit-million-", dir=args.tmp))
    try:
        start = time.perf_counter()
        spec = write_shards(root, args.images, args.per_shard)
        print(f"wrote {args.images} images in {time.perf_counter() - start:.0f} s")
        stream(spec, args.workers, args.batch_size, args.chunk_size, root)
        compare = min(args.images, args.compare or 100_000)
        unpack(spec, root / "unpacked", compare)
        read_alone(spec, root / "unpacked", compare)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
