"""The ``vgg16`` extractor against torch-fidelity 0.4.0's own ``FeatureExtractorVGG16`` (its
precision/recall features) and torchvision's ``vgg16``, fed the same random weights.

torch-fidelity downloads torchvision's file through ``torchvision_load_pretrained_vgg16``; the
tests replace that download with a torchvision ``vgg16`` holding fidkit's random test weights, so
its whole forward (resize, normalisation, truncated classifier) runs unchanged. The test file in
the official layout is 528 MiB, so the tests that write it are marked slow.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_images
from fidkit.errors import WeightsError
from fidkit.extractors import get_extractor
from fidkit.extractors.vgg16 import make_test_state

VGG = get_extractor("vgg16")


@pytest.fixture(scope="module")
def test_state():
    return make_test_state(0)


def _torchvision_vgg16(state):
    import torchvision

    model = torchvision.models.vgg16()
    model.load_state_dict(state)
    return model.eval()


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def _as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


def _torch_fidelity_extractor(monkeypatch, state):
    import torch_fidelity.feature_extractor_vgg16 as tf_vgg

    monkeypatch.setattr(tf_vgg, "torchvision_load_pretrained_vgg16",
                        lambda **kwargs: _torchvision_vgg16(state))
    return tf_vgg.FeatureExtractorVGG16("vgg16", ["fc2", "fc2_relu"])


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (2, 3, 80, 112)])
def test_network_matches_torchvision_vgg16(test_state, shape):
    ours_net = VGG.build(test_state, ("fc2", "fc2_relu"))
    ref_net = _torchvision_vgg16(test_state)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = ours_net(x)
        ref_fc2 = ref_net.classifier[:4](torch.flatten(ref_net.avgpool(ref_net.features(x)), 1))
    assert ours["fc2"].shape == ours["fc2_relu"].shape == (2, 4096)
    assert _relative_error(ours["fc2"], ref_fc2) <= 1e-5
    assert torch.equal(ours["fc2_relu"], torch.relu(ours["fc2"]))


def test_network_ignores_the_input_memory_layout(test_state):
    # A permuted HWC image is a channels-last view; torch-fidelity feeds contiguous NCHW.
    net = VGG.build(test_state, ("fc2",))
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(net(x.to(memory_format=torch.channels_last))["fc2"], net(x)["fc2"])


@pytest.mark.parametrize("size", [(224, 224), (150, 190)])
def test_pipeline_matches_torch_fidelity(monkeypatch, test_state, size):
    """uint8 images through torch-fidelity's FeatureExtractorVGG16 and through fidkit's
    torch-fidelity convention + network: same network input, same fc2 and fc2_relu."""
    extractor = _torch_fidelity_extractor(monkeypatch, test_state)
    seen = []
    extractor.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    images = make_images(3, size, seed=21)
    x = _as_batch(images)
    with torch.no_grad():
        ref_fc2, ref_relu = extractor(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        prepared = VGG.convention("torch-fidelity").prepare(x)
        ours = VGG.build(test_state, ("fc2", "fc2_relu"))(prepared)
    assert torch.equal(prepared, seen[0])  # the convention is torch-fidelity's preprocessing
    assert _relative_error(ours["fc2"], ref_fc2) <= 1e-5
    assert _relative_error(ours["fc2_relu"], ref_relu) <= 1e-5
    # The random weights give features that differ between images.
    assert float(ref_relu.std(0).mean()) > 0.1 * float(ref_relu.mean())


def test_default_tap_is_what_torch_fidelity_prc_uses():
    from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16
    from torch_fidelity.utils import resolve_feature_extractor

    assert resolve_feature_extractor(prc=True) == "vgg16"
    assert FeatureExtractorVGG16.get_default_feature_layer_for_metric("prc") == "fc2_relu"
    assert VGG.tap_for(None) == "fc2_relu"
    assert FeatureExtractorVGG16.INPUT_IMAGE_SIZE == 224


def test_test_state_has_the_official_layout(test_state):
    import torchvision

    with torch.device("meta"):
        official = torchvision.models.vgg16().state_dict()
    assert list(test_state) == list(official)
    assert all(test_state[k].shape == official[k].shape for k in official)


def test_wrong_files_raise_one_line_weights_errors(tmp_path, test_state):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="notes.txt.*vgg16-397923af.pth") as info:
        VGG.read_weights(text)
    assert "\n" not in str(info.value)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsError, match="list.pth does not hold a VGG-16 state dict"):
        VGG.read_weights(not_a_dict)

    state = dict(test_state)
    del state["features.28.bias"]
    with pytest.raises(WeightsError, match="1 missing keys.*features.28.bias"):
        VGG.build(state, ("fc2_relu",))
    state = dict(test_state)
    state["features.1.weight"] = torch.zeros(3)  # a VGG-16-BN file has weights at index 1
    with pytest.raises(WeightsError, match="unexpected keys.*features.1.weight"):
        VGG.build(state, ("fc2_relu",))


def test_registry_entry_without_importing_torch():
    info = VGG.describe()
    assert info["dims"] == [4096] and info["default_convention"] == "torch-fidelity"
    assert info["weights"] == {
        "file": "vgg16-397923af.pth",
        "sha256": "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        "size": 553_433_881,
        "urls": ["https://download.pytorch.org/models/vgg16-397923af.pth"]}
    assert "ImageNet" in VGG.licence
    code = ("import sys, fidkit.extractors.vgg16 as v; v.VGG16_ENTRY.describe(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _digest(state) -> str:
    h = hashlib.sha256()
    for key, tensor in state.items():
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_make_test_weights_file_round_trips_through_torch_fidelity(tmp_path, test_state):
    """The 528 MiB file: fidkit reads it back exactly, torch-fidelity loads it through its own
    ``feature_extractor_weights_path`` and gives the same features, and it is deterministic."""
    from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

    from fidkit.extractors.weights import file_sha256

    path = tmp_path / "vgg16-397923af.pth"
    VGG.make_test_weights(path, seed=0)
    state = VGG.read_weights(path)
    assert _digest(state) == _digest(test_state)
    del state
    images = make_images(2, (150, 190), seed=22)
    ref = FeatureExtractorVGG16("vgg16", ["fc2_relu"], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        (ref_relu,) = ref(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    del ref
    with torch.no_grad():
        ours = VGG.build(test_state, ("fc2_relu",))(VGG.convention(None).prepare(_as_batch(images)))
    assert _relative_error(ours["fc2_relu"], ref_relu) <= 1e-5
    first = file_sha256(path)
    path.unlink()
    VGG.make_test_weights(path, seed=0)
    assert file_sha256(path) == first
    assert _digest(make_test_state(1)) != _digest(test_state)


@pytest.mark.slow
def test_reads_the_legacy_container(tmp_path, test_state):
    """torchvision's vgg16-397923af.pth (2017) is a bare pickle, not a zip archive."""
    legacy = tmp_path / "legacy.pth"
    torch.save(test_state, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b"\x80\x02"
    assert _digest(VGG.read_weights(legacy)) == _digest(test_state)
