"""Stats files: round trips, peers' formats, hostile and impossible files.

References are independent of fidkit: numpy's own covariance, the peers' own loaders and Frechet
functions (pytorch-fid, clean-fid, torch-fidelity), and a marker file that a hostile pickle would
create if any of its code ran.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fidkit.errors import InputError, StatsFileError
from fidkit.distances.frechet import frechet_distance
from fidkit.statistics import Statistics
from fidkit.statistics.statsio import (
    ProvenanceWarning,
    check_statistics,
    detect_format,
    load_statistics,
    parse_cleanfid_name,
    parse_torch_fidelity_name,
    save_statistics,
)

D = 16


def _features(seed: int, n: int = 200, d: int = D, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def _stats(seed: int, **meta) -> Statistics:
    x = _features(seed)
    base = {"convention": "tf1", "weights": {"sha256": "0" * 64, "canonical": False, "file": "w.pth"},
            "network": "FIDInceptionV3", "source": {"kind": "folder", "files": 200}}
    base.update(meta)
    return Statistics(x.mean(0), np.cov(x, rowvar=False), len(x), base)


def _quiet_load(path) -> Statistics:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProvenanceWarning)
        return load_statistics(path)


# ------------------------------------------------------------------------- fidkit round trips

@pytest.mark.parametrize("suffix", [".pkl", ".npz", ".stats"])
def test_round_trip_keeps_values_and_provenance(tmp_path, suffix):
    stats = _stats(0)
    path = tmp_path / f"s{suffix}"
    save_statistics(stats, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvenanceWarning)  # complete provenance: no warning
        back = load_statistics(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.mu.dtype == np.float64 and back.sigma.dtype == np.float64
    assert back.n == 200 and back.meta["n"] == 200
    assert back.meta["provenance"] == "fidkit"
    assert back.meta["convention"] == "tf1" and back.meta["weights"]["sha256"] == "0" * 64
    assert back.meta["source"] == {"kind": "folder", "files": 200}


def test_npz_is_plain_numpy_with_json_meta(tmp_path):
    path = tmp_path / "s.npz"
    save_statistics(_stats(1), path)
    with np.load(path) as f:  # allow_pickle=False is numpy's default
        assert sorted(f.files) == ["meta", "mu", "sigma"]
        assert f["mu"].dtype == np.float64 and f["sigma"].shape == (D, D)
        meta = f["meta"]
        assert meta.dtype.kind == "U" and meta.ndim == 0
    import json

    assert json.loads(str(meta[()]))["convention"] == "tf1"


def test_format_detected_by_content_not_suffix(tmp_path):
    stats = _stats(2)
    npz_named_pkl = tmp_path / "really_npz.pkl"
    save_statistics(stats, tmp_path / "a.npz")
    os.replace(tmp_path / "a.npz", npz_named_pkl)
    assert detect_format(npz_named_pkl) == "npz"
    np.testing.assert_array_equal(load_statistics(npz_named_pkl).sigma, stats.sigma)


def test_overwrite_false_refuses_existing(tmp_path):
    path = tmp_path / "s.pkl"
    save_statistics(_stats(3), path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists"):
        save_statistics(_stats(4), path, overwrite=False)
    assert path.read_bytes() == before


def test_converted_peer_file_stays_unknown(tmp_path):
    x = _features(5)
    np.savez(tmp_path / "ttur.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    with pytest.warns(ProvenanceWarning, match="unknown"):
        peer = load_statistics(tmp_path / "ttur.npz")
    save_statistics(peer, tmp_path / "converted.pkl")
    with pytest.warns(ProvenanceWarning, match="unknown"):
        back = load_statistics(tmp_path / "converted.pkl")
    assert back.meta["provenance"] == "unknown"
    assert back.meta["source"]["format"] == "pytorch-fid-npz"


# ------------------------------------------------------------------------- peers' files

def test_fidkit_npz_read_by_pytorch_fid_functions(tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance, compute_statistics_of_path

    a, b = _stats(10), _stats(11)
    save_statistics(a, tmp_path / "a.npz")
    save_statistics(b, tmp_path / "b.npz")
    # pytorch-fid never touches the model for .npz inputs
    m1, s1 = compute_statistics_of_path(str(tmp_path / "a.npz"), None, 50, D, "cpu")
    m2, s2 = compute_statistics_of_path(str(tmp_path / "b.npz"), None, 50, D, "cpu")
    peer = calculate_frechet_distance(m1, s1, m2, s2)
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(peer, rel=1e-9)


def test_fidkit_npz_read_by_python_m_pytorch_fid(tmp_path):
    """``python -m pytorch_fid a.npz b.npz`` prints the same FID. The machine is offline, so the
    Inception that pytorch-fid builds before reading its inputs is replaced by a stub; .npz
    inputs never reach it."""
    a, b = _stats(12), _stats(13)
    save_statistics(a, tmp_path / "a.npz")
    save_statistics(b, tmp_path / "b.npz")
    script = (
        "import runpy, sys, pytorch_fid.fid_score as fs\n"
        "class Stub:\n"
        "    BLOCK_INDEX_BY_DIM = fs.InceptionV3.BLOCK_INDEX_BY_DIM\n"
        "    def __init__(self, *a, **k): pass\n"
        "    def to(self, device): return self\n"
        "fs.InceptionV3 = Stub\n"
        "sys.argv = ['pytorch_fid', '--device', 'cpu', sys.argv[1], sys.argv[2]]\n"
        "runpy.run_module('pytorch_fid', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.npz"), str(tmp_path / "b.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = float(done.stdout.split("FID:")[-1])
    assert printed == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-9)


def test_pytorch_fid_npz_loads_as_unknown_with_same_fid(tmp_path):
    from pytorch_fid.fid_score import calculate_frechet_distance, compute_statistics_of_path

    x1, x2 = _features(20), _features(21, shift=0.3)
    for name, x in (("r.npz", x1), ("g.npz", x2)):
        np.savez_compressed(tmp_path / name, mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    m1, s1 = compute_statistics_of_path(str(tmp_path / "r.npz"), None, 50, D, "cpu")
    m2, s2 = compute_statistics_of_path(str(tmp_path / "g.npz"), None, 50, D, "cpu")
    with pytest.warns(ProvenanceWarning, match="unknown"):
        r = load_statistics(tmp_path / "r.npz")
    g = _quiet_load(tmp_path / "g.npz")
    assert r.meta["provenance"] == "unknown" and r.meta["source"]["format"] == "pytorch-fid-npz"
    assert r.n == 0 and r.meta["n"] is None
    assert frechet_distance(r.mu, r.sigma, g.mu, g.sigma) == pytest.approx(
        calculate_frechet_distance(m1, s1, m2, s2), rel=1e-9)


def test_cleanfid_reference_npz(tmp_path):
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    x1, x2 = _features(30), _features(31, shift=0.2)
    # clean-fid writes reference stats with np.savez_compressed(mu=, sigma=) and reads them with
    # np.load(...)["mu"], ["sigma"] (cleanfid.features.get_reference_statistics)
    ref = tmp_path / "cifar10_legacy_tensorflow_train_32.npz"
    gen = tmp_path / "mine_clean_custom_na.npz"
    np.savez_compressed(ref, mu=x1.mean(0), sigma=np.cov(x1, rowvar=False))
    np.savez_compressed(gen, mu=x2.mean(0), sigma=np.cov(x2, rowvar=False))
    peer_arrays = [np.load(p) for p in (ref, gen)]
    peer = cleanfid_frechet(peer_arrays[0]["mu"], peer_arrays[0]["sigma"],
                            peer_arrays[1]["mu"], peer_arrays[1]["sigma"])
    with pytest.warns(ProvenanceWarning, match="partial"):
        r = load_statistics(ref)
    g = _quiet_load(gen)
    assert r.meta["convention_guess"] == "tf1" and "convention" not in r.meta
    assert r.meta["cleanfid"] == {"dataset": "cifar10", "mode": "legacy_tensorflow", "convention": "tf1",
                                  "model": "inception_v3", "split": "train", "resolution": 32}
    assert g.meta["convention_guess"] == "clean" and g.meta["cleanfid"]["resolution"] is None
    assert frechet_distance(r.mu, r.sigma, g.mu, g.sigma) == pytest.approx(peer, rel=1e-9)


def test_cleanfid_name_scheme_matches_cleanfid_code():
    # The names clean-fid itself builds (cleanfid.features.get_reference_statistics) parse back.
    for name, mode, split, res, model in [
        ("ffhq", "clean", "trainval70k", 1024, "inception_v3"),
        ("afhq_cat", "legacy_pytorch", "train", 512, "inception_v3"),
        ("lsun_church", "clean", "train", 256, "clip_vit_b_32"),
    ]:
        modifier = "" if model == "inception_v3" else "_" + model
        filename = f"{name}_{mode}{modifier}_{split}_{res}.npz".lower()
        parsed = parse_cleanfid_name(filename)
        assert parsed is not None, filename
        assert (parsed["dataset"], parsed["mode"], parsed["split"], parsed["resolution"], parsed["model"]) == (
            name, mode, split, res, model)
    assert parse_cleanfid_name("ffhq_clean_trainval70k_1024_kid.npz") is None
    assert parse_cleanfid_name("fid_stats_cifar10_train.npz") is None


def test_cleanfid_kid_file_is_explained(tmp_path):
    path = tmp_path / "ffhq_clean_trainval70k_1024_kid.npz"
    np.savez(path, feats=np.zeros((4, 3)))
    with pytest.raises(StatsFileError, match="KID file"):
        load_statistics(path)


def test_torch_fidelity_cached_statistics(tmp_path):
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import cache_lookup_one_recompute_on_miss

    feats = {1: torch.from_numpy(_features(40).astype(np.float32)),
             2: torch.from_numpy(_features(41, shift=0.2).astype(np.float32))}
    peer_stats = {}
    for i, name in ((1, "cifar10-train"), (2, "input2")):
        cached = f"{name}-inception-v3-compat-stat-fid-2048"
        # torch-fidelity's own caching writes the .pt file
        peer_stats[i] = cache_lookup_one_recompute_on_miss(
            cached, lambda i=i: fid_features_to_statistics(feats[i]), cache=True, cache_root=str(tmp_path),
            verbose=False)
    peer = fid_statistics_to_metric(peer_stats[1], peer_stats[2], False)["frechet_inception_distance"]
    path1 = tmp_path / "cifar10-train-inception-v3-compat-stat-fid-2048.pt"
    assert path1.exists() and detect_format(path1) == "torch"
    with pytest.warns(ProvenanceWarning, match="partial"):
        s1 = load_statistics(path1)
    s2 = _quiet_load(tmp_path / "input2-inception-v3-compat-stat-fid-2048.pt")
    assert s1.meta["torch_fidelity"] == {"input": "cifar10-train", "feature_extractor": "inception-v3-compat",
                                         "feature_layer": "2048"}
    assert s1.meta["convention_guess"] == "tf1" and "convention" not in s1.meta
    # torch-fidelity keeps mu in float32; fidkit widens to float64
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(peer, rel=1e-5)


def test_torch_fidelity_name_parse():
    assert parse_torch_fidelity_name("a-b-c-vgg16-stat-fid-fc2.pt") == {
        "input": "a-b-c", "feature_extractor": "vgg16", "feature_layer": "fc2"}
    assert parse_torch_fidelity_name("cifar10-train-inception-v3-compat-features-2048.pt") is None


# ------------------------------------------------------------------------- hostile files

class _Gadget:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _gadgets(marker: Path) -> dict[str, bytes]:
    import builtins

    touch = f"open({str(marker)!r}, 'w').close()"
    gadgets = {
        "os.system": pickle.dumps({"mu": _Gadget(os.system, (f"touch {marker}",))}),
        "builtins.eval": pickle.dumps(_Gadget(builtins.eval, (touch,))),
        "builtins.exec": pickle.dumps(_Gadget(builtins.exec, (touch,)), protocol=2),
        "subprocess.Popen": pickle.dumps(_Gadget(subprocess.Popen, (["touch", str(marker)],))),
        "object array": pickle.dumps({"mu": np.array([_Gadget(os.system, (f"touch {marker}",))], dtype=object),
                                      "sigma": np.eye(1)}),
        # protocol 0, written by hand, as an attacker would
        "protocol 0 os.system": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        "protocol 0 posix.system": f"\x80\x02cposix\nsystem\n(X{chr(len('touch ' + str(marker)))}"
                                   f"\x00\x00\x00touch {marker}tR.".encode("latin-1"),
        # a known numpy gadget that execs a string
        "numpy runstring": pickle.dumps(_Gadget(
            __import__("numpy.testing._private.utils", fromlist=["runstring"]).runstring, (touch, {}))),
        # an admitted global whose argument is a refused one
        "reconstruct subtype": (b"\x80\x02cnumpy._core.multiarray\n_reconstruct\n"
                                b"cos\nsystem\n" + b"K\x00\x85C\x01b\x87R."),
    }
    return gadgets


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for label, data in _gadgets(marker).items():
        for suffix in (".pkl", ".npz", ".pt"):
            path = tmp_path / f"evil{suffix}"
            path.write_bytes(data)
            with pytest.raises(StatsFileError) as info:
                load_statistics(path)
            assert "\n" not in str(info.value)
            assert not marker.exists(), f"{label} ran code"


def test_object_array_of_plain_values_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"mu": np.array(["1", "2"], dtype=object), "sigma": np.eye(2)}))
    with pytest.raises(StatsFileError, match="object"):
        load_statistics(path)


def test_npz_with_pickled_object_member_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, mu=np.array([_Gadget(os.system, (f"touch {marker}",))], dtype=object), sigma=np.eye(1))
    with pytest.raises(StatsFileError, match="object array"):
        load_statistics(path)
    assert not marker.exists()


def test_torch_file_with_gadget_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "x-inception-v3-compat-stat-fid-2048.pt"
    torch.save({"mu": _Gadget(os.system, (f"touch {marker}",)), "sigma": np.eye(2)}, path)
    with pytest.raises(StatsFileError, match="weights_only"):
        load_statistics(path)
    assert not marker.exists()


def test_codecs_other_than_latin1_refused(tmp_path):
    # _codecs.encode is admitted for protocol-2 array bytes only; zlib would allow a bomb.
    data = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x0a\x00\x00\x00zlib_codecq\x00\x86R."
    path = tmp_path / "codec.pkl"
    path.write_bytes(data)
    with pytest.raises(StatsFileError):
        load_statistics(path)


# ------------------------------------------------------------------------- broken or impossible

def _write_pkl(path: Path, mu, sigma) -> Path:
    path.write_bytes(pickle.dumps({"format": "fidkit-statistics", "format_version": 1, "mu": mu,
                                   "sigma": sigma, "n": 10, "meta": {"convention": "tf1"}}, protocol=4))
    return path


@pytest.mark.parametrize("suffix", [".pkl", ".npz"])
def test_truncated_files_refused(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    save_statistics(_stats(50), full)
    data = full.read_bytes()
    for cut in (1, 7, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(StatsFileError) as info:
            load_statistics(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_torch_file_refused(tmp_path):
    import torch

    path = tmp_path / "t.pt"
    torch.save({"mu": np.zeros(2), "sigma": np.eye(2)}, path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(StatsFileError):
        load_statistics(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not stats", b"\x80\x04garbage", os.urandom(300),
                                     b"\x93NUMPY\x01\x00"])
def test_garbage_refused(tmp_path, content):
    path = tmp_path / "g.pkl"
    path.write_bytes(content)
    with pytest.raises(StatsFileError):
        load_statistics(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(StatsFileError, match="no such"):
        load_statistics(tmp_path / "nope.pkl")
    with pytest.raises(StatsFileError, match="folder"):
        load_statistics(tmp_path)


@pytest.mark.parametrize("where", ["mu", "sigma"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(tmp_path, where, bad):
    mu, sigma = np.zeros(4), np.eye(4)
    (mu if where == "mu" else sigma)[0] = bad
    with pytest.raises(StatsFileError, match=f"{where} holds NaN or infinite"):
        load_statistics(_write_pkl(tmp_path / "s.pkl", mu, sigma))


def test_non_symmetric_refused(tmp_path):
    sigma = np.eye(4)
    sigma[0, 1] = 0.5
    with pytest.raises(StatsFileError, match="not symmetric"):
        load_statistics(_write_pkl(tmp_path / "s.pkl", np.zeros(4), sigma))


def test_non_psd_refused(tmp_path):
    sigma = np.diag([1.0, 1.0, -0.1, 2.0])
    with pytest.raises(StatsFileError, match="negative"):
        load_statistics(_write_pkl(tmp_path / "s.pkl", np.zeros(4), sigma))


def test_cauchy_schwarz_violation_refused(tmp_path):
    # variances 1 and 1 but covariance 2: the 2 x 2 minor is negative (eigenvalue -1)
    sigma = np.eye(4)
    sigma[1, 3] = sigma[3, 1] = 2.0
    with pytest.raises(StatsFileError, match=r"sigma\[1, 3\].*not positive semi-definite.*cannot be negative"):
        load_statistics(_write_pkl(tmp_path / "s.pkl", np.zeros(4), sigma))


def test_indefinite_sigma_loads_cheaply_and_is_refused_at_distance_time(tmp_path, monkeypatch):
    # Loading costs O(d^2): no eigendecomposition. A sigma that passes the cheap checks but has a
    # negative eigenvalue is refused by the factorisation the distance does, with the file's name;
    # check_statistics (fidkit info) still finds it.
    from fidkit.distances.frechet import frechet

    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    sigma = (q * np.r_[rng.uniform(1, 2, D - 1), -0.2]) @ q.T
    sigma = (sigma + sigma.T) / 2
    path = _write_pkl(tmp_path / "indefinite.pkl", np.zeros(D), sigma)

    def refuse(*args, **kwargs):
        raise AssertionError("load_statistics ran an eigendecomposition")

    import scipy.linalg

    with monkeypatch.context() as patch:
        for module, name in ((np.linalg, "eigvalsh"), (np.linalg, "eigh"), (np.linalg, "eigvals"),
                             (scipy.linalg, "eigh"), (scipy.linalg, "eigvalsh")):
            patch.setattr(module, name, refuse)
        stats = _quiet_load(path)
    assert check_statistics(stats)["psd"] is False
    assert check_statistics(stats)["min_eigenvalue"] == pytest.approx(-0.2, rel=1e-9)
    with pytest.raises(StatsFileError, match=r"^indefinite.pkl: sigma is not positive semi-definite") as info:
        frechet(stats, _stats(1))
    assert "\n" not in str(info.value) and "cannot be negative" in str(info.value)


def test_singular_covariance_accepted(tmp_path):
    # fewer samples than dims: a rank-deficient but valid covariance, as with small test sets
    x = _features(60, n=6)
    path = _write_pkl(tmp_path / "s.pkl", x.mean(0), np.cov(x, rowvar=False))
    stats = load_statistics(path)
    report = check_statistics(stats)
    assert report["psd"] and report["symmetric"] and report["finite"]
    assert report["rank"] == np.linalg.matrix_rank(np.cov(x, rowvar=False)) == 5
    assert report["condition"] == float("inf")


@pytest.mark.parametrize("mu,sigma,match", [
    (np.zeros(4), np.eye(5), r"sigma must be \(4, 4\)"),
    (np.zeros((2, 2)), np.eye(4), "mu has shape"),
    (np.zeros(0), np.zeros((0, 0)), "d > 0"),
    (np.zeros(4), np.eye(4)[:3], "sigma must be"),
])
def test_wrong_dims_refused(tmp_path, mu, sigma, match):
    with pytest.raises(StatsFileError, match=match):
        load_statistics(_write_pkl(tmp_path / "s.pkl", mu, sigma))


def test_meta_dims_disagreeing_with_arrays_refused(tmp_path):
    path = tmp_path / "s.npz"
    save_statistics(_stats(70), path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array('{"dims": 2048, "convention": "tf1"}'))
    members["meta.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(StatsFileError, match="2048 dims"):
        load_statistics(path)


@pytest.mark.parametrize("d", [10**6, 20_000])
def test_hostile_npz_header_shape_refused_before_allocation(tmp_path, d):
    # 20,000 dims is a 3.2 GB sigma that a ~3 MB deflated member could inflate to.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (d, d)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mu.npy", buf.getvalue())
        z.writestr("sigma.npy", buf.getvalue())
    with pytest.raises(StatsFileError, match="at most"):
        load_statistics(path)


def test_check_statistics_against_numpy(tmp_path):
    x = _features(80)
    sigma = np.cov(x, rowvar=False)
    report = check_statistics(Statistics(x.mean(0), sigma, len(x), {}))
    eig = np.linalg.eigvalsh(sigma)
    assert report["min_eigenvalue"] == pytest.approx(eig[0], rel=1e-9)
    assert report["max_eigenvalue"] == pytest.approx(eig[-1], rel=1e-9)
    assert report["condition"] == pytest.approx(np.linalg.cond(sigma), rel=1e-6)
    assert report["rank"] == D and report["symmetry_error"] == 0.0


def test_unknown_provenance_reaches_the_comparability_check(tmp_path):
    from fidkit.statistics.provenance import differences

    x = _features(90)
    np.savez(tmp_path / "cifar10_legacy_tensorflow_train_32.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    save_statistics(_stats(91), tmp_path / "ours.npz")
    peer = _quiet_load(tmp_path / "cifar10_legacy_tensorflow_train_32.npz")
    ours = load_statistics(tmp_path / "ours.npz")
    found = differences(peer.meta, ours.meta, names=("A", "B"))
    assert found and "A unknown" in found[0].replace("provenance of ", "") and "tf1" in found[0]
