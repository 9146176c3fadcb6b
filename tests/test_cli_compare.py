"""`fidkit stats` / `fidkit compare`: folder vs stats file, JSON, provenance refusals and --force.

Most cases call the CLI's ``main`` in-process (the network is cached between them) at the cheap
64-dim tap; one runs the real console entry point in a subprocess for the exit-code plumbing.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fidkit.cli import main
from fidkit.errors import EXIT_MISMATCH, EXIT_USAGE


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from conftest import make_images, write_folder

    root = tmp_path_factory.mktemp("cli")
    return (write_folder(root / "a", make_images(6, (48, 48), seed=1)),
            write_folder(root / "b", make_images(6, (48, 48), seed=2)))


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory, test_weights):
    state = torch.load(test_weights, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1e-3  # a different file, same architecture
    path = tmp_path_factory.mktemp("w2") / "other.pth"
    torch.save(state, path)
    return path


def run_json(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def common(test_weights):
    return ["--weights", str(test_weights), "--workers", "0", "--dims", "64"]


def test_folder_vs_stats_equals_folder_vs_folder(folders, test_weights, tmp_path, capsys):
    a, b = folders
    ref = tmp_path / "ref.pkl"
    assert main(["stats", str(b), "-o", str(ref), *common(test_weights)]) == 0
    capsys.readouterr()
    code, direct, _ = run_json(capsys, "compare", str(a), str(b), "--json", *common(test_weights))
    assert code == 0
    code, via_file, err = run_json(capsys, "compare", str(a), str(ref), "--json", *common(test_weights))
    assert code == 0
    assert via_file["fid"] == pytest.approx(direct["fid"], rel=1e-12, abs=0)
    assert direct["fid"] > 0
    # Independent check: the Frechet distance recomputed from the saved statistics with scipy.
    from scipy import linalg

    from fidkit.statistics.statsio import load_statistics

    sb = load_statistics(ref)
    sa = __import__("fidkit").compute_statistics(a, dims=64, weights=str(test_weights), workers=0,
                                                 progress=False)
    covmean = linalg.sqrtm(sa.sigma @ sb.sigma).real
    expected = float(((sa.mu - sb.mu) ** 2).sum() + np.trace(sa.sigma) + np.trace(sb.sigma)
                     - 2 * np.trace(covmean))
    assert direct["fid"] == pytest.approx(expected, rel=1e-6)
    # Provenance of both sides is in the JSON, and non-canonical weights are flagged.
    assert direct["generated"]["meta"]["convention"] == "tf1"
    assert direct["reference"]["meta"]["dims"] == 64
    assert direct["generated"]["meta"]["weights"]["canonical"] is False
    assert direct["generated"]["input"] == str(a) and direct["reference"]["input"] == str(b)
    assert direct["metrics"]["fid"]["extractor"] == "inception"
    assert direct["metrics"]["fid"]["n_generated"] == direct["metrics"]["fid"]["n_reference"] == 6
    assert any("NON-canonical" in w for w in direct["warnings"])
    assert "NON-canonical" in err


def test_stats_file_records_provenance_and_non_canonical(folders, test_weights, tmp_path, capsys):
    a, _ = folders
    out = tmp_path / "a.npz"
    assert main(["stats", str(a), "-o", str(out), *common(test_weights)]) == 0
    _, err = capsys.readouterr()
    assert "NON-canonical" in err
    with np.load(out, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        assert f["mu"].shape == (64,)
    assert meta["weights"]["canonical"] is False and meta["n"] == 6
    assert meta["source"]["files"] == 6 and len(meta["source"]["list_sha256"]) == 64


def test_existing_output_is_not_overwritten(folders, test_weights, tmp_path, capsys):
    a, _ = folders
    out = tmp_path / "keep.pkl"
    out.write_bytes(b"precious")
    assert main(["stats", str(a), "-o", str(out), *common(test_weights)]) == EXIT_USAGE
    _, err = capsys.readouterr()
    assert "--overwrite" in err and out.read_bytes() == b"precious"


def test_convention_mismatch_refused_then_forced(folders, test_weights, tmp_path, capsys):
    a, b = folders
    ref = tmp_path / "ref_tf1.pkl"
    main(["stats", str(b), "-o", str(ref), *common(test_weights)])
    capsys.readouterr()
    code, _, err = run_json(capsys, "compare", str(a), str(ref), "--convention", "pytorch-fid",
                            *common(test_weights))
    assert code == EXIT_MISMATCH
    line = err.strip()
    assert "\n" not in line and "convention differs" in line
    assert "pytorch-fid" in line and "tf1" in line and "%" in line and "--force" in line
    code, result, err = run_json(capsys, "compare", str(a), str(ref), "--convention", "pytorch-fid",
                                 "--force", "--json", *common(test_weights))
    assert code == 0 and result["fid"] > 0
    assert any("convention differs" in w for w in result["warnings"])


def test_dims_mismatch_refused(folders, test_weights, tmp_path, capsys):
    a, b = folders
    ref = tmp_path / "ref64.pkl"
    main(["stats", str(b), "-o", str(ref), *common(test_weights)])
    capsys.readouterr()
    args = ["--weights", str(test_weights), "--workers", "0", "--dims", "192"]
    code, _, err = run_json(capsys, "compare", str(a), str(ref), *args)
    assert code == EXIT_MISMATCH and "192" in err and "64" in err and "--dims" in err


def test_weights_mismatch_refused(folders, test_weights, other_weights, tmp_path, capsys):
    a, b = folders
    ref = tmp_path / "ref_w.pkl"
    main(["stats", str(b), "-o", str(ref), *common(test_weights)])
    capsys.readouterr()
    args = ["--weights", str(other_weights), "--workers", "0", "--dims", "64"]
    code, _, err = run_json(capsys, "compare", str(a), str(ref), *args)
    assert code == EXIT_MISMATCH and "weights differ" in err


def test_unknown_provenance_refused_then_forced(folders, test_weights, tmp_path, capsys):
    a, b = folders
    ref = tmp_path / "ref.pkl"
    main(["stats", str(b), "-o", str(ref), *common(test_weights)])
    capsys.readouterr()
    from fidkit.statistics.statsio import load_statistics

    s = load_statistics(ref)
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=s.mu, sigma=s.sigma)  # what pytorch-fid --save-stats writes
    code, _, err = run_json(capsys, "compare", str(a), str(plain), *common(test_weights))
    assert code == EXIT_MISMATCH and "unknown" in err and "--force" in err
    code, forced, _ = run_json(capsys, "compare", str(a), str(plain), "--force", "--json",
                               *common(test_weights))
    code2, known, _ = run_json(capsys, "compare", str(a), str(ref), "--json", *common(test_weights))
    assert code == 0 and code2 == 0
    assert forced["fid"] == pytest.approx(known["fid"], rel=1e-12)


def test_console_script_exit_codes(folders, test_weights, tmp_path):
    a, _ = folders
    env_cmd = [sys.executable, "-m", "fidkit"]
    missing = subprocess.run(env_cmd + ["compare", str(tmp_path / "nope"), str(a),
                                        *common(test_weights)], capture_output=True, text=True)
    assert missing.returncode == EXIT_USAGE
    assert missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    # A missing B is reported before A is computed (no weights needed: exit 2, not 3).
    late = subprocess.run(env_cmd + ["compare", str(a), str(tmp_path / "gone.pkl")],
                          capture_output=True, text=True)
    assert late.returncode == EXIT_USAGE and "gone.pkl does not exist" in late.stderr
    usage = subprocess.run(env_cmd + ["compare", str(a)], capture_output=True, text=True)
    assert usage.returncode == EXIT_USAGE and "Traceback" not in usage.stderr
