"""The ``medicalnet-resnet10`` / ``medicalnet-resnet50`` extractors against independent references.

* Network: MONAI's ``resnet10`` / ``resnet50`` built as ``pretrained=True`` builds them for
  MedicalNet's weights (3-D, one input channel, conv1 stride 2, shortcut B, no downsample bias,
  no classifier), loaded strictly with the same random weights file (``module.`` stripped, as
  MONAI does). fidkit's ``dilated=False`` network must give MONAI's features; the default
  (MedicalNet's dilated stages 3-4) must give MONAI's network with MedicalNet's strides and
  dilations set on those convolutions.
* Conventions: MONAI's ``medicalnet_intensity_normalisation`` (``zscore``) and
  ``NormalizeIntensity(nonzero=True)`` (``medicalnet`` on the foreground).
* Spatial steps: ``scipy.ndimage.zoom(order=0)`` (MedicalNet's own call) and MONAI's
  ``SpatialPad`` + ``CenterSpatialCrop``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fidkit.errors import InputError, UsageError, WeightsError
from fidkit.extractors import get_extractor
from fidkit.extractors.medicalnet import (
    MEDICALNET_WEIGHTS,
    centre_crop_or_pad,
    normalise_medicalnet,
    normalise_zscore,
    prepare_volume,
    synthetic_volumes,
)
from fidkit.extractors.networks.medicalnet import MedicalNetResNet

SHAPES = [(16, 32, 32), (12, 40, 24)]  # cubic-ish default test size and a non-cubic one


@pytest.fixture(scope="module")
def weights10(tmp_path_factory):
    path = tmp_path_factory.mktemp("medicalnet") / "resnet_10_23dataset.pth"
    get_extractor("medicalnet-resnet10").make_test_weights(path, seed=0)
    return path


def monai_resnet(depth: int, state: dict, *, dilated: bool) -> torch.nn.Module:
    """MONAI's ResNet with MedicalNet's arguments, the file's weights loaded strictly; with
    ``dilated``, stages 3-4 changed to MedicalNet's (stride 1, dilation 2 / 4)."""
    from monai.networks.nets import resnet10, resnet50

    build = {10: resnet10, 50: resnet50}[depth]
    model = build(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type="B",
                  bias_downsample=False, feed_forward=False)
    if dilated:
        for stage, dilation in ((model.layer3, 2), (model.layer4, 4)):
            for module in stage.modules():
                if isinstance(module, torch.nn.Conv3d):
                    module.stride = (1, 1, 1)
                    if module.kernel_size == (3, 3, 3):
                        module.dilation = module.padding = (dilation,) * 3
    model.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=True)
    return model.eval()


