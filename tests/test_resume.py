"""Resume: a run killed (SIGKILL) at random points, over a zip and over tar shards, resumed until
it finishes, gives float64 statistics bit-identical to an uninterrupted run; SIGTERM/SIGUSR1 write
a checkpoint and exit 75; a checkpoint of other options or inputs is refused with exit 2 and one
line. The uninterrupted run is checked against np.mean/np.cov of the same features."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fidkit.errors import EXIT_PREEMPTED, InputError, UsageError
from fidkit.statistics import Statistics
from fidkit.statistics.checkpoint import (Checkpoint, ChunkPlan, accumulate_chunked,
                                          default_checkpoint_path, open_checkpoint, run_identity)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from chunked_child import DIMS, fake_batches  # noqa: E402
from process_helpers import one_thread_env, png_bytes, write_png_shards  # noqa: E402

N = 150
pytestmark = pytest.mark.filterwarnings("ignore::fidkit.statistics.statsio.ProvenanceWarning")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("resume")
    images = np.random.default_rng(11).integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    with zipfile.ZipFile(root / "set.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i, image in enumerate(images):
            zf.writestr(f"img/{i:04d}.png", png_bytes(image))
    return {"zip": str(root / "set.zip"), "tar": write_png_shards(root, images, 5, b"3")}


def _child(spec: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "chunked_child.py"), spec, str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=one_thread_env())


def _finish(spec: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "chunked_child.py"), spec, str(out), *extra],
                          capture_output=True, text=True, env=one_thread_env(), timeout=300)


OPTIONS = ("--batch-size", "4", "--chunk-size", "12", "--seconds", "0.05", "--sleep", "0.06")


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> dict[str, Statistics]:
    out = {}
    for kind, spec in inputs.items():
        path = tmp_path_factory.mktemp(f"whole-{kind}") / "ref.pkl"
        done = _finish(spec, path, *OPTIONS)
        assert done.returncode == 0, done.stderr
        out[kind] = Statistics.load(str(path))
    return out


def test_uninterrupted_run_equals_numpy_of_the_same_features(inputs, uninterrupted):
    from fidkit.sources.archives import open_archive_source

    for kind, spec in inputs.items():
        source = open_archive_source(spec)
        # The features as the chunks batch them (chunks of 12 = 3 batches of 4), stacked.
        feats = np.concatenate([b.features for start in range(0, N, 12)
                                for b in fake_batches()(_Range(source, start, min(N, start + 12)), 4)])
        got = uninterrupted[kind]
        x = feats.astype(np.float64)
        assert got.n == N
        assert np.abs(got.mu - x.mean(0)).max() <= 1e-15 * np.abs(x).max()
        assert np.abs(got.sigma - np.cov(x, rowvar=False)).max() <= 1e-13 * np.abs(np.cov(x, rowvar=False)).max()


class _Range:
    def __init__(self, source, start, stop):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self):
        return self.stop - self.start

    def load(self, i):
        return self.source.load(self.start + i)

    def item_name(self, i):
        return self.source.item_name(self.start + i)


def _lines(log: Path) -> int:
    try:
        return len(log.read_text().split())
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_sigkill_at_random_points_then_resume_is_bit_identical(kind, inputs, uninterrupted, tmp_path):
    out = tmp_path / "ref.pkl"
    rng = random.Random(hash(kind) & 0xFFFF)
    log = tmp_path / "ref.pkl.rank0.log"
    kills = 0
    for attempt in range(40):
        # The kill point is measured in work, not wall time, so it lands inside the run on a slow
        # machine and a fast one alike: after a random number of batches of this attempt, plus a
        # random part of the next batch (which may be a checkpoint write).
        before = _lines(log)
        child = _child(inputs[kind], out, *OPTIONS)
        target = before + rng.randint(1, 8)
        deadline = time.monotonic() + 120
        while child.poll() is None and _lines(log) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.08))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        _, err = child.communicate()
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
        if out.exists():  # killed between writing OUT and removing the checkpoint: OUT is whole
            written = Statistics.load(str(out))
            assert np.array_equal(written.sigma, uninterrupted[kind].sigma)
    else:
        pytest.fail("never finished")
    assert kills >= 2, "the kills did not land inside the run; the test proves nothing"
    computed = sum(int(line) for rank_log in tmp_path.glob("ref.pkl.rank*.log")
                   for line in rank_log.read_text().split())
    assert computed >= N  # every image was computed at least once, some more than once
    got = Statistics.load(str(out))
    want = uninterrupted[kind]
    assert got.n == want.n == N
    assert np.array_equal(got.mu, want.mu) and np.array_equal(got.sigma, want.sigma)
    assert not default_checkpoint_path(out).exists()  # removed after the final file


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_writes_a_checkpoint_and_exits_75(signame, inputs, uninterrupted, tmp_path):
    out = tmp_path / "ref.pkl"
    folder = default_checkpoint_path(out)
    child = _child(inputs["tar"], out, "--batch-size", "4", "--chunk-size", "12", "--sleep", "0.05")
    deadline = time.monotonic() + 120
    while not (folder / "prefix.npz").exists():
        assert child.poll() is None, child.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.12)  # into the next chunk
    child.send_signal(getattr(signal, signame))
    _, err = child.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert child.returncode == EXIT_PREEMPTED == 75
    assert len(lines) == 1 and lines[0].startswith(f"fidkit: error: stopped by {signame}")
    assert str(folder) in lines[0] and "run the same command again" in lines[0]
    assert list(folder.glob("chunk-*.partial.npz")), "the chunk in progress was not saved"
    done = _finish(inputs["tar"], out, "--batch-size", "4", "--chunk-size", "12")
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stdout and "resumed 0" not in done.stdout
    got, want = Statistics.load(str(out)), uninterrupted["tar"]
    assert np.array_equal(got.mu, want.mu) and np.array_equal(got.sigma, want.sigma)


def test_checkpoint_of_other_options_or_inputs_is_refused(inputs, tmp_path):
    out = tmp_path / "ref.pkl"
    child = _child(inputs["zip"], out, "--batch-size", "4", "--chunk-size", "12", "--sleep", "0.05")
    folder = default_checkpoint_path(out)
    deadline = time.monotonic() + 120
    while not (folder / "prefix.npz").exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == EXIT_PREEMPTED
    before = sorted(p.name for p in folder.iterdir())
    for extra, says in ((("--tag", "other-convention"), "convention fake there, other-convention here"),
                        (("--chunk-size", "24"), "chunk_size 12 there, 24 here"),
                        (("--batch-size", "6", "--chunk-size", "12"), "batch_size 4 there, 6 here")):
        run = _finish(inputs["zip"], out, *(["--batch-size", "4", "--chunk-size", "12"] + list(extra)))
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2, run.stderr
        assert len(lines) == 1 and says in lines[0] and f"delete {folder}" in lines[0], lines
    run = _finish(inputs["tar"], out, "--batch-size", "4", "--chunk-size", "12")
    assert run.returncode == 2 and "another input" in run.stderr and len(run.stderr.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == before  # untouched
    assert not out.exists()


# ------------------------------------------------------------------------------ in-process units

class _Array:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def load(self, i):
        return self.images[i]

    def item_name(self, i):
        return f"item{i}"

    def describe(self):
        return {"kind": "test", "n": len(self.images)}


def _identity(source, **change):
    fields = dict(source=source.describe(), extractor="fake", dims=DIMS, convention="fake",
                  weights_sha256="none", network="fake", device_type="cpu", batch_size=4,
                  chunk_size=8)
    fields.update(change)
    return run_identity(**fields)


def test_chunked_equals_a_fold_of_chunks_done_by_hand(tmp_path):
    from fidkit.statistics import StatisticsAccumulator

    images = np.random.default_rng(5).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    source = _Array(images)
    plan = ChunkPlan.make(len(source), 4, 8)
    got = accumulate_chunked(source, fake_batches(), plan, DIMS).accumulator
    # By hand: one accumulator per chunk of 8 (batches of 4 from its start), merged in order.
    total = StatisticsAccumulator(DIMS)
    for start in range(0, 30, 8):
        chunk = StatisticsAccumulator(DIMS)
        for batch in fake_batches()(_Array(images[start:start + 8]), 4):
            chunk.update(batch.features.astype(np.float64))
        total.merge(chunk)
    assert got.n == total.n == 30
    assert np.array_equal(got.mean, total.mean) and np.array_equal(got.m2, total.m2)


def test_plan_rules():
    assert ChunkPlan.make(100, 16).chunk_size == 10_000
    assert ChunkPlan.make(100, 48).chunk_size == 10_032  # rounded up to whole batches
    with pytest.raises(UsageError, match="multiple of the batch size"):
        ChunkPlan.make(100, 16, 100)
    plan = ChunkPlan.make(23, 2, 4)
    assert plan.chunks == 6 and plan.bounds(5) == (20, 23)
    remaining = [0, 2, 3, 5]
    blocks = [plan.assign(remaining, r, 3) for r in range(3)]
    assert sum(blocks, []) == remaining and all(blocks)


def test_damaged_or_foreign_checkpoint_files_are_refused(tmp_path):
    images = np.random.default_rng(6).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    source = _Array(images)
    plan = ChunkPlan.make(20, 4, 8)
    folder = tmp_path / "ck"
    checkpoint = open_checkpoint(folder, _identity(source), plan, DIMS)
    accumulate_chunked(source, fake_batches(), plan, DIMS, checkpoint=checkpoint)
    prefix = folder / "prefix.npz"
    # another run's state file dropped in
    other = open_checkpoint(tmp_path / "other", _identity(source, convention="x"), plan, DIMS)
    accumulate_chunked(source, fake_batches(), plan, DIMS, checkpoint=other)
    os.replace(tmp_path / "other" / "prefix.npz", prefix)
    with pytest.raises(UsageError, match="belongs to another run"):
        Checkpoint.open(folder, _identity(source), plan, DIMS).done()
    prefix.write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged checkpoint file"):
        Checkpoint.open(folder, _identity(source), plan, DIMS).done()
    # a pickle in disguise is never unpickled
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    os.replace(tmp_path / "evil.npy", prefix)
    with pytest.raises(InputError, match="damaged checkpoint file"):
        Checkpoint.open(folder, _identity(source), plan, DIMS).done()
    (folder / "checkpoint.json").write_text("{")
    with pytest.raises(UsageError, match="damaged checkpoint header"):
        Checkpoint.open(folder, _identity(source), plan, DIMS)
    (folder / "checkpoint.json").unlink()
    with pytest.raises(UsageError, match="not a fidkit checkpoint"):
        Checkpoint.open(folder, _identity(source), plan, DIMS)  # other files, no header
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not a fidkit checkpoint"):
        Checkpoint.open(busy, _identity(source), plan, DIMS)
    Checkpoint(busy, _identity(source), plan, DIMS).remove()
    assert (busy / "thesis.tex").read_text() == "precious"  # remove() deletes only its own files


def test_skipped_items_are_recorded_across_a_resume(tmp_path):
    from fidkit.errors import BadImageError

    images = np.random.default_rng(8).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)

    class Broken(_Array):
        def load(self, i):
            if i in (3, 13):
                raise BadImageError(f"item{i}: broken")
            return self.images[i]

    source = Broken(images)
    plan = ChunkPlan.make(20, 4, 8)
    before = signal.getsignal(signal.SIGTERM)
    import chunked_child

    chunked_child._skip_bad = True
    try:
        whole = accumulate_chunked(source, fake_batches(), plan, DIMS)
        folder = tmp_path / "ck"
        checkpoint = open_checkpoint(folder, _identity(source), plan, DIMS)
        calls = []

        def stop_after_two_batches(sub, batch_size):
            for k, batch in enumerate(fake_batches()(sub, batch_size)):
                calls.append(k)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

        from fidkit.errors import PreemptedError

        with pytest.raises(PreemptedError, match="stopped by SIGTERM"):
            accumulate_chunked(source, stop_after_two_batches, plan, DIMS, checkpoint=checkpoint,
                               checkpoint_seconds=1e9)
        resumed = accumulate_chunked(source, fake_batches(), plan, DIMS,
                                     checkpoint=open_checkpoint(folder, _identity(source), plan, DIMS))
    finally:
        chunked_child._skip_bad = False
    assert resumed.resumed == 1 and resumed.computed == 2
    assert [s[:2] for s in resumed.skipped] == [[3, "item3"], [13, "item13"]] == [s[:2] for s in whole.skipped]
    assert np.array_equal(resumed.accumulator.m2, whole.accumulator.m2)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_report_batches_maps_the_runner_contract(tmp_path):
    """The adapter from the runner's (outputs, report.used, report.skipped) contract: used
    positions per batch, skipped items back to their positions, trailing all-bad batches."""
    from fidkit.statistics.checkpoint import report_batches

    images = np.random.default_rng(9).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    bad = {2, 8, 9}

    def run(source, batch_size, report):
        for start in range(0, len(source), batch_size):
            window = range(start, min(len(source), start + batch_size))
            good = [i for i in window if i not in bad]
            report.skipped.extend((source.item_name(i), "broken") for i in window if i in bad)
            if good:
                report.used.extend(good)
                yield {"tap": np.stack([source.load(i)[0, 0].astype(np.float32) for i in good])}

    got = list(report_batches(run, "tap")(_Array(images), 4))
    assert [b.positions for b in got] == [[0, 1, 3], [4, 5, 6, 7], []]
    assert [[s[0] for s in b.skipped] for b in got] == [[2], [], [8, 9]]
    assert np.array_equal(got[1].features[0], images[4][0, 0].astype(np.float32))


def test_a_run_that_ends_before_any_write_leaves_no_folder(tmp_path):
    images = np.random.default_rng(10).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    source = _Array(images)
    plan = ChunkPlan.make(6, 4, 8)
    checkpoint = open_checkpoint(tmp_path / "ck", _identity(source), plan, DIMS)
    plain = accumulate_chunked(source, fake_batches(), plan, DIMS)
    got = accumulate_chunked(source, fake_batches(), plan, DIMS, checkpoint=checkpoint)
    assert not (tmp_path / "ck").exists()  # nothing written: one chunk, no signal
    assert np.array_equal(got.accumulator.m2, plain.accumulator.m2)
    checkpoint.remove()  # a no-op


def test_features_on_a_card_accumulate_there_and_resume_bit_for_bit(tmp_path, monkeypatch):
    """The card path (batch moments formed where the features are, a resumed partial state moved
    there first), exercised here with CPU torch tensors standing in for CUDA ones: interrupted
    and resumed equals uninterrupted bit for bit, and both equal the host path to rounding."""
    import torch

    from fidkit.errors import PreemptedError
    from fidkit.statistics import checkpoint as ck

    images = np.random.default_rng(12).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    source = _Array(images)
    plan = ChunkPlan.make(20, 4, 8)

    def torch_batches(sub, batch_size):
        for batch in fake_batches()(sub, batch_size):
            yield ck.Batch(batch.positions, torch.from_numpy(batch.features), batch.skipped)

    host = accumulate_chunked(source, fake_batches(), plan, DIMS).accumulator
    monkeypatch.setattr(ck, "_on_device", lambda features: isinstance(features, torch.Tensor))
    whole = accumulate_chunked(source, torch_batches, plan, DIMS).accumulator
    folder = tmp_path / "ck"
    calls = []

    def stop_in_the_second_chunk(sub, batch_size):
        for batch in torch_batches(sub, batch_size):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    with pytest.raises(PreemptedError):
        accumulate_chunked(source, stop_in_the_second_chunk, plan, DIMS, checkpoint_seconds=1e9,
                           checkpoint=open_checkpoint(folder, _identity(source), plan, DIMS))
    assert (folder / "chunk-00000001.partial.npz").exists()
    resumed = accumulate_chunked(source, torch_batches, plan, DIMS,
                                 checkpoint=open_checkpoint(folder, _identity(source), plan, DIMS))
    assert resumed.resumed == 1
    n, mean, m2 = resumed.accumulator.state()
    assert n == whole.n == 20
    assert np.array_equal(np.asarray(mean), np.asarray(whole.state()[1]))
    assert np.array_equal(np.asarray(m2), np.asarray(whole.state()[2]))
    assert np.abs(np.asarray(m2) - host.m2).max() <= 1e-12 * np.abs(host.m2).max()
