"""MS-SSIM diversity: the mean multi-scale SSIM between random pairs of generated samples.

Medical generative-model papers (MONAI GenerativeModels, MAISI and others) report sample
diversity as the MS-SSIM (Wang, Simoncelli and Bovik 2003) between seeded random pairs of
generated slices (2-D) or volumes (3-D): lower means more diverse. For one pair:

.. math::

    \\mathrm{MS\\text{-}SSIM}(x, y) = \\mathrm{SSIM}_M^{\\,w_M} \\prod_{j=1}^{M-1} \\mathrm{CS}_j^{\\,w_j},
    \\quad \\mathrm{CS} = \\frac{2\\sigma_{xy} + C_2}{\\sigma_x^2 + \\sigma_y^2 + C_2},
    \\quad \\mathrm{SSIM} = \\frac{2\\mu_x\\mu_y + C_1}{\\mu_x^2 + \\mu_y^2 + C_1}\\,\\mathrm{CS}

with local means/variances from a Gaussian window (valid positions only), each map averaged over
the image, negative values set to 0 (``relu``), ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L`` the data
range, and a 2x average pooling between scales.

Parameters and what each peer defaults to:

==================  =================================  ==================================
parameter           MONAI ``MultiScaleSSIMMetric``      ``pytorch_msssim.ms_ssim``
==================  =================================  ==================================
data range L        1.0                                255
kernel              Gaussian 11, sigma 1.5             Gaussian 11, sigma 1.5
k1, k2              0.01, 0.03                         0.01, 0.03
weights (scales)    0.0448 0.2856 0.3001 0.2363 0.1333  the same (5 scales)
pooling             avg 2x2, odd sizes floored          avg 2x2, odd sizes zero-padded
channels            CS/SSIM averaged over channels,     product per channel, then the
                    then the product                    mean over channels
smallest side       > (k - 1) (M - 1)^2 (176 at 11/5)   > (k - 1) 16 (161 at 11)
==================  =================================  ==================================

fidkit has no default data range: it is inferred only for uint8 inputs (255); floats must say
theirs. ``convention="monai"`` (the default) or ``"pytorch_msssim"`` picks the pooling and channel
rules; for one-channel images with even sizes at every scale both give the same value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fidkit.errors import UsageError

DEFAULT_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
CONVENTIONS = ("monai", "pytorch_msssim")


@dataclass
class Diversity:
    """MS-SSIM over random pairs: ``mean`` and ``std`` (ddof 1) over ``pairs`` values, each in 0..1."""

    mean: float
    std: float
    pairs: int
    values: np.ndarray = field(repr=False)
    index_pairs: np.ndarray = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able result with every parameter (for a report or a stats file's meta)."""
        return {"ms_ssim_mean": self.mean, "ms_ssim_std": self.std, "pairs": self.pairs, **self.params}


