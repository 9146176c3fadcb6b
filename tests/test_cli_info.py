"""``fidkit info`` and ``fidkit convert``: what they print, what they refuse, what they keep."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fidkit.cli import main
from fidkit.statistics import Statistics
from fidkit.statistics.statsio import load_statistics, save_statistics

D = 12


def _stats(seed: int = 0, n: int = 100) -> Statistics:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)) @ rng.normal(size=(D, D))
    meta = {"convention": "pytorch-fid", "dims": D, "created": "2026-01-01T00:00:00+00:00",
            "weights": {"sha256": "ab" * 32, "canonical": False, "file": "w.pth"},
            "source": {"kind": "folder", "path": "imgs", "files": n}}
    return Statistics(x.mean(0), np.cov(x, rowvar=False), n, meta)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_text(tmp_path, capsys):
    stats = _stats()
    save_statistics(stats, tmp_path / "s.pkl")
    code, out, err = _run(capsys, "info", str(tmp_path / "s.pkl"))
    assert code == 0 and err == ""
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["provenance"] == "fidkit"
    assert fields["dims"] == str(D) and fields["n"] == "100"
    assert fields["convention"] == "pytorch-fid"
    assert fields["weights"].startswith("NON-canonical abab")
    assert fields["rank"] == f"{np.linalg.matrix_rank(stats.sigma)} of {D}"


def test_info_json_matches_numpy(tmp_path, capsys):
    stats = _stats(1)
    save_statistics(stats, tmp_path / "s.npz")
    code, out, _ = _run(capsys, "info", "--json", str(tmp_path / "s.npz"))
    assert code == 0
    report = json.loads(out)
    eig = np.linalg.eigvalsh(stats.sigma)
    assert report["format"] == "fidkit-npz" and report["ok"] is True
    assert report["sanity"]["min_eigenvalue"] == pytest.approx(eig[0], rel=1e-9)
    assert report["sanity"]["max_eigenvalue"] == pytest.approx(eig[-1], rel=1e-9)
    assert report["sanity"]["trace"] == pytest.approx(np.trace(stats.sigma), rel=1e-12)
    assert report["meta"]["source"] == {"kind": "folder", "path": "imgs", "files": 100}


def test_info_unknown_provenance(tmp_path, capsys):
    stats = _stats(2)
    np.savez(tmp_path / "ttur.npz", mu=stats.mu, sigma=stats.sigma)
    code, out, _ = _run(capsys, "info", "--json", str(tmp_path / "ttur.npz"))
    report = json.loads(out)
    assert code == 0 and report["provenance"] == "unknown" and report["n"] is None
    assert any("provenance unknown" in w for w in report["warnings"])


def test_info_reports_impossible_values_with_exit_2(tmp_path, capsys):
    sigma = np.diag([1.0, -0.5, 2.0])
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"mu": np.zeros(3), "sigma": sigma}))
    code, out, err = _run(capsys, "info", "--json", str(path))
    assert code == 2
    report = json.loads(out)
    assert report["ok"] is False and report["sanity"]["psd"] is False
    assert report["sanity"]["min_eigenvalue"] == pytest.approx(-0.5)
    assert len(err.strip().splitlines()) == 1 and "negative eigenvalue" in err


def test_info_hostile_pickle_one_line_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Gadget:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"mu": Gadget()}))
    code, out, err = _run(capsys, "info", str(path))
    assert code == 2 and out == ""
    assert err.startswith("fidkit: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not marker.exists()


def test_convert_round_trip_keeps_provenance(tmp_path, capsys):
    stats = _stats(3)
    save_statistics(stats, tmp_path / "a.pkl")
    assert _run(capsys, "convert", str(tmp_path / "a.pkl"), str(tmp_path / "b.npz"))[0] == 0
    assert _run(capsys, "convert", str(tmp_path / "b.npz"), str(tmp_path / "c.pkl"))[0] == 0
    back = load_statistics(tmp_path / "c.pkl")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.mu, stats.mu)
    for key in ("convention", "weights", "source", "created", "n", "dims"):
        assert back.meta[key] == load_statistics(tmp_path / "a.pkl").meta[key], key
    assert back.meta["provenance"] == "fidkit"


def test_convert_peer_file_stays_unknown(tmp_path, capsys):
    stats = _stats(4)
    np.savez(tmp_path / "ttur.npz", mu=stats.mu, sigma=stats.sigma)
    code, _, err = _run(capsys, "convert", str(tmp_path / "ttur.npz"), str(tmp_path / "out.pkl"))
    assert code == 0 and "provenance unknown" in err
    code, out, _ = _run(capsys, "info", "--json", str(tmp_path / "out.pkl"))
    assert json.loads(out)["provenance"] == "unknown"


def test_convert_never_clobbers_by_default(tmp_path, capsys):
    save_statistics(_stats(5), tmp_path / "a.pkl")
    save_statistics(_stats(6), tmp_path / "b.npz")
    before = (tmp_path / "b.npz").read_bytes()
    code, _, err = _run(capsys, "convert", str(tmp_path / "a.pkl"), str(tmp_path / "b.npz"))
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert (tmp_path / "b.npz").read_bytes() == before
    code, _, _ = _run(capsys, "convert", "--overwrite", str(tmp_path / "a.pkl"), str(tmp_path / "b.npz"))
    assert code == 0
    np.testing.assert_array_equal(load_statistics(tmp_path / "b.npz").mu, _stats(5).mu)


def test_convert_refuses_torch_output_and_same_file(tmp_path, capsys):
    save_statistics(_stats(7), tmp_path / "a.pkl")
    code, _, err = _run(capsys, "convert", str(tmp_path / "a.pkl"), str(tmp_path / "a.pt"))
    assert code == 2 and ".pkl or .npz" in err
    code, _, err = _run(capsys, "convert", "--overwrite", str(tmp_path / "a.pkl"), str(tmp_path / "a.pkl"))
    assert code == 2 and "input file" in err


def test_info_and_convert_do_not_import_torch():
    code = ("import sys, argparse; import fidkit.cli.info as i, fidkit.cli.convert as c; "
            "p = argparse.ArgumentParser(); s = p.add_subparsers(); i.add_parser(s); c.add_parser(s); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
