"""QC montage of a source's inputs as the network sees them (after the convention's resize)."""
from __future__ import annotations

from typing import Any

MAX_TILES = 16


#: Volumes shown by a volume protocol's montage (three planes each).
MAX_VOLUMES = 4


def write_input_montage(src: Any, path: str, *, features: str | None = None,
                        convention: str | None = None, recursive: bool = False,
                        dicom: Any = None, protocol: str | None = None, maisi: Any = None,
                        volume_shape: Any = None, **_: Any) -> None:
    """Write a grid of up to 16 of ``src``'s images after the extractor's convention (its resize
    and crop), stretched to 0..255 for display; labelled with their names. Under a volume
    protocol (:mod:`fidkit.volumes`): up to 4 volumes, each as its three central planes."""
    import numpy as np

    from fidkit.volumes import resolve_protocol

    chosen = resolve_protocol(protocol, features)
    if chosen is not None:
        write_volume_montage(src, path, chosen, maisi=maisi, volume_shape=volume_shape,
                             features=features, convention=convention, recursive=recursive,
                             dicom=dicom)
        return

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


def write_volume_montage(src: Any, path: str, protocol: str, *, maisi: Any = None,
                         volume_shape: Any = None, features: str | None = None,
                         convention: str | None = None, recursive: bool = False,
                         dicom: Any = None) -> None:
    """Up to :data:`MAX_VOLUMES` volumes of ``src`` spread over the dataset, each as three tiles:
    ``maisi-2.5d``: the central XY, YZ and ZX slices as the network is fed them
    (:func:`fidkit.dicom.maisi.montage_planes`, the 0..1 scaling shown as 0..255);
    ``volume-3d``: the central axial, coronal and sagittal slices of the network input (stretched
    to the input shape, normalised), stretched to 0..255 for display."""
    import numpy as np

    from fidkit.montage import sample_indices, write_montage
    from fidkit.volumes import MAISI, open_volumes, prepared_volume

    spacing = dicom.spacing if dicom is not None and protocol != MAISI else None
    source = open_volumes(src, recursive=recursive, spacing=spacing, protocol=protocol)
    tiles, labels = [], []
    for n in sample_indices(len(source.entries), MAX_VOLUMES):
        name = _short(source.entries[n].name, 24)
        if protocol == MAISI:
            from fidkit.dicom.maisi import MaisiOptions, montage_planes

            for plane, tile in montage_planes(source.volume(n), maisi or MaisiOptions()).items():
                tiles.append(tile)
                labels.append(f"{name} {plane}")
            continue
        from fidkit.extractors import get_extractor
        from fidkit.extraction import Pipeline

        pipeline = Pipeline(features=features, convention=convention).resolved()
        shape = volume_shape or get_extractor(pipeline.features).options["input_shape"]
        x = prepared_volume(source, n, shape, str(pipeline.convention))[0].numpy()  # (D, H, W)
        d, h, w = x.shape
        for label, grey in (("axial", x[d // 2]), ("coronal", x[:, h // 2]),
                            ("sagittal", x[:, :, w // 2])):
            low, high = float(grey.min()), float(grey.max())
            u8 = ((grey - low) * (255.0 / max(high - low, 1e-12))).round().astype(np.uint8)
            tiles.append(np.repeat(u8[:, :, None], 3, axis=2))
            labels.append(f"{name} {label}")
    write_montage(tiles, labels, path, columns=3)
