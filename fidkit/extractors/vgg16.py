"""Registry entry ``vgg16``: VGG-16 fc2 features exactly as torch-fidelity 0.4.0 computes them for
precision and recall (Kynkäänniemi et al. 2019), ``calculate_metrics(prc=True)``.

torch-fidelity's ``FeatureExtractorVGG16`` (``feature_extractor_vgg16.py``) loads torchvision's
ImageNet VGG-16 (``VGG16_Weights.IMAGENET1K_V1``, the file ``vgg16-397923af.pth``; with
``feature_extractor_weights_path`` it ``torch.load``s a state dict of the same layout), deletes
``classifier[6]``, ``[5]`` and ``[4]`` so the network ends at fc2, and returns ``fc2`` and
``fc2_relu``; precision/recall use ``fc2_relu`` (``get_default_feature_layer_for_metric``).
Its input: uint8 -> float32, TF1-compatible bilinear resize to 224x224
(``interpolate_bilinear_2d_like_tensorflow1x``, ``align_corners=False``), then
``(x - 255 * mean) / (255 * std)`` with the ImageNet mean/std. That is the one convention here.

Older torch-fidelity and StyleGAN's metrics used NVlabs' TorchScript ``vgg16.pt``; 0.4.0 does not,
so no TorchScript file is read and nothing from a weights file is ever executed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fidkit.extractors import register
from fidkit.extractors.base import IMAGENET_MEAN, IMAGENET_STD, Convention, Extractor, WeightsFile

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: torch-fidelity's ``FeatureExtractorVGG16.INPUT_IMAGE_SIZE``.
INPUT_SIZE = 224

#: torchvision ``VGG16_Weights.IMAGENET1K_V1``, which torch-fidelity 0.4.0 loads
#: (utils_torchvision.torchvision_load_pretrained_vgg16). The URL's "397923af" is the start of the
#: SHA-256 (torchvision checks it); the full hash and the size (torchvision's metadata says
#: 527.796 MiB) agree across several independent records of this file.
VGG16_WEIGHTS = WeightsFile(
    filename="vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    size=553_433_881,
    urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
    licence="unspecified: torchvision (BSD-3-Clause code) says its pretrained models 'may have "
            "their own licenses or terms ... derived from the dataset used for training' "
            "(ImageNet: non-commercial research and education)",
)

_FIX = (f"use torchvision's {VGG16_WEIGHTS.filename} from {VGG16_WEIGHTS.urls[0]} (or 'fidkit "
        "weights make-test' for test weights)")


def _prepare_torch_fidelity(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    from fidkit.preprocess import resize_tf1_bilinear

    x = resize_tf1_bilinear(x.float().contiguous(), (INPUT_SIZE, INPUT_SIZE))
    # torchvision.transforms.functional.normalize with mean/std given on the 0..255 scale:
    # the constants are float32 casts of 255 * mean and 255 * std, applied as (x - m) / s.
    mean = torch.tensor([255 * m for m in IMAGENET_MEAN], dtype=x.dtype, device=x.device)
    std = torch.tensor([255 * s for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


CONVENTIONS: dict[str, Convention] = {
    "torch-fidelity": Convention(
        name="torch-fidelity",
        reproduces="torch-fidelity 0.4.0 FeatureExtractorVGG16 (precision/recall, prc=True)",
        description="TF1 bilinear resize to 224x224 without half-pixel offset, then "
                    "(x - 255 mean) / (255 std) with the ImageNet mean/std",
        prepare=_prepare_torch_fidelity,
    ),
}


class VGG16Extractor(Extractor):
    """VGG-16 to fc2 (:class:`~fidkit.extractors.networks.vgg.VGG16`, torchvision layout)."""

    def conventions(self) -> dict[str, Convention]:
        return dict(CONVENTIONS)

    def read_weights(self, path: Any) -> dict:
        # torchvision's file is a plain state dict in the legacy (pre-zip) container, which
        # torch.load(weights_only=True) reads without running code.
        from fidkit.extractors.networks.torch_files import read_tensor_dict

        return read_tensor_dict(path, network="VGG-16", fix=_FIX)

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.vgg import VGG16, load_vgg16

        return load_vgg16(VGG16(outputs=outputs), state, source="the VGG-16 weights", fix=_FIX)

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        from fidkit.extractors.networks.torch_files import write_tensor_dict

        write_tensor_dict(path, make_test_state(seed))


def make_test_state(seed: int = 0, calibration_images: int = 6, calibration_size: int = 112) -> dict:
    """Deterministic random weights in the layout of ``vgg16-397923af.pth`` (all 16 layers,
    ImageNet classifier included: 138 M parameters, a 528 MiB file).

    Each layer's weights are drawn with He scaling and then, in order, rescaled so that every
    output unit has unit standard deviation on synthetic images (smooth colour fields plus
    texture, prepared as the convention does), with a bias giving it a random mean (sd 0.5), so
    that each ReLU cuts part of a unit's range; the fc2 features then differ between images
    instead of being nearly constant. For tests only."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from fidkit.extractors.networks.vgg import VGG16
    from fidkit.extractors.weights import synthetic_images

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VGG16(outputs=("fc2",))
        images = synthetic_images(calibration_images, size=calibration_size,
                                  generator=torch.Generator().manual_seed(seed + 1))
        x = _prepare_torch_fidelity(images.float())

        def pool(h: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(h, (7, 7)).flatten(1)

        steps = [*net.features, pool, net.classifier[0], torch.relu, net.classifier[3]]
        with torch.no_grad():
            h = x
            for step in steps:
                if isinstance(step, (nn.Conv2d, nn.Linear)):
                    _calibrate(step, h)
                h = step(h)
        classifier = nn.Linear(4096, 1000)  # ImageNet logits: unused, present in the real file
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    state.update({f"classifier.6.{k}": v.detach().clone().contiguous()
                  for k, v in classifier.state_dict().items()})
    return state


def _calibrate(layer: Any, h: "torch.Tensor") -> None:
    """Draw ``layer``'s weights (He scaling), then scale each output unit to unit std over ``h``
    (all images and positions) and give it a random mean, sd 0.5 (see make_test_state)."""
    import torch

    fan_in = layer.weight[0].numel()
    layer.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    layer.bias.zero_()
    out = layer(h)
    dims = (0, 2, 3) if out.dim() == 4 else (0,)
    std = out.std(dim=dims).clamp_min(1e-6)
    mean = out.mean(dim=dims)
    layer.weight.div_(std.view((-1,) + (1,) * (layer.weight.dim() - 1)))
    layer.bias.copy_(-mean / std + 0.5 * torch.randn_like(mean))


VGG16_ENTRY = register(VGG16Extractor(
    name="vgg16",
    description="VGG-16 (torchvision ImageNet weights) fc2 after ReLU, as torch-fidelity 0.4.0 "
                "computes precision/recall",
    weights=VGG16_WEIGHTS,
    taps={"fc2_relu": 4096},
    default_dims=4096,
    default_convention="torch-fidelity",
    convention_names=tuple(CONVENTIONS),
    input_contract="RGB 224x224, (x - 255 mean) / (255 std) with the ImageNet mean "
                   "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), x on 0..255",
    reference="Simonyan & Zisserman, ICLR 2015 (VGG); Kynkäänniemi et al., NeurIPS 2019 "
              "(improved precision and recall); torch-fidelity 0.4.0",
    extra_outputs={"fc2": 4096},
))