def network_input(count: int, shape, seed: int) -> torch.Tensor:
    return normalise_medicalnet(torch.from_numpy(synthetic_volumes(count, shape, seed=seed)).unsqueeze(1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dilated", [True, False])
def test_resnet10_equals_monai(weights10, shape, dilated):
    extractor = get_extractor("medicalnet-resnet10")
    state = extractor.read_weights(weights10)
    if dilated:  # the registered network
        ours = extractor.build(state, ("512",))
    else:
        ours = MedicalNetResNet(10, dilated=False)
        ours.load_weights(state)
    reference = monai_resnet(10, state, dilated=dilated)
    x = network_input(3, shape, seed=11)
    with torch.no_grad():
        a = ours(x)["512"]
        b = reference(x)
    assert a.shape == (3, 512) and a.dtype == torch.float32
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    assert a.std(dim=0).mean().item() > 0.05 * a.abs().mean().item()


def test_dilation_changes_the_features(weights10):
    state = get_extractor("medicalnet-resnet10").read_weights(weights10)
    x = network_input(2, SHAPES[0], seed=3)
    with torch.no_grad():
        dilated = monai_resnet(10, state, dilated=True)(x)
        strided = monai_resnet(10, state, dilated=False)(x)
    assert (dilated - strided).abs().max().item() > 1e-3


def test_resnet50_layout_equals_monai():
    """ResNet-50's parameter names and shapes are MONAI's (both on the meta device: no memory)."""
    from monai.networks.nets import resnet50

    with torch.device("meta"):
        reference = resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type="B",
                             bias_downsample=False, feed_forward=False)
        ours = MedicalNetResNet(50)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(reference)
    assert ours.dim == 2048 and get_extractor("medicalnet-resnet50").tap_for(None) == "2048"


@pytest.mark.slow
def test_resnet50_test_weights_and_one_forward(tmp_path):
    extractor = get_extractor("medicalnet-resnet50")
    path = tmp_path / "resnet_50_23dataset.pth"
    extractor.make_test_weights(path, seed=0)
    state = extractor.read_weights(path)
    assert all(k.startswith("module.") for k in state)
    ours = extractor.build(state, ("2048",))
    x = network_input(2, (8, 24, 16), seed=5)
    with torch.no_grad():
        a = ours(x)["2048"]
        b = monai_resnet(50, state, dilated=True)(x)
    assert a.shape == (2, 2048)
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    assert a.std(dim=0).mean().item() > 0.05 * a.abs().mean().item()


def test_zscore_equals_monai_perceptual_normalisation():
    from monai.losses.perceptual import medicalnet_intensity_normalisation

    x = torch.from_numpy(np.random.default_rng(0).normal(40, 300, (3, 1, 6, 7, 8))).float()
    ours = normalise_zscore(x)
    for i in range(3):  # MONAI normalises the tensor it is given: one volume at a time here
        expected = medicalnet_intensity_normalisation(x[i:i + 1])
        assert (ours[i:i + 1] - expected).abs().max().item() <= 1e-6


def test_medicalnet_normalisation_foreground_and_background():
    from monai.transforms import NormalizeIntensity

    volumes = torch.from_numpy(synthetic_volumes(3, (10, 12, 14), seed=2)).unsqueeze(1)
    ours = normalise_medicalnet(volumes)
    for i in range(3):
        v = volumes[i]
        expected = NormalizeIntensity(nonzero=True)(v.clone())
        fg = v != 0
        assert (ours[i][fg] - expected[fg]).abs().max().item() <= 1e-5
    background = ours[0][volumes[0] == 0]
    assert background.numel() > 300
    assert abs(background.mean().item()) < 0.2 and abs(background.std().item() - 1) < 0.2
    # Deterministic, and a volume's result does not depend on its batch.
    assert torch.equal(normalise_medicalnet(volumes[1:2])[0], ours[1])
    assert torch.equal(normalise_medicalnet(volumes), ours)
    with pytest.raises(InputError):
        normalise_medicalnet(torch.zeros(1, 1, 4, 4, 4))


def test_stretch_is_medicalnets_nearest_zoom():
    from scipy import ndimage

    volume = synthetic_volumes(1, (23, 37, 30), seed=4)[0]
    target = (16, 48, 20)
    ours = prepare_volume(volume, input_shape=target, convention="zscore")
    zoomed = ndimage.zoom(volume, [t / s for t, s in zip(target, volume.shape)], order=0)
    assert zoomed.shape == target and ours.shape == (1, *target)
    expected = normalise_zscore(torch.from_numpy(zoomed).reshape(1, 1, *target))[0]
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("source", [(9, 10, 7), (4, 12, 5)])
def test_crop_or_pad_matches_monai(source):
    from monai.transforms import CenterSpatialCrop, SpatialPad

    target = (6, 11, 8)
    volume = np.random.default_rng(5).normal(size=source).astype(np.float32)
    ours = centre_crop_or_pad(volume, target, -7.0)
    padded = SpatialPad(target, mode="constant", value=-7.0)(torch.from_numpy(volume)[None])
    expected = CenterSpatialCrop(target)(padded)[0]
    assert ours.shape == target and np.array_equal(ours, np.asarray(expected))


def test_prepare_volume_resamples_and_checks_its_arguments():
    volume = synthetic_volumes(1, (10, 16, 16), seed=6)[0]
    resampled = prepare_volume(volume, (2.0, 1.0, 1.0), target_spacing_mm=(1.0, None, None),
                               resize="none")
    assert resampled.shape == (1, 20, 16, 16)
    with pytest.raises(UsageError):
        prepare_volume(volume, target_spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(UsageError):
        prepare_volume(volume, resize="zoom")
    with pytest.raises(UsageError):
        prepare_volume(volume, convention="imagenet")
    with pytest.raises(InputError):
        prepare_volume(volume[0])
    with pytest.raises(InputError):
        prepare_volume(np.full((4, 4, 4), np.nan))


def test_volume_features_feed_the_statistics(weights10):
    from fidkit.statistics import StatisticsAccumulator

    extractor = get_extractor("medicalnet-resnet10")
    model = extractor.build(extractor.read_weights(weights10), ("512",))
    volumes = synthetic_volumes(4, (20, 30, 26), seed=8)
    x = torch.stack([prepare_volume(v, input_shape=(16, 32, 32)) for v in volumes])
    with torch.no_grad():
        features = model(x)["512"]
    acc = StatisticsAccumulator()
    acc.update(features)
    assert acc.n == 4 and acc.mean.shape == (512,)


def test_make_test_weights_round_trips(weights10, tmp_path):
    extractor = get_extractor("medicalnet-resnet10")
    raw = torch.load(weights10, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict"} and all(k.startswith("module.") for k in raw["state_dict"])
    again = tmp_path / "again.pth"
    extractor.make_test_weights(again, seed=0)
    first, second = extractor.read_weights(weights10), extractor.read_weights(again)
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    other = tmp_path / "other.pth"
    extractor.make_test_weights(other, seed=1)
    assert not torch.equal(extractor.read_weights(other)["module.conv1.weight"], first["module.conv1.weight"])


def test_wrong_weights_raise_one_line_errors(weights10):
    state = get_extractor("medicalnet-resnet10").read_weights(weights10)
    with pytest.raises(WeightsError) as info:
        get_extractor("medicalnet-resnet50").build(state, ("2048",))
    message = str(info.value)
    assert "\n" not in message and "resnet_50_23dataset.pth" in message
    with pytest.raises(UsageError):
        get_extractor("medicalnet-resnet10").build(state, ("2048",))


def test_registry_entries():
    for depth, dim in ((10, 512), (50, 2048)):
        extractor = get_extractor(f"medicalnet-resnet{depth}")
        assert extractor.dims == (dim,)
        assert extractor.describe()["weights"]["sha256"] == MEDICALNET_WEIGHTS[depth].sha256
        assert set(extractor.conventions()) == {"medicalnet", "zscore"}
        assert extractor.options["volumetric"] is True
