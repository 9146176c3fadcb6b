"""Registry entry of the RadImageNet ResNet-50 (Mei et al. 2022) as MONAI's MAISI 2.5-D FID runs it.

MAISI's ``compute_fid_2-5d_ct.py`` (Project-MONAI/tutorials, ``generation/maisi/scripts``) loads
``torch.hub.load("Warvito/radimagenet-models", "radimagenet_resnet50")`` and, per CT volume:

1. clips to [-1000, 1000] HU, optionally resamples / pads (value -1000) / centre-crops;
2. repeats the one channel to three and reorders RGB -> BGR (a no-op on grey data);
3. cuts the volume into slices along one axis and min-max scales the **whole stack** of slices
   to 0..1 (``radimagenet_intensity_normalisation``: ``(v - min) / (max - min + 1e-10)``);
4. subtracts (0.406, 0.456, 0.485) from the (B, G, R) channels (``subtract_mean``): the ImageNet
   means in BGR order on the 0..1 scale; no division by a standard deviation;
5. runs the network on the slices at their own size (no resize) and averages the last stage over
   height and width: one 2048-d vector per slice, an FID per plane (XY, YZ, ZX), and their mean.

Steps 1 and 3 belong to the volume (:mod:`fidkit.dicom`); this module covers the network input:
the ``maisi`` convention turns RGB images on the 0..255 scale into step 4's input (``x / 255``
stands for step 3's scaling, exact for images that span 0..255), and :func:`prepare_unit_slices`
takes slices already scaled to 0..1 by step 3. The network is the shared ResNet-50 of
:mod:`fidkit.extractors.networks.resnet` with the Keras port's flags (stride in the first 1x1
convolution, biased convolutions, batch-norm epsilon 1.001e-5).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor, WeightsFile

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: ``subtract_mean`` of the MAISI script and of monai.losses.perceptual: (B, G, R) on 0..1.
BGR_MEAN = (0.406, 0.456, 0.485)
#: Architecture flags of the Keras ResNet-50 port (see fidkit.extractors.networks.resnet).
ARCHITECTURE = {"stride_in_1x1": True, "conv_bias": True, "bn_eps": 1.001e-5}

#: The PyTorch port of ``RadImageNet-ResNet50_notop.h5`` (a plain state dict, torchvision key names,
#: ``num_batches_tracked`` included). MONAI's perceptual-models hub serves it from Hugging Face;
#: Warvito/radimagenet-models (what the MAISI script loads) from Google Drive.
RADIMAGENET_WEIGHTS = WeightsFile(
    filename="RadImageNet-ResNet50_notop.pth",
    # SHA-256 as Hugging Face lists it for MONAI/checkpoints (file page, "Large File Pointer Details").
    sha256="2457479b254569e5a81ba48fee6c5b2b84b7a729e507aaa2466101aedb8e5c37",
    # TODO(verify): Hugging Face shows "94.5 MB"; the exact byte count was not found. 0 = unknown.
    size=0,
    urls=(
        "https://huggingface.co/MONAI/checkpoints/resolve/main/RadImageNet-ResNet50_notop.pth",
        # TODO(verify): the Google Drive copy is assumed to hold the same bytes (hash unpublished).
        "https://drive.google.com/uc?export=download&id=1VOWHgOq0rm7OkE_JxlWXhMAH4CvcXUHT",
    ),
    # TODO(verify): BMEII-AI/RadImageNet's code is MIT; the RSNA AI model card lists CC BY 4.0.
    licence="CC-BY-4.0 (RadImageNet model card; unverified)",
)
_FIX = ("use RadImageNet-ResNet50_notop.pth (https://huggingface.co/MONAI/checkpoints/resolve/main/"
        "RadImageNet-ResNet50_notop.pth)")


def prepare_unit_slices(x: "torch.Tensor") -> "torch.Tensor":
    """Slices scaled to 0..1 -> the RadImageNet ResNet-50 input, as the MAISI script makes it.

    ``x``: float32 (N, 1, H, W) grey or (N, 3, H, W) RGB on 0..1 (any device). Returns float32
    (N, 3, H, W): grey repeated to three channels, RGB reordered to BGR, then (0.406, 0.456,
    0.485) subtracted from the B, G, R channels. No resize."""
    import torch

    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) slices, got shape {tuple(x.shape)}")
    x = x.float()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.flip(1)
    mean = torch.tensor(BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x - mean


def prepare_maisi(x: "torch.Tensor") -> "torch.Tensor":
    """``maisi`` convention: float32 (N, 3, H, W) RGB on 0..255 -> (N, 3, H, W) network input:
    ``x / 255`` (MAISI's min-max scaling for an image spanning 0..255), then
    :func:`prepare_unit_slices`. No resize: the network sees the image at its own size."""
    return prepare_unit_slices(x.float() / 255.0)


class RadImageNetExtractor(Extractor):
    """RadImageNet ResNet-50 (Keras port), global-average-pooled 2048-d features."""

    def conventions(self) -> dict[str, Convention]:
        return {"maisi": Convention(
            name="maisi",
            reproduces="MONAI MAISI compute_fid_2-5d_ct.py (radimagenet_resnet50) and "
                       "monai.losses.RadImageNetPerceptualSimilarity input",
            description="no resize; x/255, RGB->BGR, minus (0.406, 0.456, 0.485) per B, G, R",
            prepare=prepare_maisi,
        )}

    def read_weights(self, path: Any) -> dict:
        from fidkit.extractors.networks.torch_files import read_tensor_dict

        return read_tensor_dict(path, network="RadImageNet ResNet-50", fix=_FIX)

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.resnet import ResNet50, load_resnet50

        model = ResNet50(outputs=outputs, **ARCHITECTURE)
        # The port keeps torchvision's names: the keys map to themselves.
        load_resnet50(model, state, lambda key: key, source="the RadImageNet weights file", fix=_FIX)
        return model

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        """Deterministic random weights in the layout of ``RadImageNet-ResNet50_notop.pth``
        (torchvision names, conv biases, ``num_batches_tracked``), batch norm calibrated on
        synthetic images so the 2048 features have a real spread. Not comparable to anything
        published."""
        import torch

        from fidkit.extractors.networks.calibration import calibrate_batch_norm
        from fidkit.extractors.networks.resnet import ResNet50
        from fidkit.extractors.weights import synthetic_images
        from fidkit.fileio import atomic_writer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResNet50(**ARCHITECTURE)
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                        module.bias.normal_(0.0, 0.05)
                    elif isinstance(module, torch.nn.BatchNorm2d):
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.normal_(0.0, 0.1)
            images = synthetic_images(8, size=128, generator=torch.Generator().manual_seed(seed + 1))
            calibrate_batch_norm(model, prepare_maisi(images.float()))
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        with atomic_writer(path) as handle:
            torch.save(state, handle)


RADIMAGENET = register(RadImageNetExtractor(
    name="radimagenet-resnet50",
    description="RadImageNet ResNet-50 (Keras port, Warvito/radimagenet-models) as MONAI MAISI's "
                "2.5-D FID runs it",
    weights=RADIMAGENET_WEIGHTS,
    taps={"avgpool": 2048},
    default_dims=2048,
    default_convention="maisi",
    convention_names=("maisi",),
    input_contract="BGR at any size (MAISI: CT slices at their own size), 0..1 minus the BGR "
                   "ImageNet means (0.406, 0.456, 0.485), no division by a std",
    reference="Mei et al. 2022, RadImageNet (Radiology: AI); Guo et al. 2025, MAISI (WACV)",
    options=dict(ARCHITECTURE),
))
