"""A child process for tests/test_resume.py and tests/test_multinode.py: chunked, checkpointed
statistics of an archive through a cheap feature function, with the CLI's error handling (one
line on stderr, the error's exit code), runnable alone or under torchrun.

    python tests/chunked_child.py SPEC OUT [--batch-size B] [--chunk-size K] [--seconds T]
                                  [--tag TAG] [--sleep S] [--skip-bad]

The features are deliberately batch-dependent (each image's vector is nudged by its batch's
mean) and computed by float32 BLAS, so a run that batched any chunk differently would not give
the same bits.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

DIMS = 24


def fake_batches(sleep: float = 0.0, log: str | None = None):
    """A feature function for :func:`fidkit.statistics.checkpoint.accumulate_chunked`."""
    from fidkit.errors import BadImageError
    from fidkit.statistics.checkpoint import Batch

    weights = np.random.default_rng(1234).standard_normal((16 * 16 * 3, DIMS)).astype(np.float32)

    def batches(source, batch_size):
        for start in range(0, len(source), batch_size):
            positions, rows, skipped = [], [], []
            for position in range(start, min(len(source), start + batch_size)):
                try:
                    image = source.load(position)
                except BadImageError as exc:
                    skipped.append((position, source.item_name(position), str(exc)))
                    continue
                small = image[:16, :16].astype(np.float32).reshape(-1) / 255.0
                rows.append(small)
                positions.append(position)
            if sleep:
                time.sleep(sleep)
            if log:
                with open(log, "a") as handle:
                    handle.write(f"{len(positions) + len(skipped)}\n")
            if skipped and not _skip_bad:
                raise BadImageError(skipped[0][2])
            if not rows:
                yield Batch([], np.zeros((0, DIMS), np.float32), skipped)
                continue
            features = np.tanh(np.stack(rows) @ weights)
            features = features + np.float32(1e-3) * features.mean(0)  # batch-dependent
            yield Batch(positions, features.astype(np.float32), skipped)

    return batches


_skip_bad = False


def main(argv: list[str] | None = None) -> int:
    global _skip_bad
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--tag", default="fake")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--skip-bad", action="store_true")
    args = parser.parse_args(argv)
    _skip_bad = args.skip_bad
    from fidkit.errors import FidkitError

    try:
        code = run(args)
    except FidkitError as exc:
        print(f"fidkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _leave_group()
    return code


def _leave_group() -> None:
    # Every rank leaves together: a rank that exits while a peer's gloo threads still talk to it
    # can make that peer abort (SIGABRT) at exit.
    from fidkit import distributed

    if distributed.is_active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    from fidkit import distributed
    from fidkit.sources.archives import open_archive_source
    from fidkit.statistics.checkpoint import (ChunkPlan, accumulate_chunked, default_checkpoint_path,
                                              open_checkpoint, run_identity)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    source = open_archive_source(args.spec)
    plan = ChunkPlan.make(len(source), args.batch_size, args.chunk_size)
    identity = run_identity(source=source.describe(), extractor="fake", dims=DIMS,
                            convention=args.tag, weights_sha256="none", network="fake",
                            device_type="cpu", batch_size=plan.batch_size,
                            chunk_size=plan.chunk_size)
    checkpoint = open_checkpoint(default_checkpoint_path(args.out), identity, plan, DIMS)
    log = f"{args.out}.rank{distributed.rank()}.log"
    result = accumulate_chunked(source, fake_batches(args.sleep, log), plan, DIMS,
                                checkpoint=checkpoint, checkpoint_seconds=args.seconds)
    if distributed.is_writer():
        stats = result.accumulator.statistics({"source": source.describe(),
                                               "skipped": len(result.skipped)})
        stats.save(args.out)
        checkpoint.remove()
        print(f"wrote {args.out}: {stats.n} images, computed {result.computed} chunk(s), "
              f"resumed {result.resumed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
