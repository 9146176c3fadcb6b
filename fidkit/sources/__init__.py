"""Image sources: anything that yields uint8 (H, W, 3) images by index and can describe itself.

A source is read by index so decoding threads can work ahead of the network; ``describe()`` is the
``meta["source"]`` entry of the statistics it produces.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fidkit.defaults import ARRAY_SUFFIXES
from fidkit.errors import InputError
from fidkit.sources.images import as_nhwc_uint8, decode_image, file_list_digest, list_images, load_image_array


class Source(Protocol):
    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3); raises BadImageError for an unreadable item."""

    def item_name(self, index: int) -> str: ...

    def describe(self) -> dict[str, Any]: ...


class FolderSource:
    """Image files of a folder (optionally recursive), in sorted relative-path order."""

    def __init__(self, folder: str | os.PathLike, *, recursive: bool = False) -> None:
        self.root = Path(folder)
        self.recursive = recursive
        self.files = list_images(self.root, recursive=recursive)
        if not self.files:
            hint = "" if recursive else " (images in subfolders? recursive=True / --recursive)"
            raise InputError(f"{self.root}: no image files found{hint}; supported: png, jpg, jpeg, "
                             "bmp, tif, tiff, webp, pgm, ppm")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        return decode_image(self.files[index])

    def item_name(self, index: int) -> str:
        return str(self.files[index])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "path": str(self.root.resolve()),
            "recursive": self.recursive,
            "files": len(self.files),
            "list_sha256": file_list_digest(self.files, self.root),
        }


class ArraySource:
    """A uint8 image batch held in memory or memory-mapped: (N, H, W, 3) or (N, 3, H, W)."""

    def __init__(self, images: Any, name: str = "array", path: str | None = None) -> None:
        if hasattr(images, "detach"):  # torch tensor
            images = images.detach().cpu().numpy()
        self.images = as_nhwc_uint8(images, name)
        self.name = name
        self.path = path
        if len(self.images) == 0:
            raise InputError(f"{name}: the image batch is empty")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[index])

    def item_name(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "array", "images": len(self), "shape": list(self.images.shape)}
        if self.path:
            out["path"] = self.path
        return out


def open_source(src: Any, *, recursive: bool = False, dicom: Any = None) -> Source:
    """Turn a path or an array into a :class:`Source`.

    ``src`` may be a folder of images, a DICOM folder (detected; ``dicom`` is a
    :class:`fidkit.dicom.DicomOptions`), a volume dataset (a ``.nii``/``.nii.gz`` file, a folder
    of them, or a folder of DICOM series one per subfolder:
    :class:`fidkit.dicom.source.VolumeSource`, the same ``dicom`` options), a ``.zip`` or ``.tar``
    archive or a brace pattern of them (``shards/train-{000000..000127}.tar``, read in place:
    :class:`fidkit.sources.archives.ArchiveSource`), a ``.npy``/``.npz`` image array file, a uint8
    numpy array, or a uint8 torch tensor. Raises :class:`InputError`.
    """
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_dir():  # a brace pattern is not a real path: archives are tried first
            from fidkit.sources.archives import open_archive_source

            archive = open_archive_source(src)
            if archive is not None:
                return archive
        if not path.exists():
            if path.is_symlink():
                raise InputError(f"{path} is a broken symbolic link")
            raise InputError(f"{path} does not exist; check the path")
        from fidkit.dicom.source import DicomOptions, open_volume_source

        volumes = open_volume_source(path, dicom if dicom is not None else DicomOptions(),
                                     recursive=recursive)
        if volumes is not None:
            return volumes
        if path.is_dir():
            if _is_dicom_folder(path):
                from fidkit.dicom.source import DicomOptions, DicomSource

                return DicomSource(path, dicom if dicom is not None else DicomOptions())
            return FolderSource(path, recursive=recursive)
        if path.suffix.lower() in ARRAY_SUFFIXES:
            return ArraySource(load_image_array(path), name=str(path), path=str(path.resolve()))
        raise InputError(f"{path}: give a folder of images, a DICOM folder, a NIfTI file "
                         "(.nii/.nii.gz) or folder, a .zip/.tar archive, a .npy/.npz image array "
                         "or a stats file")
    if isinstance(src, np.ndarray) or hasattr(src, "detach"):
        return ArraySource(src)
    if hasattr(src, "load") and hasattr(src, "describe") and hasattr(src, "__len__"):
        return src
    raise InputError(f"cannot read images from a {type(src).__name__}; give a folder, a path or a "
                     "uint8 array/tensor")


def _is_dicom_folder(path: Path) -> bool:
    try:
        from fidkit.dicom.source import is_dicom_folder
    except ImportError:
        return False
    return bool(is_dicom_folder(path))
