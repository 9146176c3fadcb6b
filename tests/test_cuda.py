"""The pipeline on a CUDA card: fp32 numerics whatever TF32 setting the caller left, the streaming
metric and the folder path give the CPU's numbers, the metric's state stays on the card, and the
nccl path of the distributed merge.

These need a CUDA device and are skipped without one (the CI machines have none); they were run
on the lent H200/H100 machine (benchmarks/RESULTS.md, "GPU"). Truth is the same network in
float64 on the CPU, or the CPU path itself.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images, write_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TAPS = ("64", "192", "768", "2048")


def rel(a, b) -> float:
    a = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def batch():
    from fidkit.extractors.weights import synthetic_images

    return synthetic_images(16, size=256, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def float64_truth(test_weights, batch):
    from fidkit.extractors.runner import load_model
    from fidkit.preprocess import get_convention

    model, _ = load_model(str(test_weights), outputs=TAPS, device="cpu", progress=False)
    x = get_convention("tf1").prepare(batch.float())
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(x.double())
        plain = model(x)
    return x, truth, {t: rel(plain[t], truth[t]) for t in TAPS}


@pytest.fixture
def tf32_on():
    """TF32 switched on globally, as many training scripts leave it; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("fast", [False, True])
def test_cuda_features_are_fp32_even_when_tf32_is_on(test_weights, float64_truth, tf32_on, fast):
    from fidkit.extractors.runner import fast_layout, fp32_numerics, inference_copy, load_model

    x, truth, cpu_err = float64_truth
    model, _ = load_model(str(test_weights), outputs=TAPS, device="cuda", progress=False)
    network = inference_copy(model) if fast else model
    xc = x.cuda().contiguous(memory_format=fast_layout("cuda") if fast else torch.contiguous_format)
    with torch.no_grad():
        raw = network(xc)  # TF32 as the caller left it: on
        with fp32_numerics():
            guarded = network(xc)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, "not restored"
    for tap in TAPS:
        err = rel(guarded[tap], truth[tap])
        # fp32 on the card is as close to float64 as fp32 on the CPU (within 3x, or 2e-5 of scale)
        assert err <= max(2e-5, 3 * cpu_err[tap]), f"{tap}: {err:.2e} (cpu fp32 {cpu_err[tap]:.2e})"
    # and the check can fail: with TF32 left on, pool_3 is an order of magnitude further off
    assert rel(raw["2048"], truth["2048"]) > 10 * rel(guarded["2048"], truth["2048"])
    model.outputs = ("2048",)


def test_cuda_metric_matches_cpu_and_keeps_state_on_card(test_weights, batch, tf32_on):
    options = dict(dims=2048, weights=test_weights, kid=True, inception_score=True,
                   kid_subset_size=6, kid_subsets=4, is_splits=2, seed=3)
    fake, real = batch[:8], batch[8:]
    results, stats = {}, {}
    for device in ("cuda", "cpu"):
        metric = fidkit.FID(device=device, **options)
        for half in (fake[:4], fake[4:]):
            metric.update(half.to(device))
        metric.update(real.to(device), real=True)
        if device == "cuda":
            n, mean, m2 = metric._acc[False].state()
            assert mean.device.type == "cuda" and m2.device.type == "cuda" and m2.dtype == torch.float64
        results[device] = metric.compute_all()
        stats[device] = metric.statistics()
    assert rel(stats["cuda"].mu, stats["cpu"].mu) <= 1e-4
    assert rel(stats["cuda"].sigma, stats["cpu"].sigma) <= 5e-4
    for key in ("fid", "kid", "is"):
        a, b = results["cuda"][key], results["cpu"][key]
        a, b = (a.mean, b.mean) if hasattr(a, "mean") else (a, b)
        assert abs(a - b) <= 1e-3 * max(abs(b), 1e-3), f"{key}: cuda {a} vs cpu {b}"


