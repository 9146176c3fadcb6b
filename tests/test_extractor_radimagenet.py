"""The ``radimagenet-resnet50`` extractor against independent references.

* Network: torchvision's ``resnet50`` given the Keras port's three differences (biased
  convolutions, stride in the first 1x1 convolution of a block, batch-norm eps 1.001e-5) by
  editing its modules, then fed the same random weights file: its pooled features (``fc`` removed)
  must equal fidkit's at 224 x 224 and at a non-square size.
* Convention: the network input the MAISI script / MONAI's RadImageNetPerceptualSimilarity make
  (channel repeat, RGB -> BGR, ``monai.losses.perceptual.subtract_mean``).
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fidkit.errors import WeightsError
from fidkit.extractors import get_extractor
from fidkit.extractors.radimagenet import RADIMAGENET_WEIGHTS, prepare_maisi, prepare_unit_slices
from fidkit.extractors.weights import synthetic_images

ENTRY = "radimagenet-resnet50"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("radimagenet") / "RadImageNet-ResNet50_notop.pth"
    get_extractor(ENTRY).make_test_weights(path, seed=0)
    return path


def keras_torchvision_resnet50(state: dict) -> torch.nn.Module:
    """torchvision's ResNet-50 turned into the Keras port's network, loaded strictly."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Conv2d):
                biased = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                         stride=child.stride, padding=child.padding, bias=True)
                setattr(module, child_name, biased)
            elif isinstance(child, torch.nn.BatchNorm2d):
                child.eps = 1.001e-5
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            if block.conv2.stride != (1, 1):  # v1.5 -> v1: the 1x1 convolution strides
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("size", [(224, 224), (96, 160)])
def test_features_equal_torchvision_resnet50_with_keras_layout(weights, size):
    extractor = get_extractor(ENTRY)
    state = extractor.read_weights(weights)
    ours = extractor.build(state, ("avgpool",))
    reference = keras_torchvision_resnet50(state)
    h, w = size
    images = synthetic_images(3, size=max(size), generator=torch.Generator().manual_seed(7))
    x = prepare_maisi(images[:, :, :h, :w].float())
    with torch.no_grad():
        a = ours(x)["avgpool"]
        b = reference(x)
    assert a.shape == (3, 2048) and a.dtype == torch.float32
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= 1e-5 * scale
    # Random weights calibrated on images: features differ between images by a real amount.
    assert a.std(dim=0).mean().item() > 0.05 * a.abs().mean().item()


def test_torchvision_layout_would_differ(weights):
    """The Keras flags matter: torchvision's own v1.5 ResNet on the same weights gives other
    features (so the test above can fail)."""
    import torchvision

    extractor = get_extractor(ENTRY)
    state = extractor.read_weights(weights)
    ours = extractor.build(state, ("avgpool",))
    plain = torchvision.models.resnet50(weights=None)
    plain.fc = torch.nn.Identity()
    for module in plain.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.bias = torch.nn.Parameter(torch.zeros(module.out_channels))
    plain.load_state_dict(state, strict=True)
    x = prepare_maisi(synthetic_images(2, size=128).float())
    with torch.no_grad():
        diff = (ours(x)["avgpool"] - plain.eval()(x)).abs().max().item()
    assert diff > 1e-3


def test_maisi_convention_equals_monai_subtract_mean():
    from monai.losses.perceptual import subtract_mean

    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 17, 23))).float()
    expected = subtract_mean((rgb / 255.0)[:, [2, 1, 0], ...].clone())
    assert torch.equal(prepare_maisi(rgb), expected)
    assert get_extractor(ENTRY).convention(None).prepare is prepare_maisi


def test_unit_slices_follow_the_maisi_script():
    """Grey CT slices scaled 0..1 the MAISI way (min-max over the stack): repeat to 3 channels,
    BGR reorder, subtract_mean — as ``get_features_2p5d`` + ``radimagenet_intensity_normalisation``."""
    from monai.losses.perceptual import subtract_mean

    hu = torch.from_numpy(np.random.default_rng(1).uniform(-1000, 1000, (4, 1, 20, 12))).float()
    unit = (hu - hu.min()) / (hu.max() - hu.min() + 1e-10)
    expected = subtract_mean(unit.repeat(1, 3, 1, 1)[:, [2, 1, 0], ...].clone())
    assert torch.equal(prepare_unit_slices(unit), expected)
    # For an 8-bit image spanning 0..255, x / 255 is that min-max scaling.
    img = torch.arange(256.0).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)
    minmax = (img - img.min()) / (img.max() - img.min() + 1e-10)
    assert (prepare_maisi(img) - prepare_unit_slices(minmax)).abs().max().item() <= 1e-6


def test_make_test_weights_round_trips(weights, tmp_path):
    extractor = get_extractor(ENTRY)
    state = extractor.read_weights(weights)
    # The port's layout: torchvision names (no fc), a bias on every convolution, BN counters.
    assert "conv1.bias" in state and "layer1.0.conv1.bias" in state and "fc.weight" not in state
    assert "layer4.2.bn3.num_batches_tracked" in state
    again = tmp_path / "again.pth"
    extractor.make_test_weights(again, seed=0)
    other = tmp_path / "other.pth"
    extractor.make_test_weights(other, seed=1)
    same, different = extractor.read_weights(again), extractor.read_weights(other)
    assert set(same) == set(state)
    assert all(torch.equal(same[k], state[k]) for k in state)
    assert not torch.equal(different["conv1.weight"], state["conv1.weight"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_wrong_files_raise_one_line_weights_errors(tmp_path):
    extractor = get_extractor(ENTRY)
    medicalnet = tmp_path / "resnet_10_23dataset.pth"
    get_extractor("medicalnet-resnet10").make_test_weights(medicalnet, seed=0)
    with pytest.raises(WeightsError) as info:
        extractor.build(extractor.read_weights(medicalnet), ("avgpool",))
    assert "\n" not in str(info.value) and "RadImageNet-ResNet50_notop.pth" in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps({"a": 1}) + b"garbage")
    with pytest.raises(WeightsError) as info:
        extractor.read_weights(junk)
    assert str(junk) in str(info.value) and "\n" not in str(info.value)


def test_registry_entry():
    extractor = get_extractor(ENTRY)
    assert extractor.dims == (2048,) and extractor.tap_for(None) == "avgpool"
    described = extractor.describe()
    assert described["weights"]["sha256"] == RADIMAGENET_WEIGHTS.sha256
    assert described["default_convention"] == "maisi"
