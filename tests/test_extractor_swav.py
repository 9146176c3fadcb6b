"""The ``swav-resnet50`` extractor against independent references fed the same random weights:
torchvision's ``resnet50`` loaded the way swav's ``hubconf.py`` loads the file (StudioGAN's
``SwAV_torch``), StudioGAN's "clean" resize transcribed with PIL + torchvision's ``ToTensor``, and
dgm-eval's own torchvision transform for its ``swav`` encoder."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fidkit.errors import WeightsError
from fidkit.extractors import get_extractor
from fidkit.extractors.swav import (IMAGENET_MEAN, IMAGENET_STD, make_test_state,
                                   resize_pil_bicubic_float_unclipped, swav_key)
from conftest import make_images

SWAV = get_extractor("swav-resnet50")


@pytest.fixture(scope="module")
def swav_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("swav") / "swav_800ep_pretrain.pth.tar"
    SWAV.make_test_weights(path, seed=0)
    return path


@pytest.fixture(scope="module")
def fidkit_net(swav_file):
    return SWAV.build(SWAV.read_weights(swav_file), ("avgpool",))


@pytest.fixture(scope="module")
def hub_net(swav_file):
    """What ``torch.hub.load('facebookresearch/swav:main', 'resnet50')`` builds from the file:
    torchvision's resnet50, keys without ``module.``, ``strict=False``; StudioGAN then takes
    the input of ``fc`` as the features, which ``fc = Identity`` returns."""
    import torchvision

    state = torch.load(swav_file, map_location="cpu", weights_only=True)
    state = {k.replace("module.", ""): v for k, v in state.items()}
    model = torchvision.models.resnet50()
    result = model.load_state_dict(state, strict=False)
    # Only the SwAV head is unexpected and only fc is missing: the trunk loaded completely.
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("projection_head.", "prototypes.")) for k in result.unexpected_keys)
    assert len(result.unexpected_keys) == 10
    model.fc = torch.nn.Identity()
    return model.eval()


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (2, 3, 160, 208)])
def test_network_matches_torchvision_resnet50(fidkit_net, hub_net, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = fidkit_net(x)["avgpool"]
        ref = hub_net(x)
    assert ours.shape == (2, 2048)
    assert _relative_error(ours, ref) <= 1e-5
    # Random weights that still separate images: features differ between the two inputs.
    assert float((ref[0] - ref[1]).abs().max()) > 1e-2 * float(ref.abs().max())


def test_network_ignores_the_input_memory_layout(fidkit_net):
    # A permuted HWC image is a channels-last view; the peers see contiguous NCHW.
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(fidkit_net(x.to(memory_format=torch.channels_last))["avgpool"],
                           fidkit_net(x)["avgpool"])


def _studiogan_clean(images: np.ndarray) -> torch.Tensor:
    """StudioGAN 947b35e (the fid-med-eval submodule), utils/resize.py make_resizer("PIL",
    "bicubic", (224, 224)) + utils/ops.py resize_images, step by step."""
    from PIL import Image
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    mean = torch.Tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.Tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for img in images:  # uint8 (H, W, 3)
        channels = []
        for c in range(3):
            plane = Image.fromarray(img[:, :, c].astype(np.float32))
            channels.append(np.asarray(plane.resize((224, 224), resample=Image.BICUBIC))
                            .reshape(224, 224, 1))
        out.append(to_tensor(np.concatenate(channels, axis=2).astype(np.float32)))
    x = torch.stack(out, 0)
    return (x / 255.0 - mean) / std


def _dgm_eval(images: np.ndarray) -> list[torch.Tensor]:
    """dgm-eval's ResNet50Encoder.transform (models/swav.py) on PIL RGB images."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(224), transforms.ToTensor(),
                                    transforms.Normalize(mean=list(IMAGENET_MEAN),
                                                         std=list(IMAGENET_STD))])
    return [transform(Image.fromarray(img)) for img in images]


def _as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("size", [(224, 224), (150, 190), (300, 260)])
def test_studiogan_clean_convention_matches_studiogan(size):
    images = make_images(2, size, seed=11)
    ours = SWAV.convention("studiogan-clean").prepare(_as_batch(images))
    ref = _studiogan_clean(images)
    assert ours.shape == ref.shape == (2, 3, 224, 224)
    assert torch.equal(ours, ref)
    if size == (150, 190):
        # StudioGAN does not clip bicubic overshoot (clean-fid does): make sure this case has some.
        raw = resize_pil_bicubic_float_unclipped(_as_batch(images), (224, 224))
        assert float(raw.min()) < 0 or float(raw.max()) > 255


