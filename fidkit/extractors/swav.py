"""Registry entry ``swav-resnet50``: the SwAV ResNet-50 (Caron et al., NeurIPS 2020) of
facebookresearch/swav, 800 epochs on ImageNet without labels, pooled 2048-d features.

Its Fréchet distance ("SwAV-FD") is the one Woodland et al. (MICCAI 2024, "Feature extraction for
generative medical imaging evaluation", github.com/mckellwoodland/fid-med-eval) found to agree
with radiologists' rankings. They computed it with PyTorch-StudioGAN (their fork) as
``evaluate.py --eval_backbone SwAV_torch --post_resizer clean``; that recipe is the default
convention here. dgm-eval (Stein et al., NeurIPS 2023) computes SwAV features with another
resize, available as the second convention.

The file is a plain state dict of swav's ``resnet50`` trained under DistributedDataParallel:
keys carry a ``module.`` prefix, and the projection head (``projection_head.*``) and the
prototypes (``prototypes.weight``) that trained it are dropped here, as swav's ``hubconf.py`` does
(it loads the rest into torchvision's ``resnet50`` with ``strict=False``). The network is
:mod:`fidkit.extractors.networks.resnet` with torchvision's layout; the features are the input of
``fc`` (the global average of ``layer4``), which is what StudioGAN hooks.

| convention        | resize                                                   | normalise | reproduces |
|-------------------|----------------------------------------------------------|-----------|------------|
| `studiogan-clean` | PIL bicubic to 224x224, each channel in float32, no clip | x/255, ImageNet mean/std | StudioGAN `--post_resizer clean` (Woodland et al. 2024) |
| `dgm-eval`        | torchvision `Resize(224)` on the PIL image: shorter side to 224, PIL bilinear, uint8 | x/255, ImageNet mean/std | dgm-eval `swav` encoder |
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fidkit.extractors import register
from fidkit.extractors.base import IMAGENET_MEAN, IMAGENET_STD, Convention, Extractor, WeightsFile

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Side of the square input of the default convention (StudioGAN's ``res`` for SwAV_torch).
INPUT_SIZE = 224

#: facebookresearch/swav README, "Model zoo": SwAV, 800 epochs, batch 4096, 75.3 % linear top-1.
SWAV_WEIGHTS = WeightsFile(
    filename="swav_800ep_pretrain.pth.tar",
    # TODO(verify): facebookresearch/swav publishes no SHA-256 or size for this file and none
    # could be found elsewhere; fill both in from the real download. Until then no download can
    # be verified, so the file must be fetched by hand and passed as weights=PATH (--weights).
    sha256="",
    size=0,
    urls=("https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",),
    licence="CC-BY-NC-4.0 (facebookresearch/swav LICENSE, Attribution-NonCommercial 4.0 "
            "International: no commercial use)",
)

_FIX = (f"use {SWAV_WEIGHTS.filename} from {SWAV_WEIGHTS.urls[0]} (or 'fidkit weights "
        "make-test' for test weights)")
#: Keys of the SwAV training head in the file; the features do not use them.
_HEAD_PREFIXES = ("projection_head.", "prototypes.")


def swav_key(key: str) -> str | None:
    """The torchvision ResNet-50 key of a key of the SwAV file (None for the training head)."""
    if key.startswith("module."):
        key = key[len("module."):]
    return None if key.startswith(_HEAD_PREFIXES) else key


# -- conventions ----------------------------------------------------------------------------------

def _normalise_imagenet(x: "torch.Tensor") -> "torch.Tensor":
    """(x / 255 - mean) / std in float32, the order StudioGAN's and torchvision's code use."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def resize_pil_bicubic_float_unclipped(x: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """StudioGAN's "clean" resize: each channel as a float32 PIL image (mode ``F``) resized with
    PIL's bicubic filter (antialiased when shrinking), values left as they come out (bicubic
    overshoot below 0 and above 255 is kept: unlike clean-fid, StudioGAN does not clip).

    x: float (N, C, H, W) on the 0..255 scale, any device; returns float32 (N, C, *size) on
    x's device. Computed by PIL on the CPU so that its filter is matched to the last bit."""
    import numpy as np
    import torch
    from PIL import Image

    n, c, h, w = x.shape
    out_h, out_w = size
    planes = x.detach().to("cpu", torch.float32).numpy()
    out = np.empty((n, c, out_h, out_w), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(np.ascontiguousarray(planes[i, ch]))  # float32 -> mode "F"
            out[i, ch] = np.asarray(img.resize((out_w, out_h), resample=Image.BICUBIC))
    return torch.from_numpy(out).to(x.device)


def shorter_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(short)`` output (height, width): the shorter side becomes ``short``
    and the longer ``int(short * long / shorter)`` (truncated, as torchvision does)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def resize_pil_bilinear_shorter_side(x: "torch.Tensor", short: int) -> "torch.Tensor":
    """torchvision ``Resize(short)`` applied to a PIL RGB image: PIL's bilinear filter
    (antialiased when shrinking) on the uint8 image, the result rounded to uint8 by PIL.

    x: float (N, 3, H, W) holding integers 0..255 (decoded images), any device; returns float32
    (N, 3, h, w) on the 0..255 scale on x's device, with (h, w) from :func:`shorter_side_size`."""
    from fidkit.preprocess.resize import resize_pil_uint8

    return resize_pil_uint8(x, shorter_side_size(x.shape[-2], x.shape[-1], short), "bilinear")


def _prepare_studiogan_clean(x: "torch.Tensor") -> "torch.Tensor":
    return _normalise_imagenet(resize_pil_bicubic_float_unclipped(x, (INPUT_SIZE, INPUT_SIZE)))


def _prepare_dgm_eval(x: "torch.Tensor") -> "torch.Tensor":
    return _normalise_imagenet(resize_pil_bilinear_shorter_side(x, INPUT_SIZE))


CONVENTIONS: dict[str, Convention] = {
    "studiogan-clean": Convention(
        name="studiogan-clean",
        reproduces="PyTorch-StudioGAN evaluate.py --eval_backbone SwAV_torch --post_resizer clean "
                   "(mckellwoodland fork; Woodland et al., MICCAI 2024, SwAV-FD)",
        description="PIL bicubic resize to 224x224 per channel in float32 (no clipping), then "
                    "x/255 normalised by the ImageNet mean/std",
        prepare=_prepare_studiogan_clean,
        batched_on_device=False,
    ),
    "dgm-eval": Convention(
        name="dgm-eval",
        reproduces="dgm-eval (Stein et al., NeurIPS 2023) encoder 'swav': torchvision Resize(224), "
                   "ToTensor, Normalize",
        description="shorter side to 224 (aspect kept) with PIL bilinear on the uint8 image, then "
                    "x/255 normalised by the ImageNet mean/std",
        prepare=_prepare_dgm_eval,
        batched_on_device=False,
    ),
}


# -- the extractor --------------------------------------------------------------------------------

class SwAVExtractor(Extractor):
    """SwAV ResNet-50 (:class:`~fidkit.extractors.networks.resnet.ResNet50`, torchvision layout)."""

    def conventions(self) -> dict[str, Convention]:
        return dict(CONVENTIONS)

    def read_weights(self, path: Any) -> dict:
        from fidkit.extractors.networks.torch_files import read_tensor_dict

        return read_tensor_dict(path, network="SwAV ResNet-50", fix=_FIX)

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.resnet import ResNet50, load_resnet50

        model = ResNet50(outputs=outputs)
        return load_resnet50(model, state, swav_key, source="the SwAV weights", fix=_FIX)

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        from fidkit.extractors.networks.torch_files import write_tensor_dict

        write_tensor_dict(path, make_test_state(seed))


def make_test_state(seed: int = 0, calibration_images: int = 8) -> dict:
    """Deterministic random weights in the layout of ``swav_800ep_pretrain.pth.tar``: the
    ResNet-50 trunk plus the projection head (2048 -> 2048 -> BN -> 128) and 3000 prototypes,
    every key prefixed ``module.``, batch norms with ``num_batches_tracked``.

    Batch-norm scales and shifts are random, and the running statistics are calibrated on
    synthetic images (smooth colour fields plus texture, ImageNet-normalised), so that the pooled
    features have a real spread across images. For tests only: not comparable to anything."""
    import torch
    from torch import nn

    from fidkit.extractors.networks.resnet import ResNet50
    from fidkit.extractors.weights import synthetic_images

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = ResNet50()
        bns = [m for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            for m in trunk.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            for bn in bns:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.25, 0.25)
                bn.reset_running_stats()
                bn.momentum = None  # a plain average over the calibration batch
                bn.training = True  # this pass only; the module itself stays pinned to eval
            images = synthetic_images(calibration_images, size=INPUT_SIZE,
                                      generator=torch.Generator().manual_seed(seed + 1))
            trunk(_normalise_imagenet(images.float()))
        for bn in bns:
            bn.training = False
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(1000 + seed)  # like a trained file's counters
        head = nn.Sequential(nn.Linear(2048, 2048), nn.BatchNorm1d(2048), nn.ReLU(),
                             nn.Linear(2048, 128))
        with torch.no_grad():
            head[1].running_mean.normal_(0, 0.1)
            head[1].running_var.uniform_(0.5, 2.0)
        prototypes = nn.Linear(128, 3000, bias=False)
    state: dict[str, torch.Tensor] = {}
    for prefix, module in (("", trunk), ("projection_head.", head), ("prototypes.", prototypes)):
        for key, tensor in module.state_dict().items():
            state[f"module.{prefix}{key}"] = tensor.detach().clone().contiguous()
    return state


SWAV_RESNET50 = register(SwAVExtractor(
    name="swav-resnet50",
    description="SwAV ResNet-50 (facebookresearch/swav, 800 epochs, ImageNet without labels), "
                "global-average-pooled layer4",
    weights=SWAV_WEIGHTS,
    taps={"avgpool": 2048},
    default_dims=2048,
    default_convention="studiogan-clean",
    convention_names=tuple(CONVENTIONS),
    input_contract="RGB, 224x224 (studiogan-clean) or shorter side 224 (dgm-eval), x/255 "
                   "normalised by the ImageNet mean (0.485, 0.456, 0.406) and std "
                   "(0.229, 0.224, 0.225)",
    reference="Caron et al., NeurIPS 2020 (SwAV); Woodland et al., MICCAI 2024 (SwAV-FD for "
              "medical images)",
    options={"architecture": "resnet50", "stride_in_1x1": False, "conv_bias": False,
             "bn_eps": 1e-5},
))
