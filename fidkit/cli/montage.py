"""QC montage of a source's inputs as the network sees them (after the convention's resize)."""
from __future__ import annotations

from typing import Any

MAX_TILES = 16


def write_input_montage(src: Any, path: str, *, features: str | None = None,
                        convention: str | None = None, recursive: bool = False,
                        dicom: Any = None, **_: Any) -> None:
    """Write a grid of up to 16 of ``src``'s images after the extractor's convention (its resize
    and crop), stretched to 0..255 for display; labelled with their names."""
    import numpy as np

    from fidkit.montage import write_montage
    from fidkit.preprocess import get_convention
    from fidkit.sources import open_source

    source = open_source(src, recursive=recursive, dicom=dicom)
    conv = get_convention(convention, features)
    count = min(MAX_TILES, len(source))
    picks = np.unique(np.linspace(0, len(source) - 1, count).round().astype(int))
    tiles, labels = [], []
    for index in picks:
        x = conv.prepare_image(source.load(int(index)))
        # Conventions normalise differently ([-1, 1], ImageNet mean/std): stretch for display.
        pixels = x.permute(1, 2, 0).numpy()
        low, high = float(pixels.min()), float(pixels.max())
        tile = ((pixels - low) * (255.0 / max(high - low, 1e-12))).round().astype(np.uint8)
        tiles.append(tile)
        labels.append(_short(source.item_name(int(index))))
    write_montage(tiles, labels, path)


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