def ms_ssim(x: Any, y: Any, *, data_range: float, spatial_dims: int = 2, kernel_size: int = 11,
            kernel_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            weights: Sequence[float] = DEFAULT_WEIGHTS, convention: str = "monai",
            precision: str = "float32") -> np.ndarray:
    """MS-SSIM of each pair ``(x[b], y[b])``.

    Args:
        x, y: arrays or tensors ``(B, C, H, W)`` (``spatial_dims=2``) or ``(B, C, D, H, W)`` (3), same
            shape, any real dtype.
        data_range: ``L``, the span of the values (255 for uint8, 1.0 for 0..1, 2000 for HU clipped
            to [-1000, 1000]).
        kernel_size, kernel_sigma: the Gaussian window (odd size, sigma in pixels).
        k1, k2: stability constants.
        weights: one exponent per scale (their count is the number of scales).
        convention: ``"monai"`` or ``"pytorch_msssim"`` (see the module docstring).
        precision: ``"float32"`` (what MONAI always uses, and pytorch_msssim on float32 input: the
            peers' values to ~1e-7) or ``"float64"`` (closer to the exact value; differs from the
            float32 peers by a few 1e-6).

    Returns:
        float64 ``(B,)``, each in 0..1 (1 for identical images).

    Raises:
        UsageError: bad shapes, parameters, or images too small for the scales and window.
    """
    import torch
    import torch.nn.functional as F

    if convention not in CONVENTIONS:
        raise UsageError(f"unknown MS-SSIM convention {convention!r}; use {' or '.join(CONVENTIONS)}")
    if spatial_dims not in (2, 3):
        raise UsageError(f"MS-SSIM spatial_dims must be 2 or 3, got {spatial_dims}")
    if not (kernel_size % 2 == 1 and kernel_size >= 1 and kernel_sigma > 0):
        raise UsageError(f"MS-SSIM kernel must have an odd size and sigma > 0, got {kernel_size}, {kernel_sigma}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise UsageError(f"MS-SSIM data_range must be a positive number, got {data_range}")
    if precision not in ("float32", "float64"):
        raise UsageError(f"MS-SSIM precision must be 'float32' or 'float64', got {precision!r}")
    a = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    b = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if a.shape != b.shape or a.ndim != spatial_dims + 2:
        raise UsageError(f"MS-SSIM needs two ({'B, C, H, W' if spatial_dims == 2 else 'B, C, D, H, W'}) "
                         f"batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    levels = len(weights)
    smallest = min(a.shape[2:])
    need = (kernel_size - 1) * (max(1, levels - 1) ** 2 if convention == "monai" else 2 ** (levels - 1))
    if convention == "monai":
        too_small = smallest // max(1, levels - 1) ** 2 <= kernel_size - 1  # MONAI's own check
    else:
        too_small = smallest <= need
    if too_small:
        raise UsageError(f"MS-SSIM with {levels} scales and an {kernel_size}-pixel window needs images "
                         f"larger than {need} pixels per side, got {tuple(a.shape[2:])}; use fewer "
                         f"scales (weights) or a smaller kernel")
    dtype = {"float32": torch.float32, "float64": torch.float64}[precision]
    a, b = a.to(dtype), b.to(dtype)
    channels = a.shape[1]
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    # The window is built in float32 as both peers build it, then cast.
    coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
    if convention == "monai":
        window = torch.exp(-((coords / kernel_sigma) ** 2) / 2)
    else:  # the same Gaussian, rounded as pytorch_msssim writes it
        window = torch.exp(-(coords ** 2) / (2 * kernel_sigma ** 2))
    window = window / window.sum()
    if convention == "monai":
        # MONAI convolves with the full N-D window (outer product of the 1-D ones)
        full = torch.outer(window, window)
        if spatial_dims == 3:
            full = full[:, :, None] * window[None, None, :]
        kernel = full.to(dtype).expand((channels, 1) + (kernel_size,) * spatial_dims)

        def blur(t: "torch.Tensor") -> "torch.Tensor":
            return conv(t, kernel, groups=channels)
    else:
        line = window.to(dtype)

        def blur(t: "torch.Tensor") -> "torch.Tensor":
            # pytorch_msssim: one valid 1-D pass per axis (the Gaussian is separable)
            for axis in range(spatial_dims):
                shape = [1, 1] + [1] * spatial_dims
                shape[2 + axis] = kernel_size
                t = conv(t, line.view(shape).expand([channels] + shape[1:]), groups=channels)
            return t

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    w = torch.tensor(list(weights), dtype=dtype)
    per_scale = []
    for level in range(levels):
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a * mu_a
        var_b = blur(b * b) - mu_b * mu_b
        cov = blur(a * b) - mu_a * mu_b
        cs = (2 * cov + c2) / (var_a + var_b + c2)
        value = cs if level < levels - 1 else ((2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)) * cs
        if convention == "monai":
            per_scale.append(torch.relu(value.reshape(value.shape[0], -1).mean(1)))  # (B,)
        else:
            per_scale.append(torch.relu(value.flatten(2).mean(-1)))  # (B, C)
        if level < levels - 1:
            padding = [s % 2 for s in a.shape[2:]] if convention == "pytorch_msssim" else 0
            a, b = pool(a, kernel_size=2, padding=padding), pool(b, kernel_size=2, padding=padding)
    stacked = torch.stack(per_scale)
    value = torch.prod(stacked ** w.view([-1] + [1] * (stacked.ndim - 1)), dim=0)
    if convention == "pytorch_msssim":
        value = value.mean(1)
    return value.to(torch.float64).numpy()


def random_pairs(count: int, pairs: int, seed: int = 0) -> np.ndarray:
    """``(P, 2)`` int64 distinct unordered pairs ``i < j`` of ``range(count)``, drawn without
    replacement by ``numpy.random.default_rng(seed)``; all pairs (in order) if ``pairs`` covers them.

    Raises:
        UsageError: fewer than 2 samples or ``pairs < 1``.
    """
    if count < 2 or pairs < 1:
        raise UsageError(f"MS-SSIM diversity needs at least 2 samples and 1 pair, got {count} samples, {pairs} pairs")
    total = count * (count - 1) // 2
    if pairs >= total:
        chosen = np.arange(total, dtype=np.int64)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False)).astype(np.int64)
    # index k of the row-major upper triangle -> (i, j)
    i = (count - 2 - np.floor(np.sqrt(-8.0 * chosen + 4.0 * count * (count - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = chosen + i + 1 - count * (count - 1) // 2 + (count - i) * ((count - i) - 1) // 2
    return np.stack([i, j], axis=1)


def msssim_diversity(samples: Any, *, pairs: int = 1000, seed: int = 0, data_range: float | None = None,
                     spatial_dims: int = 2, batch_size: int = 16, **params: Any) -> Diversity:
    """MS-SSIM between ``pairs`` seeded random pairs of ``samples``: mean and spread.

    Args:
        samples: ``(N, H, W)`` or ``(N, C, H, W)`` slices (``spatial_dims=2``; uint8 HWC images
            ``(N, H, W, 3)`` are taken as such when the last axis is 3 and the second is not), or
            ``(N, D, H, W)`` / ``(N, C, D, H, W)`` volumes (3).
        pairs: how many distinct pairs (all of them when fewer exist).
        seed: the pair draw's seed (recorded).
        data_range: ``L``; inferred as 255 for uint8 only, required for floats.
        spatial_dims: 2 (slices) or 3 (volumes).
        batch_size: pairs per batch.
        **params: :func:`ms_ssim` keywords (kernel_size, kernel_sigma, k1, k2, weights, convention,
            precision).

    Raises:
        UsageError: bad shape, no data range for float samples, or images too small.
    """
    array = np.asarray(samples)
    if data_range is None:
        if array.dtype != np.uint8:
            raise UsageError(f"give data_range for {array.dtype} samples (e.g. 1.0 for 0..1, 2000 for HU "
                             f"-1000..1000); it is inferred (255) only for uint8")
        data_range = 255.0
    if (spatial_dims == 2 and array.ndim == 4 and array.shape[-1] == 3 and array.shape[1] != 3
            and array.dtype == np.uint8):
        array = np.moveaxis(array, -1, 1)  # decoded images (N, H, W, 3) -> (N, 3, H, W)
    elif array.ndim == spatial_dims + 1:
        array = array[:, None]
    if array.ndim != spatial_dims + 2:
        raise UsageError(f"MS-SSIM diversity of {spatial_dims}-D samples needs an array (N, [C,] "
                         f"{'H, W' if spatial_dims == 2 else 'D, H, W'}), got shape {array.shape}")
    index = random_pairs(len(array), pairs, seed)
    values = np.concatenate([
        ms_ssim(array[index[s:s + batch_size, 0]], array[index[s:s + batch_size, 1]], data_range=float(data_range),
                spatial_dims=spatial_dims, **params)
        for s in range(0, len(index), batch_size)
    ])
    record = {"seed": seed, "data_range": float(data_range), "spatial_dims": spatial_dims,
              "kernel_size": params.get("kernel_size", 11), "kernel_sigma": params.get("kernel_sigma", 1.5),
              "k1": params.get("k1", 0.01), "k2": params.get("k2", 0.03),
              "weights": list(params.get("weights", DEFAULT_WEIGHTS)), "convention": params.get("convention", "monai"),
              "precision": params.get("precision", "float32"),
              "samples": int(len(array))}
    return Diversity(mean=float(values.mean()), std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                     pairs=int(len(values)), values=values, index_pairs=index, params=record)