@pytest.mark.parametrize("size", [(224, 224), (150, 190), (300, 260)])
def test_dgm_eval_convention_matches_dgm_eval(size):
    images = make_images(2, size, seed=12)
    ours = SWAV.convention("dgm-eval").prepare(_as_batch(images))
    ref = _dgm_eval(images)
    for i in range(2):
        assert ours[i].shape == ref[i].shape
        assert torch.equal(ours[i], ref[i])


def test_default_pipeline_matches_studiogan_swav(fidkit_net, hub_net):
    """Convention + network end to end against StudioGAN's SwAV_torch path, non-square images."""
    images = make_images(2, (150, 190), seed=13)
    with torch.no_grad():
        ours = fidkit_net(SWAV.convention(None).prepare(_as_batch(images)))["avgpool"]
        ref = hub_net(_studiogan_clean(images))
    assert _relative_error(ours, ref) <= 1e-5


def test_make_test_weights_round_trips_and_is_deterministic(swav_file, tmp_path):
    from fidkit.extractors.weights import file_sha256

    state = SWAV.read_weights(swav_file)
    expected = make_test_state(0)
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)
    # The official layout: "module." everywhere, the training head kept in the file.
    assert all(k.startswith("module.") for k in state)
    assert state["module.projection_head.0.weight"].shape == (2048, 2048)
    assert state["module.projection_head.3.weight"].shape == (128, 2048)
    assert state["module.prototypes.weight"].shape == (3000, 128)
    again = tmp_path / "again.pth.tar"
    SWAV.make_test_weights(again, seed=0)
    assert file_sha256(again) == file_sha256(swav_file)
    other = make_test_state(1)
    assert not torch.equal(other["module.conv1.weight"], expected["module.conv1.weight"])


def test_reads_the_legacy_container(tmp_path):
    """Files published before torch 1.6 (mid-2020) use the pre-zip container."""
    state = make_test_state(0)
    legacy = tmp_path / "legacy.pth.tar"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] == b"\x80\x02"  # a bare pickle, not a zip archive
    loaded = SWAV.read_weights(legacy)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    wrapped = tmp_path / "checkpoint.pth.tar"  # eval_linear.py also accepts {"state_dict": ...}
    torch.save({"epoch": 800, "state_dict": state}, wrapped)
    assert list(SWAV.read_weights(wrapped)) == list(state)


def test_swav_key_mapping():
    assert swav_key("module.layer1.0.downsample.1.running_var") == "layer1.0.downsample.1.running_var"
    assert swav_key("module.projection_head.1.weight") is None
    assert swav_key("module.prototypes.weight") is None
    assert swav_key("conv1.weight") == "conv1.weight"  # a file saved without DDP loads too


def test_wrong_files_raise_one_line_weights_errors(tmp_path, swav_file):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="notes.txt.*swav_800ep_pretrain.pth.tar") as info:
        SWAV.read_weights(text)
    assert "\n" not in str(info.value)

    state = SWAV.read_weights(swav_file)
    del state["module.layer4.2.bn3.running_var"]
    with pytest.raises(WeightsError, match="1 missing keys.*layer4.2.bn3.running_var"):
        SWAV.build(state, ("avgpool",))
    state = SWAV.read_weights(swav_file)
    state["module.fc.weight"] = torch.zeros(1000, 2048)
    with pytest.raises(WeightsError, match="unexpected keys.*fc.weight"):
        SWAV.build(state, ("avgpool",))
    state = SWAV.read_weights(swav_file)
    state["module.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(WeightsError, match="conv1.weight has shape"):
        SWAV.build(state, ("avgpool",))


def test_registry_entry_and_licence_without_importing_torch():
    info = SWAV.describe()
    assert info["dims"] == [2048] and info["default_convention"] == "studiogan-clean"
    assert info["conventions"] == ["studiogan-clean", "dgm-eval"]
    assert "CC-BY-NC-4.0" in SWAV.licence and "NonCommercial" in info["licence"]
    assert info["weights"]["urls"] == [
        "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"]
    code = ("import sys, fidkit.extractors.swav as s; s.SWAV_RESNET50.describe(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
