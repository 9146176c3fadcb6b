"""Bad input, hostile files and clutter: every case through the CLI and through the API.

Each case builds its own small files, then

* runs ``python -m fidkit ...`` in a subprocess and checks the exit code, that stderr holds exactly
  the expected number of lines (one for an error), each starting ``fidkit:``, and no ``Traceback``;
* calls the Python API on the same files and checks the exception type (or, for inputs that must
  work, compares the decoded pixels with an independent reference: a closed form, numpy, or PIL's
  own ``convert("RGB")`` that pytorch-fid and torch-fidelity use).

Malicious stats and weights files carry payloads that would create a marker file; the marker must
never appear. The CLI runs of all selected cases are started together (three at a time) by one
module fixture so the torch start-up of each subprocess overlaps with the others'.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from fidkit.errors import (
    BadImageError,
    FidkitError,
    InputError,
    ProvenanceMismatchError,
    StatsFileError,
    WeightsError,
)

# --------------------------------------------------------------------------- case machinery


@dataclass
class Prepared:
    """What one case runs and expects."""

    argv: list[str]
    code: int  # expected exit code
    error: type[FidkitError] | None  # expected API exception; None: the input must work
    api: Callable[[], Any]  # raises ``error`` (or, when ``error`` is None, checks and returns)
    expect: str = ""  # text the error line must contain (the file at fault, the reason)
    stderr_lines: int = 1
    env: dict[str, str] = field(default_factory=dict)
    drop_root: bool = False  # run the CLI without root's permission override
    check: Callable[[], None] | None = None  # after both runs: markers, untouched files, manifests


@dataclass
class Ctx:
    dir: Path
    weights: Path
    marker: Path

    def stats_argv(self, src: Path | str, *extra: str, out: Path | None = None) -> list[str]:
        out = out or self.dir / "out.pkl"
        return ["stats", str(src), "-o", str(out), "--weights", str(self.weights), "--workers", "0",
                "--dims", "64", *extra]

    def compute(self, src: Any, **kw: Any):
        from fidkit.api import compute_statistics

        kw.setdefault("weights", self.weights)
        kw.setdefault("cache", False)  # computed here, not read back from what the CLI run stored
        kw.setdefault("workers", 0)
        return compute_statistics(src, dims=64, progress=False, **kw)


CASES: dict[str, Callable[[Ctx], Prepared]] = {}


def case(fn: Callable[[Ctx], Prepared]) -> Callable[[Ctx], Prepared]:
    CASES[fn.__name__.removeprefix("case_").replace("_", "-")] = fn
    return fn


def _drop_root_prefix() -> list[str]:
    # root reads a chmod-000 file anyway; without CAP_DAC_* it is refused like any user.
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: util-linux setpriv is needed to drop the permission override"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


def _env(extra: dict[str, str], cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FIDKIT_WEIGHTS", "FIDKIT_DEBUG")}
    env.update(FIDKIT_CACHE=str(cache), FIDKIT_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


# --------------------------------------------------------------------------- file makers

_RNG = np.random.default_rng(7)
IMG = _RNG.integers(0, 256, (24, 16, 3), dtype=np.uint8)  # non-square so a rotation would show


def _encode(img, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr)


def _png_bytes() -> bytes:
    return _encode(_pil(IMG), "PNG")


def _jpeg_bytes() -> bytes:
    return _encode(_pil(IMG), "JPEG", quality=90)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written by hand from the specification (RFC 2083), independent of any encoder."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _good_images(folder: Path, count: int = 2, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = np.roll(IMG, 3 * (i + start), axis=1)
        (folder / f"good_{i + start}.png").write_bytes(_encode(_pil(img), "PNG"))
    return folder


def _one_bad(ctx: Ctx, name: str, data: bytes) -> tuple[Path, Path]:
    """A folder whose first file (sorted) is the bad one, then two good images."""
    folder = _good_images(ctx.dir / "imgs")
    bad = folder / name
    bad.write_bytes(data)
    return folder, bad


def _bad_image_case(ctx: Ctx, name: str, data: bytes, expect: str = "") -> Prepared:
    folder, bad = _one_bad(ctx, name, data)
    return Prepared(ctx.stats_argv(folder), 2, BadImageError, lambda: ctx.compute(folder),
                    expect=expect or bad.name)


def _working_image_case(ctx: Ctx, name: str, data: bytes, reference: Callable[[Path], np.ndarray]) -> Prepared:
    folder, path = _one_bad(ctx, name, data)

    def api() -> None:
        from fidkit.sources.images import decode_image

        got = decode_image(path)
        want = reference(path)
        assert got.dtype == np.uint8 and got.shape == want.shape, (got.shape, want.shape)
        np.testing.assert_array_equal(got, want)

    # stderr: the one note that the test weights are not the canonical file
    return Prepared(ctx.stats_argv(folder), 0, None, api, stderr_lines=1)


def _peer_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- image files


@case
def case_truncated_png(ctx: Ctx) -> Prepared:
    data = _png_bytes()
    return _bad_image_case(ctx, "a_cut.png", data[: len(data) // 2])


@case
def case_truncated_jpeg(ctx: Ctx) -> Prepared:
    data = _jpeg_bytes()
    return _bad_image_case(ctx, "a_cut.jpg", data[: len(data) // 2])


@case
def case_truncated_png_in_a_decoding_thread(ctx: Ctx) -> Prepared:
    # the default path decodes in threads: the error must come back to the caller as one line
    data = _png_bytes()
    folder, bad = _one_bad(ctx, "a_cut.png", data[: len(data) // 3])
    argv = ctx.stats_argv(folder)
    argv[argv.index("--workers") + 1] = "1"
    return Prepared(argv, 2, BadImageError, lambda: ctx.compute(folder, workers=1), expect=bad.name)


@case
def case_truncated_png_header(ctx: Ctx) -> Prepared:
    return _bad_image_case(ctx, "a_head.png", _png_bytes()[:20])


@case
def case_zero_byte_file(ctx: Ctx) -> Prepared:
    return _bad_image_case(ctx, "a_empty.png", b"")


@case
def case_text_file_named_png(ctx: Ctx) -> Prepared:
    return _bad_image_case(ctx, "a_notes.png", b"these are my notes, not an image\n")


@case
def case_random_bytes_named_jpeg(ctx: Ctx) -> Prepared:
    return _bad_image_case(ctx, "a_noise.jpg", np.random.default_rng(1).bytes(2000))


@case
def case_wrong_extension_jpeg_named_png(ctx: Ctx) -> Prepared:
    # decoded by content, exactly as PIL (and so every peer) decodes it
    return _working_image_case(ctx, "a_really_jpeg.png", _jpeg_bytes(), _peer_rgb)


@case
def case_decompression_bomb_png(ctx: Ctx) -> Prepared:
    # header says 30000 x 30000 (900 Mpixel, ~2.7 GB decoded) in a file of 100 bytes
    bomb = _raw_png(30000, 30000, 1, 0, b"\0" * 64)
    return _bad_image_case(ctx, "a_bomb.png", bomb, expect="decompression bomb")


@case
def case_decompression_bomb_pgm(ctx: Ctx) -> Prepared:
    return _bad_image_case(ctx, "a_bomb.pgm", b"P5\n99999 99999\n255\n" + bytes(64),
                           expect="decompression bomb")


@case
def case_float_tiff(ctx: Ctx) -> Prepared:
    data = _encode(_pil(_RNG.random((8, 8)).astype(np.float32)), "TIFF")
    return _bad_image_case(ctx, "a_float.tif", data, expect="floating-point")


@case
def case_int32_out_of_range_tiff(ctx: Ctx) -> Prepared:
    data = _encode(_pil(np.arange(64, dtype=np.int32).reshape(8, 8) * 4000 - 5), "TIFF")
    return _bad_image_case(ctx, "a_int32.tif", data, expect="0..65535")


@case
def case_gray_16bit_png(ctx: Ctx) -> Prepared:
    values = _RNG.integers(0, 65536, (12, 10)).astype(np.uint16)

    def reference(_: Path) -> np.ndarray:
        gray = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)

    rows = b"".join(b"\0" + values[r].astype(">u2").tobytes() for r in range(values.shape[0]))
    return _working_image_case(ctx, "a_gray16.png", _raw_png(10, 12, 16, 0, rows), reference)


@case
def case_rgb_16bit_png(ctx: Ctx) -> Prepared:
    values = _RNG.integers(0, 65536, (6, 9, 3)).astype(np.uint16)
    # values where keeping the high byte (what PIL does) and rounding differ
    values[0, 0] = (0x80FF, 0x0080, 0xFF7F)

    def reference(_: Path) -> np.ndarray:
        return np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)

    rows = b"".join(b"\0" + values[r].reshape(-1).astype(">u2").tobytes() for r in range(6))
    return _working_image_case(ctx, "a_rgb16.png", _raw_png(9, 6, 16, 2, rows), reference)


@case
def case_rgb_16bit_png_corrupted(ctx: Ctx) -> Prepared:
    # one flipped bit in the compressed data: torchvision's decode_png died of SIGSEGV on this
    values = _RNG.integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    rows = b"".join(b"\0" + values[r].reshape(-1).astype(">u2").tobytes() for r in range(5))
    data = bytearray(_raw_png(6, 5, 16, 2, rows))
    data[33 + 8 + 40] ^= 0x40  # inside the IDAT payload (signature 8 + IHDR chunk 25 + header 8)
    return _bad_image_case(ctx, "a_rgb16_flipped.png", bytes(data))


@case
def case_cmyk_tiff(ctx: Ctx) -> Prepared:
    data = _encode(_pil(IMG).convert("CMYK"), "TIFF")
    return _working_image_case(ctx, "a_cmyk.tif", data, _peer_rgb)


@case
def case_cmyk_jpeg(ctx: Ctx) -> Prepared:
    data = _encode(_pil(IMG).convert("CMYK"), "JPEG", quality=95)
    return _working_image_case(ctx, "a_cmyk.jpg", data, _peer_rgb)


@case
def case_palette_png(ctx: Ctx) -> Prepared:
    palette = _RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = _RNG.integers(0, 256, (12, 9), dtype=np.uint8)
    img = _pil(index).convert("L")
    img = img.convert("P")
    img.putdata(index.reshape(-1).tolist())
    img.putpalette(palette.reshape(-1).tolist())
    return _working_image_case(ctx, "a_palette.png", _encode(img, "PNG"), lambda _: palette[index])


@case
def case_gray_alpha_la_png(ctx: Ctx) -> Prepared:
    from PIL import Image

    gray = _RNG.integers(0, 256, (12, 9), dtype=np.uint8)
    alpha = _RNG.integers(0, 256, (12, 9), dtype=np.uint8)
    img = Image.merge("LA", (_pil(gray), _pil(alpha)))
    # alpha is dropped, not composited
    return _working_image_case(ctx, "a_la.png", _encode(img, "PNG"),
                               lambda _: np.repeat(gray[:, :, None], 3, axis=2))


@case
def case_exif_rotated_png(ctx: Ctx) -> Prepared:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"; the stored pixels are used, as every peer does
    data = _encode(_pil(IMG), "PNG", exif=exif.tobytes())
    return _working_image_case(ctx, "a_exif6.png", data, lambda _: IMG)


# --------------------------------------------------------------------------- folders and paths


@case
def case_empty_folder(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "empty"
    folder.mkdir()
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="no image files")


@case
def case_folder_without_images(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "clutter"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._photo.png").write_bytes(b"\0\5\26\7")  # macOS resource fork, not an image
    (folder / "labels.csv").write_text("a,b\n")
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="no image files")


@case
def case_images_only_in_subfolders(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "nested"
    _good_images(folder / "class_a")
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="--recursive")


@case
def case_missing_path(ctx: Ctx) -> Prepared:
    missing = ctx.dir / "no_such_folder"
    return Prepared(ctx.stats_argv(missing), 2, InputError, lambda: ctx.compute(missing),
                    expect="no_such_folder does not exist")


@case
def case_broken_symlink_source(ctx: Ctx) -> Prepared:
    link = ctx.dir / "dangling"
    link.symlink_to(ctx.dir / "gone")
    return Prepared(ctx.stats_argv(link), 2, InputError, lambda: ctx.compute(link),
                    expect="broken symbolic link")


@case
def case_symlink_loop_files(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "loop"
    folder.mkdir()
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="no image files")


@case
def case_symlink_loop_folders_recursive(ctx: Ctx) -> Prepared:
    folder = _good_images(ctx.dir / "tree")
    (folder / "again").symlink_to(folder, target_is_directory=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)

    def api() -> None:
        stats = ctx.compute(folder, recursive=True)
        assert stats.n == 2  # each image once, however many loops lead back to it

    return Prepared(ctx.stats_argv(folder, "--recursive"), 0, None, api)


@case
def case_unreadable_file(ctx: Ctx) -> Prepared:
    folder, bad = _one_bad(ctx, "a_locked.png", _png_bytes())
    bad.chmod(0)
    for p in (ctx.dir, folder):
        p.chmod(0o755)
    code = ("import sys\nfrom fidkit.sources.images import decode_image\nfrom fidkit.errors import BadImageError\n"
            f"try:\n    decode_image({str(bad)!r})\nexcept BadImageError as e:\n"
            "    sys.exit(0 if 'permission denied' in str(e) else 3)\nsys.exit(4)\n")

    def api() -> None:
        proc = subprocess.run([*_drop_root_prefix(), sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        raise BadImageError("checked in a subprocess without the permission override")

    return Prepared(ctx.stats_argv(folder), 2, BadImageError, api, expect="permission denied",
                    drop_root=True)


@case
def case_single_image(ctx: Ctx) -> Prepared:
    folder = _good_images(ctx.dir / "one", count=1)
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="at least 2")


@case
def case_source_is_an_image_file(ctx: Ctx) -> Prepared:
    path = _good_images(ctx.dir / "f", count=1) / "good_0.png"
    return Prepared(ctx.stats_argv(path), 2, InputError, lambda: ctx.compute(path),
                    expect="give a folder")


@case
def case_float_image_array(ctx: Ctx) -> Prepared:
    path = ctx.dir / "images.npy"
    np.save(path, _RNG.random((3, 8, 8, 3)).astype(np.float32))
    return Prepared(ctx.stats_argv(path), 2, InputError, lambda: ctx.compute(path), expect="uint8")


@case
def case_truncated_image_array(ctx: Ctx) -> Prepared:
    path = ctx.dir / "images.npy"
    np.save(path, np.zeros((4, 8, 8, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:150])
    return Prepared(ctx.stats_argv(path), 2, InputError, lambda: ctx.compute(path),
                    expect="images.npy")


@case
def case_pickled_image_array(ctx: Ctx) -> Prepared:
    path = ctx.dir / "images.npy"
    # an .npy whose payload is a pickle: np.load(allow_pickle=False) must refuse it
    np.save(path, np.array([_gadget(ctx.marker)], dtype=object), allow_pickle=True)
    return Prepared(ctx.stats_argv(path), 2, InputError, lambda: ctx.compute(path),
                    expect="images.npy", check=lambda: _no_marker(ctx))


# --------------------------------------------------------------------------- bad-image policy


@case
def case_skip_bad_reports_and_writes_manifest(ctx: Ctx) -> Prepared:
    folder, bad = _one_bad(ctx, "a_cut.png", _png_bytes()[:60])
    manifest = ctx.dir / "manifest.json"
    out = ctx.dir / "out.pkl"

    def api() -> None:
        m2 = ctx.dir / "manifest_api.json"
        stats = ctx.compute(folder, skip_bad=True, manifest=m2)
        assert stats.n == 2
        _check_manifest(m2, folder, bad, stats.meta)

    def check() -> None:
        from fidkit.statistics.statsio import load_statistics

        _check_manifest(manifest, folder, bad, load_statistics(out).meta)

    # stderr: "skipped 1 unreadable item(s), e.g. ..." and the non-canonical weights note
    return Prepared(ctx.stats_argv(folder, "--skip-bad", "--manifest", str(manifest), out=out), 0,
                    None, api, stderr_lines=2, expect="skipped 1", check=check)


def _check_manifest(path: Path, folder: Path, bad: Path, meta: dict) -> None:
    body = json.loads(path.read_text())
    used = [Path(e["item"]).name for e in body["used"]]
    assert used == ["good_0.png", "good_1.png"]
    assert [e["size"] for e in body["used"]] == [(folder / n).stat().st_size for n in used]
    assert [Path(e["item"]).name for e in body["skipped"]] == [bad.name]
    digest = hashlib.sha256(json.dumps(body["used"], sort_keys=True).encode()).hexdigest()
    assert body["used_sha256"] == digest == meta["source"]["manifest_sha256"]
    assert meta["source"]["skipped"] == 1


@case
def case_skip_bad_with_nothing_left(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "allbad"
    folder.mkdir()
    for i in range(3):
        (folder / f"bad_{i}.png").write_bytes(_png_bytes()[: 30 + i])
    return Prepared(ctx.stats_argv(folder, "--skip-bad"), 2, InputError,
                    lambda: ctx.compute(folder, skip_bad=True), expect="only 0 usable")


# --------------------------------------------------------------------------- the output file


@case
def case_output_folder_missing(ctx: Ctx) -> Prepared:
    folder = _good_images(ctx.dir / "imgs")
    out = ctx.dir / "no_dir" / "out.pkl"
    return Prepared(ctx.stats_argv(folder, out=out), 2, InputError,
                    lambda: _good_stats(8).save(str(out)), expect="does not exist")


@case
def case_output_exists_without_overwrite(ctx: Ctx) -> Prepared:
    folder = _good_images(ctx.dir / "imgs")
    out = ctx.dir / "precious.pkl"
    out.write_bytes(b"somebody's statistics")

    def check() -> None:
        assert out.read_bytes() == b"somebody's statistics"

    return Prepared(ctx.stats_argv(folder, out=out), 2, InputError,
                    lambda: _good_stats(8).save(str(out), overwrite=False), expect="precious.pkl exists",
                    check=check)


@case
def case_output_is_a_folder(ctx: Ctx) -> Prepared:
    folder = _good_images(ctx.dir / "imgs")
    out = ctx.dir / "outdir"
    out.mkdir()
    return Prepared(ctx.stats_argv(folder, "--overwrite", out=out), 2, InputError,
                    lambda: _good_stats(8).save(str(out)), expect="is a folder")


# --------------------------------------------------------------------------- stats files

D = 8


def _good_stats(d: int = D, seed: int = 0, convention: str = "tf1"):
    from fidkit.statistics import Statistics

    x = np.random.default_rng(seed).normal(size=(50, d))
    meta = {"convention": convention, "dims": d, "network": "FIDInceptionV3",
            "weights": {"sha256": "ab" * 32, "canonical": False, "file": "w.pth"}}
    return Statistics(x.mean(0), np.cov(x, rowvar=False), 50, meta)


def _stats_pair(ctx: Ctx, bad_name: str, data: bytes | None = None) -> tuple[Path, Path]:
    good = ctx.dir / "good.pkl"
    _good_stats().save(str(good))
    bad = ctx.dir / bad_name
    if data is not None:
        bad.write_bytes(data)
    return bad, good


def _stats_case(ctx: Ctx, bad: Path, good: Path, *, code: int = 2,
                error: type[FidkitError] = StatsFileError, expect: str = "") -> Prepared:
    import fidkit

    return Prepared(["compare", str(bad), str(good)], code, error, lambda: fidkit.fid(bad, good),
                    expect=expect or bad.name, check=lambda: _no_marker(ctx))


def _gadget(marker: Path) -> Any:
    from test_statsio import _Gadget  # unpickling it would run ``touch marker``

    return _Gadget(os.system, (f"touch {marker}",))


def _no_marker(ctx: Ctx) -> None:
    assert not ctx.marker.exists(), "a hostile file ran its payload"


def _fidkit_pickle(mu: Any, sigma: Any, **meta: Any) -> bytes:
    return pickle.dumps({"format": "fidkit-statistics", "format_version": 1, "mu": mu, "sigma": sigma,
                         "n": 50, "meta": {"convention": "tf1", **meta}}, protocol=4)


def _gadget_case(label: str) -> Callable[[Ctx], Prepared]:
    def build(ctx: Ctx) -> Prepared:
        from test_statsio import _gadgets  # the gadget collection of the stats-file tests

        bad, good = _stats_pair(ctx, "downloaded_stats.pkl", _gadgets(ctx.marker)[label])
        return _stats_case(ctx, bad, good)

    return build


for _label in ("os.system", "builtins.eval", "subprocess.Popen", "object array",
               "protocol 0 posix.system", "numpy runstring"):
    CASES["malicious-pickle-" + _label.replace(" ", "-").replace(".", "-")] = _gadget_case(_label)


@case
def case_malicious_npz_object_member(ctx: Ctx) -> Prepared:
    bad, good = _stats_pair(ctx, "stats.npz")
    np.savez(bad, mu=np.array([_gadget(ctx.marker)], dtype=object),
             sigma=np.eye(1))
    return _stats_case(ctx, bad, good, expect="object array")


@case
def case_malicious_torch_file(ctx: Ctx) -> Prepared:
    import torch

    bad, good = _stats_pair(ctx, "x-inception-v3-compat-stat-fid-2048.pt")
    torch.save({"mu": _gadget(ctx.marker), "sigma": np.eye(2)}, bad)
    return _stats_case(ctx, bad, good, expect="weights_only")


@case
def case_truncated_stats_pkl(ctx: Ctx) -> Prepared:
    data = _fidkit_pickle(np.zeros(D), np.eye(D))
    bad, good = _stats_pair(ctx, "cut.pkl", data[: len(data) * 2 // 3])
    return _stats_case(ctx, bad, good, expect="truncated")


@case
def case_truncated_stats_npz(ctx: Ctx) -> Prepared:
    bad, good = _stats_pair(ctx, "cut.npz")
    _good_stats().save(str(bad))
    bad.write_bytes(bad.read_bytes()[:-100])
    return _stats_case(ctx, bad, good, expect="truncated")


@case
def case_zero_byte_stats(ctx: Ctx) -> Prepared:
    bad, good = _stats_pair(ctx, "empty.pkl", b"")
    return _stats_case(ctx, bad, good)


@case
def case_stats_wrong_dims(ctx: Ctx) -> Prepared:
    bad, good = _stats_pair(ctx, "dims.pkl", _fidkit_pickle(np.zeros(D), np.eye(D + 1)))
    return _stats_case(ctx, bad, good, expect="sigma must be")


@case
def case_stats_nan_mean(ctx: Ctx) -> Prepared:
    mu = np.zeros(D)
    mu[3] = np.nan
    bad, good = _stats_pair(ctx, "nan.pkl", _fidkit_pickle(mu, np.eye(D)))
    return _stats_case(ctx, bad, good, expect="NaN or infinite")


@case
def case_stats_inf_covariance(ctx: Ctx) -> Prepared:
    sigma = np.eye(D)
    sigma[2, 2] = np.inf
    bad, good = _stats_pair(ctx, "inf.pkl", _fidkit_pickle(np.zeros(D), sigma))
    return _stats_case(ctx, bad, good, expect="NaN or infinite")


@case
def case_stats_non_symmetric(ctx: Ctx) -> Prepared:
    sigma = np.eye(D)
    sigma[0, 1] = 0.3
    bad, good = _stats_pair(ctx, "asym.pkl", _fidkit_pickle(np.zeros(D), sigma))
    return _stats_case(ctx, bad, good, expect="not symmetric")


@case
def case_stats_not_positive_semidefinite(ctx: Ctx) -> Prepared:
    sigma = np.diag(np.linspace(1.0, 2.0, D))
    sigma[5, 5] = -0.5
    bad, good = _stats_pair(ctx, "npsd.pkl", _fidkit_pickle(np.zeros(D), sigma))
    return _stats_case(ctx, bad, good, expect="cannot be negative")


@case
def case_stats_mismatched_provenance(ctx: Ctx) -> Prepared:
    other, good = _stats_pair(ctx, "clean.pkl")
    _good_stats(seed=1, convention="clean").save(str(other))
    return _stats_case(ctx, other, good, code=4, error=ProvenanceMismatchError, expect="--force")


@case
def case_stats_mismatched_dims(ctx: Ctx) -> Prepared:
    other, good = _stats_pair(ctx, "d16.pkl")
    _good_stats(d=2 * D, seed=1).save(str(other))
    return _stats_case(ctx, other, good, code=4, error=ProvenanceMismatchError, expect="--dims")


@case
def case_stats_file_missing(ctx: Ctx) -> Prepared:
    bad, good = _stats_pair(ctx, "never_written.pkl")
    return _stats_case(ctx, bad, good, code=2, error=InputError, expect="does not exist")


# --------------------------------------------------------------------------- weights files


def _weights_case(ctx: Ctx, weights: Path | None, expect: str, env: dict[str, str] | None = None,
                  check: Callable[[], None] | None = None) -> Prepared:
    folder = _good_images(ctx.dir / "imgs")
    argv = ctx.stats_argv(folder)
    i = argv.index("--weights")
    if weights is None:
        del argv[i:i + 2]
    else:
        argv[i + 1] = str(weights)
    return Prepared(argv, 3, WeightsError, lambda: ctx.compute(folder, weights=weights),
                    expect=expect, env=env or {}, check=check)


@case
def case_corrupted_cached_weights(ctx: Ctx) -> Prepared:
    from fidkit.defaults import FID_WEIGHTS

    cache = ctx.dir / "cache"
    cache.mkdir()
    cached = cache / FID_WEIGHTS.filename
    # a half-finished download left by an old tool: wrong hash, so moved aside and never loaded
    garbage = b"\x80\x02" + np.random.default_rng(2).bytes(4096)

    def api() -> None:
        cached.write_bytes(garbage)
        ctx.compute(ctx.dir / "imgs", weights=None)

    def check() -> None:
        assert not cached.exists()
        assert (cache / (FID_WEIGHTS.filename + ".corrupt")).read_bytes() == garbage

    prepared = _weights_case(ctx, None, "FIDKIT_OFFLINE", env={"FIDKIT_CACHE": str(cache)}, check=check)
    cached.write_bytes(garbage)
    prepared.api = api
    # stderr: "moved ... aside and fetching again", then the error
    prepared.stderr_lines = 2
    return prepared


@case
def case_weights_wrong_architecture(ctx: Ctx) -> Prepared:
    import torch

    path = ctx.dir / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, path)
    return _weights_case(ctx, path, "not an FID Inception")


@case
def case_weights_malicious_pickle(ctx: Ctx) -> Prepared:
    path = ctx.dir / "weights.pth"
    path.write_bytes(pickle.dumps({"conv.weight": _gadget(ctx.marker)}))
    return _weights_case(ctx, path, "weights.pth", check=lambda: _no_marker(ctx))


@case
def case_weights_truncated(ctx: Ctx) -> Prepared:
    path = ctx.dir / "cut.pth"
    data = ctx.weights.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return _weights_case(ctx, path, "cut.pth")


@case
def case_weights_missing(ctx: Ctx) -> Prepared:
    return _weights_case(ctx, ctx.dir / "nowhere.pth", "does not exist")


# --------------------------------------------------------------------------- DICOM folders


def _dicom_stack(folder: Path, count: int = 3) -> list[Path]:
    from dicom_synth import write_stack

    return write_stack(folder, [float(k) for k in range(count)], rows=16, cols=16,
                       WindowCenter="40", WindowWidth="400")


@case
def case_dicom_junk_and_truncated_slice(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "ct"
    slices = _dicom_stack(folder, 4)
    data = slices[-1].read_bytes()
    slices[-1].write_bytes(data[: len(data) - 200])  # the pixel data of the last slice is cut
    (folder / "DICOMDIR.txt").write_text("index")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "report.dcm").write_bytes(b"not dicom at all" * 10)

    def api() -> None:
        from fidkit.dicom.source import DicomSource

        src = DicomSource(folder)
        names = {Path(s.path).name for s in src.skipped}
        assert {slices[-1].name, "empty.dcm", "report.dcm"} <= names, names
        assert len(src) == 3  # the three intact slices, 1 mm apart
        for i in range(len(src)):
            assert src.load(i).dtype == np.uint8

    return Prepared(ctx.stats_argv(folder), 0, None, api)


@case
def case_dicom_only_junk(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "junk"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    (folder / "b.dcm").write_bytes(b"")
    (folder / "c.dcm").write_text("not dicom")
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="no usable DICOM")


@case
def case_dicom_every_slice_truncated(ctx: Ctx) -> Prepared:
    folder = ctx.dir / "ct"
    for path in _dicom_stack(folder, 3):
        path.write_bytes(path.read_bytes()[:300])
    return Prepared(ctx.stats_argv(folder), 2, InputError, lambda: ctx.compute(folder),
                    expect="no usable DICOM")


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    ctx: Ctx
    prepared: Prepared
    returncode: int
    stdout: str
    stderr: str


def _run_cli(ctx: Ctx, prepared: Prepared) -> Result:
    prefix = _drop_root_prefix() if prepared.drop_root else []
    proc = subprocess.run([*prefix, sys.executable, "-m", "fidkit", *prepared.argv], capture_output=True,
                          text=True, timeout=300, cwd=ctx.dir,
                          env=_env(prepared.env, ctx.dir / "fidkit-cache"))
    return Result(ctx, prepared, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def cli_results(request, tmp_path_factory, test_weights) -> dict[str, Result]:
    """Build the selected cases and run their CLI commands, three at a time."""
    sys.path.insert(0, str(Path(__file__).parent))
    wanted = [item.callspec.params["name"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")
              and "name" in item.callspec.params]
    built: dict[str, tuple[Ctx, Prepared]] = {}
    for name in dict.fromkeys(wanted):
        root = tmp_path_factory.mktemp("case-" + name[:40])
        ctx = Ctx(root, test_weights, root / "PWNED")
        built[name] = (ctx, CASES[name](ctx))
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_cli, *pair) for name, pair in built.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_cli(name, cli_results):
    r = cli_results[name]
    p = r.prepared
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.splitlines()
    assert r.returncode == p.code, (r.returncode, r.stderr)
    assert len(lines) == p.stderr_lines, r.stderr
    assert all(line.startswith("fidkit: ") for line in lines), r.stderr
    if p.code != 0:
        assert lines[-1].startswith("fidkit: error: "), r.stderr
        assert "internal error" not in r.stderr
    assert p.expect in r.stderr, (p.expect, r.stderr)
    if p.check is not None:
        p.check()


@pytest.mark.parametrize("name", list(CASES))
def test_api(name, cli_results, monkeypatch):
    r = cli_results[name]
    p = r.prepared
    monkeypatch.delenv("FIDKIT_WEIGHTS", raising=False)
    monkeypatch.setenv("FIDKIT_OFFLINE", "1")
    monkeypatch.setenv("FIDKIT_CACHE", str(r.ctx.dir / "fidkit-cache"))
    for key, value in p.env.items():
        monkeypatch.setenv(key, value)
    if p.error is None:
        p.api()
    else:
        with pytest.raises(FidkitError) as info:
            p.api()
        assert type(info.value) is p.error, type(info.value)
        assert "\n" not in str(info.value)
        assert p.expect in str(info.value) or p.drop_root, (p.expect, str(info.value))
    if p.check is not None:
        p.check()


def test_case_count():
    """The reliability section quotes this count; keep the two in step."""
    assert len(CASES) >= 40
    text = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    assert f"{len(CASES)} bad-input cases" in text
