"""A QC montage: a PNG grid of sample inputs with a label under each, the picture to look at
before trusting a number (wrong window, upside-down slices or padding show at a glance)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from fidkit.errors import UsageError
from fidkit.fileio import atomic_writer

#: Pixels of background around each tile and height of the label band under it.
PAD = 4
LABEL_HEIGHT = 14
BACKGROUND = (32, 32, 32)
TEXT = (230, 230, 230)


def sample_indices(count: int, tiles: int) -> list[int]:
    """Up to ``tiles`` indices spread evenly over ``range(count)``, first and last included."""
    if count <= 0 or tiles <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, min(tiles, count))})


def write_montage(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | os.PathLike,
    columns: int = 8,
    tile: int = 160,
) -> None:
    """Write ``images`` as a grid PNG at ``path`` (atomically), ``labels[i]`` under image ``i``.

    Args:
        images: uint8 ``(H, W, 3)`` (or ``(H, W)`` grey) arrays; each is shrunk (bilinear) to fit a
            ``tile`` x ``tile`` cell, or enlarged by a whole factor (nearest) when at most half its
            size, aspect kept, and centred in the cell.
        labels: one string per image, cut with "..." to the cell width (PIL's default font).
        path: the PNG to write.
        columns: tiles per row (fewer if there are fewer images).
        tile: cell size in pixels.

    Raises:
        UsageError: no images, a label count that differs, an image that is not uint8 HxWx3,
            ``columns`` or ``tile`` below 1.
        InputError: the output folder does not exist or is not writable.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise UsageError("montage: no images to draw")
    if len(labels) != len(images):
        raise UsageError(f"montage: {len(images)} images but {len(labels)} labels")
    if columns < 1 or tile < 1:
        raise UsageError(f"montage: columns and tile must be >= 1, got {columns} and {tile}")
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    cell_w, cell_h = tile + 2 * PAD, tile + LABEL_HEIGHT + 2 * PAD
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for n, (image, label) in enumerate(zip(images, labels)):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
            raise UsageError(f"montage: image {n} must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
        picture = Image.fromarray(np.ascontiguousarray(array), "RGB")
        if max(picture.size) > tile:
            scale = tile / max(picture.size)
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        elif max(picture.size) * 2 <= tile:
            # Small inputs are enlarged by a whole factor with nearest neighbour: every input pixel
            # stays visible as a sharp block, nothing is invented between them.
            factor = tile // max(picture.size)
            picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
        r, c = divmod(n, cols)
        x0, y0 = c * cell_w + PAD, r * cell_h + PAD
        canvas.paste(picture, (x0 + (tile - picture.width) // 2, y0 + (tile - picture.height) // 2))
        draw.text((x0, y0 + tile + 1), _fit(draw, str(label), font, tile), fill=TEXT, font=font)
    with atomic_writer(path) as handle:
        canvas.save(handle, format="PNG")


def _fit(draw, text: str, font, width: int) -> str:  # type: ignore[no-untyped-def]
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]  # keep the end: file names and slice numbers differ there
    return "..." + text
