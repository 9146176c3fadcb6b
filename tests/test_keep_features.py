"""``fidkit stats --keep-features``: a reference computed once serves every metric. The kept
per-image features (memory-mapped, same provenance) give the same KID, density/coverage and CMMD
as recomputing the reference from its images, and those equal the peers' on the same arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_images, write_folder
from fidkit.cli import main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    return (write_folder(root / "gen", make_images(12, (40, 40), seed=41)),
            write_folder(root / "ref", make_images(14, (40, 40), seed=42)))


def _json(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_kept_features_serve_kid_and_dc_like_the_images(folders, test_weights, tmp_path, capsys):
    import prdc

    from fidkit.statistics.featurestore import open_features

    gen, ref = folders
    common = ["--weights", str(test_weights), "--workers", "0", "--dims", "64"]
    out = tmp_path / "ref.pkl"
    assert main(["stats", str(ref), "-o", str(out), "--keep-features", *common]) == 0
    capsys.readouterr()
    stored = open_features(tmp_path / "ref.features")
    assert isinstance(stored.features, np.memmap) and stored.features.shape == (14, 64)
    assert stored.meta["extractor"] == "inception" and stored.meta["n"] == 14
    metrics = ["--metrics", "fid,kid,dc", "--features", "inception", "--json"]
    from_images = _json(capsys, "compare", str(gen), str(ref), *metrics, *common)
    from_file = _json(capsys, "compare", str(gen), str(out), *metrics, *common)
    for key in ("fid", "kid", "dc"):
        assert from_file[key] == pytest.approx(from_images[key], rel=1e-12, abs=1e-15)
    assert from_file["metrics"]["dc"]["k"] == 5
    assert from_file["metrics"]["dc"]["n_reference"] == 14
    # Independent: prdc on the same arrays (its strict '<' is density/coverage's convention).
    import fidkit

    gen_features = fidkit.extract_features(gen, dims=64, weights=str(test_weights), workers=0,
                                           progress=False).features
    expected = prdc.compute_prdc(np.asarray(stored.features, dtype=np.float64),
                                 gen_features.astype(np.float64), nearest_k=5)
    assert from_file["dc"]["density"] == pytest.approx(expected["density"], abs=1e-9)
    assert from_file["dc"]["coverage"] == pytest.approx(expected["coverage"], abs=1e-9)


def test_without_kept_features_a_stats_file_serves_fid_only(folders, test_weights, tmp_path,
                                                             capsys):
    gen, ref = folders
    common = ["--weights", str(test_weights), "--workers", "0", "--dims", "64"]
    out = tmp_path / "plain.pkl"
    assert main(["stats", str(ref), "-o", str(out), *common]) == 0
    capsys.readouterr()
    code = main(["compare", str(gen), str(out), "--metrics", "kid", *common])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--keep-features" in err


def test_cmmd_through_compare_equals_the_formula(folders, test_weights, capsys):
    """CMMD on the FID Inception's features (--features overrides CLIP) against a direct float64
    evaluation of the reference estimator on the L2-normalised rows."""
    import fidkit

    gen, ref = folders
    report = fidkit.compare(gen, ref, metrics=("cmmd",), features="inception", dims=64,
                            weights=str(test_weights), workers=0, progress=False)
    a, b = (fidkit.extract_features(f, dims=64, weights=str(test_weights), workers=0,
                                    progress=False).features.astype(np.float64) for f in (gen, ref))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    gamma = 1.0 / (2 * 10.0 ** 2)

    def k(x, y):
        return np.exp(-gamma * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    expected = 1000 * (k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())
    assert report.values["cmmd"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert report.described["cmmd"]["extractor"] == "inception"


@pytest.mark.slow
def test_precision_recall_equal_torch_fidelity_prc_on_images(folders, tmp_path, capsys):
    """``fidkit compare GEN REF --metrics pr`` with random VGG16 weights (the 528 MiB official
    layout, hence slow) against torch-fidelity's own PRC on the same folders and weights file."""
    import torch_fidelity

    from fidkit.extractors import get_extractor

    gen, ref = folders
    weights = tmp_path / "vgg16-397923af.pth"
    get_extractor("vgg16").make_test_weights(weights, seed=0)
    ours = _json(capsys, "compare", str(gen), str(ref), "--metrics", "pr", "--weights",
                 f"vgg16={weights}", "--workers", "0", "--json")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(gen), input2=str(ref), prc=True, cuda=False, cache=False, verbose=False,
        feature_extractor_weights_path=str(weights), save_cpu_ram=True)
    assert ours["metrics"]["pr"]["extractor"] == "vgg16" and ours["metrics"]["pr"]["k"] == 3
    assert ours["pr"]["precision"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert ours["pr"]["recall"] == pytest.approx(theirs["recall"], abs=1e-6)