@pytest.mark.parametrize("convention", ["tf1", "clean"])
def test_cuda_folder_statistics_match_cpu(test_weights, tmp_path, tf32_on, convention):
    """Mixed sizes in one batch: tf1 is resized on the card by size group, clean per image by PIL
    in the threads; both give the CPU's statistics."""
    from PIL import Image

    write_folder(tmp_path / "a", make_images(9, (96, 80), seed=21))
    for k, img in enumerate(make_images(3, (64, 64), seed=22)):
        Image.fromarray(img).save(tmp_path / "a" / f"small_{k}.png")
    kwargs = dict(dims=2048, weights=str(test_weights), cache=False, progress=False, workers=2,
                  convention=convention)
    on_card = fidkit.compute_statistics(tmp_path / "a", device="cuda", batch_size=5, **kwargs)
    on_cpu = fidkit.compute_statistics(tmp_path / "a", device="cpu", **kwargs)
    assert on_card.n == on_cpu.n == 12
    assert rel(on_card.mu, on_cpu.mu) <= 1e-4
    assert rel(on_card.sigma, on_cpu.sigma) <= 5e-4
    distance = fidkit.frechet_distance(on_card.mu, on_card.sigma, on_cpu.mu, on_cpu.sigma)
    assert distance <= 1e-6 * float(np.trace(on_cpu.sigma))


def test_cuda_exact_path_matches_pytorch_fid_on_card(test_weights, batch):
    pfi = pytest.importorskip("pytorch_fid.inception")
    from fidkit.extractors.runner import fp32_numerics, load_model
    from fidkit.preprocess import get_convention

    state = torch.load(test_weights, weights_only=True)
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        peer = pfi.InceptionV3([3]).eval().cuda()
    finally:
        pfi.load_state_dict_from_url = original
    model, _ = load_model(str(test_weights), outputs=("2048",), device="cuda", progress=False)
    images = batch.cuda()
    with torch.no_grad(), fp32_numerics():
        theirs = peer(images.float() / 255)[0].flatten(1)
        ours = model(get_convention("pytorch-fid").prepare(images.float()))["2048"]
    assert rel(ours, theirs) <= 1e-5


NCCL_SCRIPT = textwrap.dedent("""
    import pickle, sys, torch, torch.distributed as dist, fidkit
    weights, init, out = sys.argv[1:4]
    dist.init_process_group("nccl", init_method="file://" + init, rank=0, world_size=1)
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(5)
    fake = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    real = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    m = fidkit.FID(dims=64, weights=weights, device="cuda", kid=True, kid_subset_size=4,
                   kid_subsets=3)
    m.update(fake.cuda()); m.update(real.cuda(), real=True)
    result = m.compute_all()
    dist.destroy_process_group()
    alone = fidkit.FID(dims=64, weights=weights, device="cuda", kid=True, kid_subset_size=4,
                       kid_subsets=3)
    alone.update(fake.cuda()); alone.update(real.cuda(), real=True)
    with open(out, "wb") as f:
        pickle.dump((result["fid"], result["kid"].mean, alone.compute_all()["fid"],
                     alone.compute_all()["kid"].mean), f)
""")


def test_nccl_process_group_merges_like_one_process(test_weights, tmp_path):
    import pickle

    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch has no nccl")
    script = tmp_path / "rank.py"
    script.write_text(NCCL_SCRIPT)
    out = tmp_path / "out.pkl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(script), str(test_weights), str(tmp_path / "init"),
                           str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    fid_dist, kid_dist, fid_alone, kid_alone = pickle.loads(out.read_bytes())
    assert fid_dist == pytest.approx(fid_alone, rel=1e-9)
    assert kid_dist == pytest.approx(kid_alone, rel=1e-6, abs=1e-9)


def test_cuda_nan_batch_is_reported_one_step_late_and_left_out():
    """On the card the NaN check is read at the next update (the host never waits for the card);
    the bad batch is left out and the others give the float64 statistics of the good rows."""
    from fidkit.errors import InputError
    from fidkit.statistics import StatisticsAccumulator

    rng = np.random.default_rng(9)
    good1, good2 = rng.normal(size=(5, 6)), rng.normal(size=(4, 6))
    bad = rng.normal(size=(3, 6))
    bad[2, 1] = np.inf
    acc = StatisticsAccumulator()
    acc.update(torch.from_numpy(good1).cuda())
    acc.update(torch.from_numpy(bad).cuda())
    with pytest.raises(InputError, match="after 5 good ones"):
        acc.update(torch.from_numpy(good2).cuda())
    stats = acc.statistics()
    kept = np.concatenate([good1, good2])
    assert stats.n == 9
    assert np.allclose(stats.sigma, np.cov(kept, rowvar=False), rtol=1e-12, atol=1e-14)
