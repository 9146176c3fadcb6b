"""FD-DINOv2 through the three doors — the command line, ``fidkit.compare`` and the streaming
``fidkit.FID(features=...)`` — gives one number (to 1e-10), and DINOv2 statistics are refused
against Inception statistics (exit 4, one line)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fidkit
from conftest import make_images, write_folder
from fidkit.cli import main

NAME = "dinov2-vit-s-14"
BATCH = 4


@pytest.fixture(scope="module")
def dinov2_weights(tmp_path_factory):
    from fidkit.extractors import get_extractor

    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_test.pth"
    get_extractor(NAME).make_test_weights(path, seed=0)
    return path


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    root = tmp_path_factory.mktemp("fd")
    gen, ref = make_images(8, (64, 48), seed=51), make_images(8, (64, 48), seed=52)
    return (write_folder(root / "gen", gen), gen), (write_folder(root / "ref", ref), ref)


def test_cli_api_and_streaming_metric_agree(sides, dinov2_weights, capsys):
    (gen_dir, gen), (ref_dir, ref) = sides
    common = dict(features=NAME, weights=str(dinov2_weights), device="cpu", batch_size=BATCH)
    code = main(["compare", str(gen_dir), str(ref_dir), "--features", NAME, "--weights",
                 str(dinov2_weights), "--batch-size", str(BATCH), "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    cli = json.loads(out)
    assert cli["metrics"]["fid"]["extractor"] == NAME and cli["generated"]["meta"]["dims"] == 384
    api = fidkit.compare(gen_dir, ref_dir, workers=0, progress=False, **common).values["fid"]
    metric = fidkit.FID(features=NAME, weights=str(dinov2_weights), device="cpu")
    for images, real in ((gen, False), (ref, True)):
        batch = torch.from_numpy(images).permute(0, 3, 1, 2)
        for start in range(0, len(batch), BATCH):
            metric.update(batch[start:start + BATCH], real=real)
    streamed = metric.compute()
    assert cli["fid"] > 0
    assert api == pytest.approx(cli["fid"], rel=1e-10, abs=0)
    assert streamed == pytest.approx(cli["fid"], rel=1e-10, abs=0)
    # Independent: from the centred feature rows X_a, X_b (n < d, so the covariances are
    # singular and scipy's sqrtm is unreliable): tr sqrt(S_a S_b) is the nuclear norm of
    # X_a X_b^T / (n - 1), in float64 by numpy's SVD.
    feats = [fidkit.extract_features(d, workers=0, progress=False, **common).features.astype(np.float64)
             for d in (gen_dir, ref_dir)]
    centred = [f - f.mean(0) for f in feats]
    scale = len(feats[0]) - 1
    cross = np.linalg.svd(centred[0] @ centred[1].T / scale, compute_uv=False).sum()
    expected = ((feats[0].mean(0) - feats[1].mean(0)) ** 2).sum() \
        + sum((c ** 2).sum() / scale for c in centred) - 2 * cross
    assert cli["fid"] == pytest.approx(expected, rel=1e-9)


def test_dinov2_statistics_refused_against_inception(sides, dinov2_weights, test_weights,
                                                     tmp_path, capsys):
    (gen_dir, _), (ref_dir, _) = sides
    a, b = tmp_path / "dino.pkl", tmp_path / "incep.pkl"
    assert main(["stats", str(gen_dir), "-o", str(a), "--features", NAME, "--weights",
                 str(dinov2_weights), "--device", "cpu"]) == 0
    assert main(["stats", str(ref_dir), "-o", str(b), "--weights", str(test_weights),
                 "--dims", "768", "--device", "cpu"]) == 0
    capsys.readouterr()
    code = main(["compare", str(a), str(b)])
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1
    assert NAME in err and "inception" in err
