"""Finding and decoding image files: every image becomes uint8 (H, W, 3) RGB by a documented rule.

Conversion rules (the same as pytorch-fid's and torch-fidelity's ``Image.convert("RGB")`` wherever
the peers can read the file, so numbers match):

* grayscale (``L``, ``1``) is replicated to three channels;
* alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is dropped, not composited;
* palette (``P``) images are expanded through their palette; ``CMYK``/``YCbCr``/``LAB`` go
  through PIL's conversion to RGB;
* 16-bit images (grayscale ``I;16`` PNG/TIFF, and 16-bit RGB/RGBA PNG) are scaled to 8 bits with
  ``round(v * 255 / 65535)`` — not truncated to the high byte;
* EXIF orientation is not applied: the pixels are used as stored, as every peer does;
* images over :data:`fidkit.defaults.MAX_IMAGE_PIXELS` pixels are refused as decompression bombs.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from fidkit.defaults import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from fidkit.errors import BadImageError, InputError


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (suffixes of :data:`IMAGE_SUFFIXES`, any case), sorted by their
    path relative to the folder so the order never depends on the file system. Hidden files
    (``.name``, including macOS ``._`` files) are skipped. Raises :class:`InputError`."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root} does not exist; check the path")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    found: list[Path] = []
    try:
        if recursive:
            walker: Iterable = _walk(root)
        else:
            walker = (e for e in os.scandir(root))
        for entry in walker:
            name = entry.name
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            found.append(Path(entry.path))
    except PermissionError:
        raise InputError(f"cannot list {root}: permission denied") from None
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found


def _walk(root: Path):
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # symlink loops
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(Path(entry.path))
                    continue
            except OSError:
                continue
            yield entry


def file_list_digest(files: list[Path], root: Path) -> str:
    """SHA-256 over the sorted ``relative path \\t size`` lines: identifies an input set."""
    digest = hashlib.sha256()
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        digest.update(f"{path.relative_to(root).as_posix()}\t{size}\n".encode())
    return digest.hexdigest()


def decode_image(path: str | os.PathLike, *, data: bytes | None = None) -> np.ndarray:
    """Decode one file to uint8 (H, W, 3) RGB. Raises :class:`BadImageError` naming the file.

    With ``data`` the image is decoded from those bytes (an archive member) and ``path`` is only
    its name in messages; the rules and the errors are the same."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path) if data is None else path

    def opened():
        return Image.open(path if data is None else io.BytesIO(data))

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with opened() as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                if img.format == "PNG" and _png16_rgb_rawmode(img) is not None:
                    return _decode_png16_rgb(img, path, opened)
                img.load()
                return _to_rgb8(img, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(
            f"{path}: refused as a possible decompression bomb (more than {MAX_IMAGE_PIXELS} pixels); "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not a readable image (unknown or corrupt format); "
                            "remove it") from None
    except FileNotFoundError:
        raise BadImageError(f"{path}: file disappeared while reading") from None
    except PermissionError:
        raise BadImageError(f"{path}: permission denied; make it readable") from None
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
            ZeroDivisionError, MemoryError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise BadImageError(f"{path}: cannot decode ({detail}); remove it") from None


def _to_rgb8(img, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(img)
        if raw.dtype.kind in "iu" and (raw.size == 0 or (raw.min() >= 0 and raw.max() <= 65535)):
            gray = np.rint(raw.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        else:
            raise BadImageError(f"{path}: 32-bit integer image with values outside 0..65535; "
                                "convert it to 8 or 16 bits")
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "F":
        raise BadImageError(f"{path}: floating-point image (mode F) has no defined 8-bit scale; "
                            "convert it to 8-bit first")
    else:
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadImageError(f"{path}: decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _png16_rgb_rawmode(img) -> str | None:
    # PIL decodes 16-bit RGB(A) PNGs ("RGB;16B"/"RGBA;16B") to 8 bits by keeping the high byte,
    # which is not the documented rounding; those files are decoded by _decode_png16_rgb.
    if img.mode not in ("RGB", "RGBA") or len(img.tile) != 1:
        return None
    args = img.tile[0].args
    rawmode = args if isinstance(args, str) else (args[0] if args else None)
    return rawmode if rawmode in ("RGB;16B", "RGBA;16B") else None


def _decode_png16_rgb(img, path: Path, opened) -> np.ndarray:
    """A 16-bit RGB(A) PNG to uint8 with round(v * 255 / 65535), through PIL's own decoder run
    twice (``opened()`` opens the image again): once keeping each sample's high byte, once (read
    as little-endian) its low byte.

    torchvision's decode_png would give the 16 bits at once, but it crashes the process
    (SIGSEGV) on a corrupted file instead of raising, so it is not used for untrusted input.
    """
    rawmode = _png16_rgb_rawmode(img)
    low_rawmode = rawmode.replace(";16B", ";16L")
    img.load()
    high = np.asarray(img)
    with opened() as again:
        tile = again.tile[0]
        args = low_rawmode if isinstance(tile.args, str) else (low_rawmode, *tile.args[1:])
        again.tile = [tile._replace(args=args)]
        again.load()
        low = np.asarray(again)
    if high.shape != low.shape or high.ndim != 3:
        raise BadImageError(f"{path}: inconsistent 16-bit PNG decode; re-save the image")
    value = high[:, :, :3].astype(np.uint32) * 256 + low[:, :, :3]
    # exact integer form of round(v * 255 / 65535): v / 257 is never halfway between integers
    return np.ascontiguousarray(((value * 255 + 32767) // 65535).astype(np.uint8))


def load_image_array(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy``/``.npz`` file of images -> uint8 (N, H, W, 3). Grayscale (N, H, W) and
    (N, H, W, 1) are replicated; (N, 3, H, W) is transposed. No pickles are ever loaded."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{path}: .npz with arrays {keys}; store the images as 'images'")
                arr = archive[key]
        else:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise InputError(f"{path}: not a readable numpy image array ({detail})") from None
    return as_nhwc_uint8(arr, str(path))


def as_nhwc_uint8(arr, name: str) -> np.ndarray:
    """Validate an image batch and return it as uint8 (N, H, W, 3) (a view when possible)."""
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if arr.dtype != np.uint8:
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # say that first: no cast helps
            raise InputError(f"{name}: the images hold NaN or inf values (a diverged generator?); "
                             "fidkit takes uint8 0..255 images")
        raise InputError(f"{name}: images must be uint8 0..255, got dtype {arr.dtype}; "
                         "convert with (x * 255).round().astype(np.uint8) for [0, 1] floats")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise InputError(f"{name}: images must be (N, H, W, 3) or (N, 3, H, W), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(f"{name}: images must have 1 or 3 channels, got shape {arr.shape}")
    return arr
