"""``fidkit selftest`` end to end against a local HTTP server: the weights and a small CIFAR-10
archive in torchvision's layout are downloaded (hash-checked), and the FID, KID and IS it prints
equal torch-fidelity's own on the same images with the same (random) weights."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

PER_BATCH = 8  # 5 training batches -> 40 "generated" images; 40 test images


def _fake_cifar(root: Path) -> tuple[Path, dict[str, str]]:
    """cifar-10-python.tar.gz with tiny batches; returns it and the MD5 of each member."""
    from conftest import make_images

    members, md5 = {}, {}
    for k in range(5):
        images = make_images(PER_BATCH, (32, 32), seed=100 + k)
        members[f"data_batch_{k + 1}"] = {"data": images.transpose(0, 3, 1, 2).reshape(PER_BATCH, -1),
                                          "labels": [k] * PER_BATCH}
    test = make_images(5 * PER_BATCH, (32, 32), seed=200)
    members["test_batch"] = {"data": test.transpose(0, 3, 1, 2).reshape(len(test), -1),
                             "labels": [0] * len(test)}
    members["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            data = pickle.dumps(payload, protocol=2)
            md5[name] = hashlib.md5(data).hexdigest()
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5["archive"] = hashlib.md5(archive.read_bytes()).hexdigest()
    return archive, md5


@pytest.fixture()
def served(http_folder, test_weights):
    """The local server with the weights file and the fake CIFAR-10 archive."""
    site, base = http_folder
    (site / "weights.pth").write_bytes(Path(test_weights).read_bytes())
    _, md5 = _fake_cifar(site)
    return base, md5


def test_selftest_downloads_and_matches_torch_fidelity(served, tmp_path, test_weights, monkeypatch):
    import torch_fidelity
    from PIL import Image
    from torchvision.datasets import CIFAR10

    import fidkit.extractors as registry
    from fidkit.extractors.base import WeightsFile
    from fidkit.selftest import run_selftest

    base, md5 = served
    payload = Path(test_weights).read_bytes()
    local = WeightsFile(filename="selftest-weights.pth", sha256=hashlib.sha256(payload).hexdigest(),
                        size=len(payload), urls=(f"{base}/weights.pth",), licence="test")
    inception = registry.get_extractor("inception")
    monkeypatch.setitem(registry._REGISTRY, "inception", dataclasses.replace(inception, weights=local))
    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FIDKIT_WEIGHTS", raising=False)
    monkeypatch.delenv("FIDKIT_OFFLINE", raising=False)

    class LocalCIFAR10(CIFAR10):
        url = f"{base}/cifar-10-python.tar.gz"
        tgz_md5 = md5["archive"]
        train_list = [[f"data_batch_{k}", md5[f"data_batch_{k}"]] for k in range(1, 6)]
        test_list = [["test_batch", md5["test_batch"]]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}

    n = 5 * PER_BATCH
    result = run_selftest(tmp_path / "data", samples=n, device="cpu", dataset_class=LocalCIFAR10,
                          progress=False)
    assert (tmp_path / "cache" / "selftest-weights.pth").is_file()  # downloaded, verified
    assert not result.passed  # random weights and 40 images: never "the published numbers"
    assert [row[0] for row in result.rows] == ["fid", "is_mean", "is_std", "kid_mean", "kid_std"]

    # torch-fidelity on the same images (written as PNGs, its folder input) and weights.
    folders = []
    for name, train in (("train", True), ("test", False)):
        data = LocalCIFAR10(str(tmp_path / "data"), train=train, download=False).data[:n]
        folder = tmp_path / name
        folder.mkdir()
        for i, img in enumerate(data):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        folders.append(str(folder))
    theirs = torch_fidelity.calculate_metrics(
        input1=folders[0], input2=folders[1], cuda=False, isc=True, fid=True, kid=True,
        kid_subset_size=n, verbose=False, cache=False, save_cpu_ram=True,
        feature_extractor_weights_path=str(test_weights))
    ours = result.values
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4, abs=1e-6)
    assert ours["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4,
                                             abs=1e-7)
    # Subsets of all 40 images are the same set each time: the std is 0 up to the rounding of
    # torch-fidelity's float32 kernel sums (~2e-7 here), fidkit's float64 ones give ~1e-16.
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], abs=1e-6)
    assert np.isfinite(list(ours.values())).all()
