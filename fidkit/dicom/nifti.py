"""Reading NIfTI-1/2 files (``.nii``, ``.nii.gz``) into the same :class:`Volume` DICOM series become.

NIfTI stores one affine from voxel index ``(i, j, k)`` to RAS+ mm (x to the patient's Right,
y Anterior, z Superior); DICOM's patient frame is LPS (x Left, y Posterior, z Superior). The two
differ by a sign on the first two world axes, so ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``.
Which affine: nibabel's choice, as every tool that reads NIfTI through nibabel (MONAI included)
makes it: the sform when ``sform_code > 0``, else the qform when ``qform_code > 0``, else the
pixdim-only fallback (orientation unknown; recorded as a warning).

The voxel spacing is the length of each affine column (not ``pixdim``, which a sform may contradict).
The volume is then flipped and transposed, without interpolation, to fidkit's one canonical layout
(:data:`~fidkit.dicom.volume.CANONICAL_LAYOUT`, what an axial DICOM series gives), so the resample
-> window -> slices steps treat a NIfTI file exactly as the DICOM series of the same volume.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fidkit.dicom.volume import Volume, canonical
from fidkit.errors import BadImageError, InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest cosine between two affine columns still read as orthogonal (the DICOM reader's bound).
SHEAR_TOLERANCE = 0.01
#: RAS+ (NIfTI) <-> LPS (DICOM): negate the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_FIX = "re-export or copy the file again"


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True if ``path``'s name ends in ``.nii`` or ``.nii.gz`` (any case). Reads nothing."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | os.PathLike, *, load_data: bool = True) -> Volume:
    """Read one 3-D NIfTI file as a :class:`Volume` in the canonical LPS layout.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file holding one 3-D volume (trailing dimensions of size 1
            are dropped).
        load_data: ``False`` reads the header only; ``array`` is then a read-only zero-stride
            stand-in of the right shape (for counting slices before loading).

    Returns:
        a :class:`Volume`: ``array`` float32 ``(z, y, x)`` with the file's scl_slope/scl_inter
        applied (HU for CT), ``spacing`` mm from the affine, ``origin`` LPS mm, ``orientation`` the
        (possibly oblique) LPS direction cosines, ``window`` from cal_min/cal_max when set,
        ``description`` the file name, ``files`` ``[path]``.

    Raises:
        InputError: the file does not exist, or its grid is sheared.
        BadImageError: not a NIfTI file, a bad header, truncated/corrupt data, not 3-D, a
            non-finite or singular affine, non-numeric or non-finite voxel values.
    """
    p = Path(path)
    img, shape = _open(p)
    affine_ras = np.asarray(img.affine, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise BadImageError(f"{p}: the affine (sform/qform) holds non-finite values; fix the header "
                            f"(set a valid sform, e.g. with nibabel's set_sform) or {_FIX}")
    affine = RAS_TO_LPS @ affine_ras
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(zooms > 0):
        raise BadImageError(f"{p}: the affine gives a zero voxel size {zooms.round(6).tolist()} mm; "
                            f"fix the header's sform/qform or {_FIX}")
    dirs = affine[:3, :3] / zooms  # columns: directions of i, j, k in LPS
    for a, b in ((0, 1), (0, 2), (1, 2)):
        if abs(float(dirs[:, a] @ dirs[:, b])) > SHEAR_TOLERANCE:
            raise InputError(f"{p}: the affine is sheared (axes {'ijk'[a]},{'ijk'[b]} are not orthogonal); "
                             f"resample it to an orthogonal grid first (e.g. with nibabel.processing)")
    warnings: list[str] = []
    header = img.header
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    if sform == 0 and qform == 0:
        warnings.append("no sform/qform: orientation unknown; nibabel's pixdim-only affine was used")
    window = None
    cal_min, cal_max = float(header["cal_min"]), float(header["cal_max"])
    if np.isfinite(cal_min) and np.isfinite(cal_max) and cal_max > cal_min:
        from fidkit.dicom.window import range_to_window

        window = range_to_window(cal_min, cal_max)
    if load_data:
        data = _data(img, p, shape)
    else:
        data = np.broadcast_to(np.float32(0), shape)
    # Volume axes are (z, y, x) = (k, j, i): x runs along i, y along j, slices along k.
    origin = affine[:3, 3].copy()
    volume = Volume(
        array=np.transpose(data, (2, 1, 0)),
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        positions=float(origin @ dirs[:, 2]) + np.arange(shape[2]) * float(zooms[2]),
        origin=origin,
        orientation=np.stack([dirs[:, 0], dirs[:, 1], dirs[:, 2]]),
        window=window,
        warnings=warnings,
        description=p.name,
        files=[str(p)],
    )
    try:
        return canonical(volume)
    except InputError as exc:
        raise BadImageError(f"{p}: {exc}") from None


def nifti_header_summary(path: str | os.PathLike) -> dict[str, Any]:
    """JSON-able record of what was read from the header: stored shape, axis codes (RAS+ letters
    of i, j, k, e.g. ``"LPS"``), voxel sizes from the affine (mm), affine source, datatype.

    Raises:
        BadImageError / InputError: as :func:`read_nifti`.
    """
    nib = _nibabel()
    p = Path(path)
    img, shape = _open(p)
    affine = np.asarray(img.affine, dtype=np.float64)
    header = img.header
    if int(header["sform_code"]) > 0:
        source = f"sform (code {int(header['sform_code'])})"
    elif int(header["qform_code"]) > 0:
        source = f"qform (code {int(header['qform_code'])})"
    else:
        source = "none (pixdim only)"
    codes = nib.orientations.aff2axcodes(affine) if np.all(np.isfinite(affine)) else ("?",) * 3
    return {
        "stored_shape": [int(s) for s in shape],
        "axcodes_ras": "".join(str(c) for c in codes),
        "voxel_mm": [round(float(z), 6) for z in np.linalg.norm(affine[:3, :3], axis=0)],
        "affine_source": source,
        "datatype": str(header.get_data_dtype()),
    }


# ----------------------------------------------------------------------------------- internals
def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise InputError("reading NIfTI needs nibabel; install it with 'pip install nibabel'") from None
    return nibabel


def _open(p: Path) -> tuple[Any, tuple[int, int, int]]:
    """The nibabel image (header read, data not yet) and its 3-D shape."""
    nib = _nibabel()
    if not p.exists():
        raise InputError(f"{p} does not exist; check the path")
    if not p.is_file():
        raise InputError(f"{p} is not a file; give a .nii or .nii.gz file")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad header
        raise BadImageError(f"{p}: not a readable NIfTI file ({type(exc).__name__}: {_short(exc)}); "
                            f"check it is a complete .nii/.nii.gz or {_FIX}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadImageError(f"{p}: is a {type(img).__name__}, not NIfTI-1/2; convert it to .nii.gz")
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadImageError(
            f"{p}: is {len(shape)}-D ({'x'.join(map(str, shape))}); fidkit reads one 3-D volume per "
            f"file: split it into 3-D files (e.g. nibabel.funcs.four_to_three or fslsplit)"
        )
    if min(shape) < 1:
        raise BadImageError(f"{p}: has an empty dimension ({'x'.join(map(str, shape))}); {_FIX}")
    return img, shape  # type: ignore[return-value]


def _data(img: Any, p: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel values as float32 ``(i, j, k)``, scaling applied as MONAI's nibabel reader applies it."""
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - gzip, zlib, EOF and size errors all mean "damaged"
        raise BadImageError(f"{p}: the image data cannot be read ({type(exc).__name__}: {_short(exc)}); "
                            f"the file is probably truncated: {_FIX}") from None
    if raw.dtype.kind not in "biuf":
        raise BadImageError(f"{p}: voxels of type {raw.dtype} (RGB or complex) are not greyscale "
                            f"values; convert it to one real-valued channel")
    data = raw.reshape(shape).astype(np.float32)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise BadImageError(f"{p}: {bad} voxel(s) are NaN or infinite; replace them (e.g. with the "
                            f"background value) before computing statistics")
    return data


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160] or "no details"
