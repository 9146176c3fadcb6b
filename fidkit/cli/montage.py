"""QC montage of a source's inputs as the network sees them (after the convention's resize)."""
from __future__ import annotations

from typing import Any

MAX_TILES = 16


def write_input_montage(src: Any, path: str, *, convention: str = "tf1", recursive: bool = False,
                        dicom: Any = None, **_: Any) -> None:
    import numpy as np

    from fidkit.montage import write_montage
    from fidkit.preprocess import get_convention
    from fidkit.sources import open_source

    source = open_source(src, recursive=recursive, dicom=dicom)
    conv = get_convention(convention)
    count = min(MAX_TILES, len(source))
    picks = np.unique(np.linspace(0, len(source) - 1, count).round().astype(int))
    tiles, labels = [], []
    for index in picks:
        x = conv.prepare_image(source.load(int(index)))
        # Every convention maps 0..255 to about [-1, 1]; undo that for display.
        tile = ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)
        tiles.append(tile)
        labels.append(_short(source.item_name(int(index))))
    write_montage(tiles, labels, path)


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
