"""Registry entries of the MedicalNet 3-D ResNets (``medicalnet-resnet10``, ``medicalnet-resnet50``)
and the volume preparation they need.

These networks take volumes, not images. A convention's ``prepare`` here maps float32
(N, 1, D, H, W) intensity volumes (already at the network's input shape) to normalised volumes of
the same shape; :func:`prepare_volume` does the whole way from one (D, H, W) array:

    (D, H, W) intensities ──► [resample to a spacing] ──► input shape ──► normalise ──► (1, D', H', W')

* **Input shape.** MedicalNet's test-time rule (``datasets/brains18.py``,
  ``__resize_data__``) stretches every volume to the input shape with nearest-neighbour
  ``scipy.ndimage.zoom`` and ignores the voxel spacing: ``resize="stretch"``, the default. Its
  training setting (``setting.py``) is 56 x 448 x 448 (D x H x W), the default here
  (:data:`DEFAULT_INPUT_SHAPE`); ``input_shape=`` changes it (the network takes any size, the
  features depend on it). ``resize="crop-or-pad"`` keeps the mm scale instead (centre crop / pad as
  MONAI's ``CenterSpatialCrop`` / ``SpatialPad``, the MAISI script's steps), usually after
  ``target_spacing_mm=`` (resampled with :func:`fidkit.dicom.resample.resample`); ``"none"``
  feeds the volume as it is.
* **Intensity.** ``medicalnet`` (default): MedicalNet's ``__itensity_normalize_one_volume__``,
  a z-score with the mean and (population) standard deviation of the voxels above 0, and voxels
  equal to 0 (background) replaced by standard normal noise; MedicalNet draws that noise anew on
  every call, fidkit from a fixed seed per volume, so features are deterministic. It expects a
  non-negative image whose background is 0 (MR; CT shifted so air is 0). ``zscore``: mean and
  (unbiased) standard deviation of all voxels, as MONAI's ``MedicalNetPerceptualSimilarity``
  (``medicalnet_intensity_normalisation``) does, for images with no zero background (CT in HU).

Features are the pooled last stage of the network, (N, 512) or (N, 2048): feed them to the same
statistics and Fréchet distance as any other extractor's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor, WeightsFile

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

#: MedicalNet's training input (``setting.py``: input_D, input_H, input_W), D x H x W voxels.
DEFAULT_INPUT_SHAPE: tuple[int, int, int] = (56, 448, 448)
#: How a volume reaches the input shape (see the module docstring).
RESIZE_MODES: tuple[str, ...] = ("stretch", "crop-or-pad", "none")
#: Seed of the background noise of the ``medicalnet`` normalisation (the same for every volume).
BACKGROUND_SEED = 0

_HF = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth}/resolve/main/{file}"

#: The "23 datasets" weights, as MONAI's ``get_pretrained_resnet_medicalnet`` fetches them with
#: ``hf_hub_download``: ``{"state_dict": {"module.<key>": tensor}}``. SHA-256 and sizes as the
#: Hugging Face pages list them (file page / LFS pointer of the upload commit).
MEDICALNET_WEIGHTS: dict[int, WeightsFile] = {
    10: WeightsFile(
        filename="resnet_10_23dataset.pth",
        sha256="afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605",
        # TODO(verify): the page shows "57.5 MB"; the exact byte count was not found. 0 = unknown.
        size=0,
        urls=(_HF.format(depth=10, file="resnet_10_23dataset.pth"),),
        licence="MIT",
    ),
    50: WeightsFile(
        filename="resnet_50_23dataset.pth",
        sha256="ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e",
        size=184_885_051,
        urls=(_HF.format(depth=50, file="resnet_50_23dataset.pth"),),
        licence="MIT",
    ),
}


# -- intensity normalisation (the conventions) -----------------------------------------------------

def normalise_medicalnet(x: "torch.Tensor") -> "torch.Tensor":
    """``medicalnet`` convention: float (N, 1, D, H, W) -> float32, per volume
    ``(v - mean) / std`` over the voxels ``v > 0`` (population std; 1 if it is 0), then voxels
    ``v == 0`` set to standard normal noise from a generator seeded with :data:`BACKGROUND_SEED`
    (so a volume's result does not depend on the batch it is in). Raises InputError for a volume
    with no voxel above 0."""
    import torch

    from fidkit.errors import InputError

    _check_volumes(x)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i in range(x.shape[0]):
        v = x[i].double()
        foreground = v[v > 0]
        if foreground.numel() == 0:
            raise InputError(f"volume {i} of the batch has no voxel above 0, which MedicalNet's "
                             "normalisation needs (background 0, tissue > 0); use convention "
                             "'zscore' for CT in HU or shift the intensities")
        mean = foreground.mean()
        std = foreground.std(unbiased=False)
        z = (v - mean) / (std if std > 0 else 1.0)
        noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(BACKGROUND_SEED),
                            dtype=torch.float64).to(v.device)
        out[i] = torch.where(v == 0, noise, z).float()
    return out


def normalise_zscore(x: "torch.Tensor") -> "torch.Tensor":
    """``zscore`` convention: float (N, 1, D, H, W) -> float32, per volume ``(v - mean) / std``
    over all its voxels, std unbiased (``torch.std``), as MONAI's
    ``medicalnet_intensity_normalisation`` computes it for one volume. A constant volume gives 0."""
    import torch

    _check_volumes(x)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i in range(x.shape[0]):
        v = x[i].float()
        std = v.std()
        out[i] = (v - v.mean()) / std if std > 0 else torch.zeros_like(v)
    return out


def _check_volumes(x: "torch.Tensor") -> None:
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"expected (N, 1, D, H, W) volumes, got shape {tuple(x.shape)}")


CONVENTIONS: dict[str, Convention] = {
    "medicalnet": Convention(
        name="medicalnet",
        reproduces="Tencent/MedicalNet datasets/brains18.py (__itensity_normalize_one_volume__)",
        description="volumes (N,1,D,H,W): z-score over voxels > 0, background (== 0) -> seeded "
                    "N(0,1) noise",
        prepare=normalise_medicalnet,
    ),
    "zscore": Convention(
        name="zscore",
        reproduces="monai.losses.MedicalNetPerceptualSimilarity (medicalnet_intensity_normalisation)",
        description="volumes (N,1,D,H,W): z-score over all voxels (unbiased std)",
        prepare=normalise_zscore,
    ),
}


# -- spatial preparation ---------------------------------------------------------------------------

def prepare_volume(
    volume: "np.ndarray",
    spacing_mm: Sequence[float] | None = None,
    *,
    target_spacing_mm: Sequence[float | None] | None = None,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    resize: str = "stretch",
    convention: str = "medicalnet",
    pad_value: float | None = None,
) -> "torch.Tensor":
    """One volume -> the MedicalNet input: float32 (1, D', H', W') on the CPU.

    Args:
        volume: (D, H, W) = (z, y, x) intensities (HU for CT), any real dtype.
        spacing_mm: (z, y, x) voxel spacing in mm; needed only with ``target_spacing_mm``.
        target_spacing_mm: resample to this (z, y, x) spacing first (linear;
            :func:`fidkit.dicom.resample.resample`, ``None`` entries keep an axis).
        input_shape: (D', H', W') for ``resize`` "stretch" and "crop-or-pad".
        resize: "stretch" (MedicalNet: nearest-neighbour zoom to ``input_shape``, aspect and
            spacing ignored), "crop-or-pad" (centre crop / pad to ``input_shape``, as MONAI's
            CenterSpatialCrop / SpatialPad) or "none".
        convention: intensity normalisation, "medicalnet" or "zscore" (see the module docstring).
        pad_value: value of padded voxels for "crop-or-pad" (default: the volume's minimum).

    Raises:
        UsageError: unknown ``resize`` / ``convention``, a bad ``input_shape``, or
            ``target_spacing_mm`` without ``spacing_mm``.
        InputError: ``volume`` is not a finite 3-D array (or, for "medicalnet", has no voxel > 0).
    """
    import numpy as np
    import torch

    from fidkit.errors import InputError, UsageError

    if resize not in RESIZE_MODES:
        raise UsageError(f"unknown resize {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    if convention not in CONVENTIONS:
        raise UsageError(f"unknown convention {convention!r} for MedicalNet; choose from "
                         f"{', '.join(CONVENTIONS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"input_shape must be three positive voxel counts (D, H, W), got {list(input_shape)}")
    array = np.asarray(volume)
    if array.ndim != 3 or array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"expected a (D, H, W) volume of numbers, got shape {array.shape} "
                         f"dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise InputError("the volume holds NaN or infinite values; mask or fill them first")
    if target_spacing_mm is not None:
        if spacing_mm is None:
            raise UsageError("target_spacing_mm needs the volume's spacing_mm (z, y, x)")
        array = _resample(array, spacing_mm, target_spacing_mm)
    if resize == "stretch":
        array = stretch(array, shape)
    elif resize == "crop-or-pad":
        array = centre_crop_or_pad(array, shape, float(array.min()) if pad_value is None else pad_value)
    x = torch.from_numpy(np.ascontiguousarray(array)).reshape(1, 1, *array.shape)
    return CONVENTIONS[convention].prepare(x)[0]


def stretch(array: "np.ndarray", shape: Sequence[int]) -> "np.ndarray":
    """MedicalNet's ``__resize_data__``: ``scipy.ndimage.zoom(order=0)`` with factors
    ``shape / array.shape`` (nearest neighbour, spacing ignored). Returns ``shape`` exactly."""
    import numpy as np
    from scipy import ndimage

    factors = [t / s for t, s in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=0)
    if out.shape != tuple(shape):  # zoom rounds each axis' size; a float slip is one voxel at most
        out = centre_crop_or_pad(out, shape, float(out.min()))
    return np.asarray(out, dtype=np.float32)


def centre_crop_or_pad(array: "np.ndarray", shape: Sequence[int], value: float) -> "np.ndarray":
    """Crop or pad each axis of ``array`` to ``shape`` around its centre: a crop keeps
    ``[n//2 - m//2, n//2 - m//2 + m)`` (MONAI CenterSpatialCrop), a pad puts ``(m - n)//2`` voxels
    of ``value`` before and the rest after (MONAI SpatialPad, symmetric)."""
    import numpy as np

    slices, pads = [], []
    for n, m in zip(array.shape, shape):
        if n > m:
            start = n // 2 - m // 2
            slices.append(slice(start, start + m))
            pads.append((0, 0))
        else:
            slices.append(slice(0, n))
            pads.append(((m - n) // 2, m - n - (m - n) // 2))
    cropped = array[tuple(slices)]
    return np.pad(cropped, pads, mode="constant", constant_values=value)


def _resample(array: "np.ndarray", spacing_mm: Sequence[float],
              target_spacing_mm: Sequence[float | None]) -> "np.ndarray":
    import numpy as np

    from fidkit.dicom.resample import resample
    from fidkit.dicom.volume import Volume
    from fidkit.errors import UsageError

    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UsageError(f"spacing_mm must be three positive mm values (z, y, x), got {list(spacing_mm)}")
    source = Volume(array=array, spacing=spacing,  # type: ignore[arg-type]
                    positions=np.arange(array.shape[0], dtype=np.float64) * spacing[0],
                    origin=np.zeros(3), orientation=np.eye(3))
    return resample(source, tuple(target_spacing_mm), order=1).array


def synthetic_volumes(count: int, shape: Sequence[int] = (16, 32, 32), seed: int = 0) -> "np.ndarray":
    """Deterministic float32 (count, D, H, W) test volumes: smooth random tissue 20..1020 inside
    an ellipsoid of random size, background exactly 0 (what MedicalNet's normalisation expects)."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    d, h, w = (int(s) for s in shape)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (d, h, w)), indexing="ij"))
    out = np.empty((count, d, h, w), dtype=np.float32)
    for i in range(count):
        coarse = rng.random((4, 5, 5))
        smooth = ndimage.zoom(coarse, (d / 4, h / 5, w / 5), order=1)[:d, :h, :w]
        texture = rng.random((d, h, w)) * rng.random()
        radii = rng.uniform(0.5, 0.95, size=3)
        inside = ((grid / radii.reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1.0
        out[i] = np.where(inside, 20.0 + 800.0 * smooth + 200.0 * texture, 0.0)
    return out


# -- the registry entries ----------------------------------------------------------------------------

class MedicalNetExtractor(Extractor):
    """A MedicalNet 3-D ResNet (``options``: depth, dilated, input_shape); input volumes."""

    def conventions(self) -> dict[str, Convention]:
        return dict(CONVENTIONS)

    def read_weights(self, path: Any) -> dict:
        from fidkit.extractors.networks.torch_files import read_tensor_dict

        return read_tensor_dict(path, network=f"MedicalNet ResNet-{self.options['depth']}",
                                fix=self._fix())

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.medicalnet import MedicalNetResNet

        model = MedicalNetResNet(self.options["depth"], dilated=self.options["dilated"], outputs=outputs)
        model.load_weights(state, source=f"the MedicalNet ResNet-{self.options['depth']} weights file")
        return model

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        """Deterministic random weights in the published layout (``{"state_dict":
        {"module.<key>": tensor}}``), batch norm calibrated on :func:`synthetic_volumes` so
        the features have a real spread. Not comparable to anything published."""
        import torch

        from fidkit.extractors.networks.calibration import calibrate_batch_norm
        from fidkit.extractors.networks.medicalnet import MedicalNetResNet
        from fidkit.fileio import atomic_writer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MedicalNetResNet(self.options["depth"], dilated=self.options["dilated"])
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.Conv3d):
                        torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    elif isinstance(module, torch.nn.BatchNorm3d):
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.normal_(0.0, 0.1)
            volumes = torch.from_numpy(synthetic_volumes(6, (16, 32, 32), seed=seed + 1))
            calibrate_batch_norm(model, normalise_medicalnet(volumes.unsqueeze(1)))
        state = {"module." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
        with atomic_writer(path) as handle:
            torch.save({"state_dict": state}, handle)

    def _fix(self) -> str:
        w = self.weights
        return f"use {w.filename} ({w.urls[0]})" if w is not None else "use MedicalNet's published file"


def _entry(depth: int) -> MedicalNetExtractor:
    from_dim = {10: 512, 50: 2048}[depth]
    return MedicalNetExtractor(
        name=f"medicalnet-resnet{depth}",
        description=f"MedicalNet 3-D ResNet-{depth} (Med3D, 23 datasets), pooled last stage; "
                    "takes volumes",
        weights=MEDICALNET_WEIGHTS[depth],
        taps={str(from_dim): from_dim},
        default_dims=from_dim,
        default_convention="medicalnet",
        convention_names=tuple(CONVENTIONS),
        input_contract="one-channel volumes (N, 1, D, H, W), default 56x448x448 (stretched, "
                       "MedicalNet's rule), z-scored per volume by the convention",
        reference="Chen, Ma and Zheng 2019, Med3D: Transfer Learning for 3D Medical Image Analysis",
        options={"depth": depth, "dilated": True, "input_shape": DEFAULT_INPUT_SHAPE,
                 "resize": "stretch", "volumetric": True},
    )


MEDICALNET_RESNET10 = register(_entry(10))
MEDICALNET_RESNET50 = register(_entry(50))
