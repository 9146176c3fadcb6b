"""``--metrics msssim``: the MS-SSIM diversity of a comparison's generated side.

:func:`fidkit.distances.msssim.msssim_diversity` measures an array of samples; this module
decides what the samples of each kind of input are, and reads only the ones the seeded pairs
need (a bounded number at a time), so a large generated set is never loaded whole:

==========================  ==========================================  ==========
input (protocol)            samples                                     data range
==========================  ==========================================  ==========
images, DICOM, volumes      the images / windowed slices as the other   255
(slices; no protocol)       metrics read them, uint8 RGB (C = 3)
``maisi-2.5d``, 2-D         the central XY slice of each MAISI volume   2000
                            (RAS, padded/cropped, HU clipped to
                            [-1000, 1000]): one per volume, so every
                            pair compares two generated volumes
``maisi-2.5d``, 3-D         the MAISI volumes themselves                2000
``volume-3d`` (3-D)         each volume stretched to the network's      1.0
                            input shape, min-max scaled to 0..1 per
                            volume (MONAI GenerativeModels' habit)
==========================  ==========================================  ==========

``dims`` (``--msssim-dims``) picks 2-D or 3-D where both exist (default: 3 for ``volume-3d``,
2 otherwise). ``scales`` (``--msssim-scales``) keeps the first M of the five standard weights,
renormalised to sum to 1 (the five sum to 1), for samples too small for five scales; the
weights used are recorded with every other parameter.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from fidkit.distances.msssim import DEFAULT_WEIGHTS, Diversity, ms_ssim, random_pairs
from fidkit.errors import UsageError

DEFAULT_PAIRS = 1000
#: Bytes of samples kept in memory while the pairs are measured.
CACHE_BYTES = 2 << 30


def scale_weights(scales: int | None) -> tuple[float, ...]:
    """The first ``scales`` standard MS-SSIM weights, renormalised to sum to 1 (None: all five)."""
    if scales is None:
        return DEFAULT_WEIGHTS
    if not 1 <= int(scales) <= len(DEFAULT_WEIGHTS):
        raise UsageError(f"MS-SSIM scales must be 1 to {len(DEFAULT_WEIGHTS)}, got {scales} "
                         "(msssim={'scales': ...} / --msssim-scales)")
    kept = DEFAULT_WEIGHTS[:int(scales)]
    return tuple(w / sum(kept) for w in kept)


def pair_diversity(count: int, load: Callable[[int], np.ndarray], *, data_range: float,
                   spatial_dims: int, pairs: int = DEFAULT_PAIRS, seed: int = 0,
                   batch_size: int = 16, sample: str = "", **params: Any) -> Diversity:
    """MS-SSIM over ``pairs`` seeded pairs of ``count`` samples that ``load(i)`` gives as float or
    uint8 ``(C, H, W)`` (2-D) or ``(C, D, H, W)`` (3-D) arrays of one shape. The same pairs, batches
    and arithmetic as :func:`~fidkit.distances.msssim.msssim_diversity` on the stacked samples.
    ``params``: :func:`~fidkit.distances.msssim.ms_ssim` keywords. Raises UsageError."""
    index = random_pairs(count, pairs, seed)
    cache: OrderedDict[int, np.ndarray] = OrderedDict()
    limit = [count]

    def get(i: int) -> np.ndarray:
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        x = np.asarray(load(i))
        if x.ndim != spatial_dims + 1:
            raise UsageError(f"MS-SSIM sample {i} has shape {x.shape}; expected (C, "
                             f"{'H, W' if spatial_dims == 2 else 'D, H, W'})")
        if cache and x.shape != next(iter(cache.values())).shape:
            raise UsageError(f"MS-SSIM needs samples of one size: {x.shape} vs "
                             f"{next(iter(cache.values())).shape}; resample or crop the generated "
                             "set to one size first")
        limit[0] = max(4, CACHE_BYTES // max(x.nbytes, 1))
        cache[i] = x
        while len(cache) > limit[0]:
            cache.popitem(last=False)
        return x

    values = []
    try:
        for start in range(0, len(index), batch_size):
            block = index[start:start + batch_size]
            a = np.stack([get(int(i)) for i in block[:, 0]])
            b = np.stack([get(int(j)) for j in block[:, 1]])
            values.append(ms_ssim(a, b, data_range=float(data_range), spatial_dims=spatial_dims,
                                  **params))
    except UsageError as exc:
        if "larger than" in str(exc):
            raise UsageError(f"{exc} (msssim= scales / kernel_size, --msssim-scales / "
                             "--msssim-kernel)") from None
        raise
    result = np.concatenate(values)
    record = {"seed": seed, "data_range": float(data_range), "spatial_dims": spatial_dims,
              "kernel_size": params.get("kernel_size", 11),
              "kernel_sigma": params.get("kernel_sigma", 1.5), "k1": params.get("k1", 0.01),
              "k2": params.get("k2", 0.03), "weights": list(params.get("weights", DEFAULT_WEIGHTS)),
              "convention": params.get("convention", "monai"),
              "precision": params.get("precision", "float32"), "samples": int(count),
              "sample": sample}
    return Diversity(mean=float(result.mean()),
                     std=float(result.std(ddof=1)) if len(result) > 1 else 0.0,
                     pairs=int(len(result)), values=result, index_pairs=index, params=record)


def _params(scales: int | None, kernel_size: int | None, params: dict[str, Any]) -> dict[str, Any]:
    if scales is not None:
        if "weights" in params:
            raise UsageError("give MS-SSIM weights or scales, not both")
        params["weights"] = scale_weights(scales)
    if kernel_size is not None:
        params["kernel_size"] = int(kernel_size)
    return params


def source_diversity(source: Any, *, pairs: int = DEFAULT_PAIRS, seed: int = 0,
                     dims: int | None = None, scales: int | None = None,
                     kernel_size: int | None = None, recursive: bool = False, dicom: Any = None,
                     batch_size: int = 16, **params: Any) -> Diversity:
    """MS-SSIM diversity of the images (or windowed slices) of ``source``, anything
    :func:`fidkit.sources.open_source` reads: uint8 RGB, data range 255. Raises UsageError
    (``dims`` 3, images of several sizes, too small for the scales), InputError."""
    from fidkit.sources import open_source

    if dims not in (None, 2):
        raise UsageError("3-D MS-SSIM needs volumes: add protocol='maisi-2.5d' (--protocol "
                         "maisi-2.5d) or a 3-D extractor (features='medicalnet-resnet10' / "
                         "--features medicalnet-resnet10)")
    src = open_source(source, recursive=recursive, dicom=dicom)
    return pair_diversity(len(src), lambda i: np.moveaxis(np.asarray(src.load(i)), -1, 0),
                          data_range=255.0, spatial_dims=2, pairs=pairs, seed=seed,
                          batch_size=batch_size, sample="images as read (uint8 RGB)",
                          **_params(scales, kernel_size, params))


def volume_diversity(source: Any, protocol: str, *, maisi: Any = None,
                     volume_shape: Sequence[int] | None = None,
                     spacing: Sequence[float | None] | None = None, recursive: bool = False,
                     pairs: int = DEFAULT_PAIRS, seed: int = 0, dims: int | None = None,
                     scales: int | None = None, kernel_size: int | None = None,
                     batch_size: int = 16, features: Any = None, **params: Any) -> Diversity:
    """MS-SSIM diversity of a volume dataset's volumes under ``protocol`` (``"maisi-2.5d"`` or
    ``"volume-3d"``); the samples are those of the module's table. ``volume_shape``: volume-3d's
    input shape (None: ``features``' own, MedicalNet's 56 x 448 x 448). Raises UsageError,
    InputError."""
    from fidkit.volumes import MAISI, VOLUME_3D, open_volumes

    params = _params(scales, kernel_size, params)
    src = open_volumes(source, recursive=recursive, spacing=spacing, protocol=protocol)
    count = len(src.entries)
    if protocol == MAISI:
        from fidkit.dicom.maisi import MaisiOptions, center_range, maisi_volume

        options = maisi or MaisiOptions()
        spatial = 2 if dims is None else int(dims)

        def load(n: int) -> np.ndarray:
            array = maisi_volume(src.volume(n), options)  # (x, y, z), HU in [-1000, 1000]
            if spatial == 3:
                return array[None]
            keep = center_range(array.shape[2], options.center_slices_ratio)
            return array[None, :, :, keep.start + len(keep) // 2]

        what = ("MAISI volumes (HU clipped)" if spatial == 3
                else "central XY slice of each MAISI volume (HU clipped)")
        return pair_diversity(count, load, data_range=2000.0, spatial_dims=spatial, pairs=pairs,
                              seed=seed, batch_size=batch_size, sample=what, **params)
    if protocol != VOLUME_3D:
        raise UsageError(f"unknown protocol {protocol!r}")
    if dims not in (None, 3):
        raise UsageError("volume-3d measures whole volumes (msssim dims 3 / --msssim-dims 3); for "
                         "slices compare without a 3-D extractor")
    from fidkit.dicom.volume import canonical
    from fidkit.extractors import get_extractor
    from fidkit.extractors.medicalnet import stretch

    shape = tuple(int(s) for s in (volume_shape or get_extractor(
        features or "medicalnet-resnet10").options["input_shape"]))

    def load3(n: int) -> np.ndarray:
        array = stretch(np.asarray(canonical(src.volume(n)).array, dtype=np.float32), shape)
        low, high = float(array.min()), float(array.max())
        return ((array - low) / max(high - low, 1e-12)).astype(np.float32)[None]

    return pair_diversity(count, load3, data_range=1.0, spatial_dims=3, pairs=pairs, seed=seed,
                          batch_size=batch_size,
                          sample=f"volumes stretched to {list(shape)}, min-max 0..1 per volume",
                          **params)
