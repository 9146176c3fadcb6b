"""Archives and lists read in place: zip (sorted members), tar shards (shard then member order,
WebDataset samples), brace patterns (checked against bash itself), --files-from lists; images
equal to PIL's decoding of the same bytes; parallel and forked reads; hostile and damaged
archives give one-line errors (InputError for the input, BadImageError for a member)."""
from __future__ import annotations

import io
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidkit.errors import BadImageError, InputError, UsageError
from fidkit.sources import archives
from fidkit.sources.archives import (ArchiveSource, FileListSource, expand_braces,
                                     open_archive_source)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _pil(data: bytes) -> np.ndarray:
    """The independent reference: PIL's own decoding of the member's bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)


def _add(tar: tarfile.TarFile, name: str, data: bytes, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _shards(folder: Path, images: np.ndarray, per_shard: int = 4) -> list[Path]:
    """WebDataset shards: per sample a png, a json and an auxiliary seg.png."""
    paths = []
    for shard in range(len(images) // per_shard):
        path = folder / f"train-{shard:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                _add(tar, f"{i:06d}.png", _png(images[i]))
                _add(tar, f"{i:06d}.json", b'{"label": 1}')
                _add(tar, f"{i:06d}.seg.png", _png(images[0] // 2))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ braces

@pytest.mark.parametrize("pattern", [
    "train-{000000..000011}.tar", "s{0..3}.tar", "x{8..11}y", "{a,b}{1..2}", "{a,{b,c}d}e",
    "a{b}c", "{09..12}", "{-2..02}", "{5..1}", "{0..10..3}", "{a..e}", "p{,q}r", "{x", "a}b",
    "{1..2}-{a,b}/{c,d}.tar",
])
def test_brace_expansion_matches_bash(pattern):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    expected = subprocess.run([bash, "-c", f"printf '%s\\n' {pattern}"], capture_output=True,
                              text=True, check=True).stdout.split("\n")[:-1]
    assert expand_braces(pattern) == expected


def test_brace_expansion_refuses_absurd_ranges():
    with pytest.raises(UsageError, match="more than"):
        expand_braces("shard-{0..99999999999}.tar")


# ------------------------------------------------------------------------------ zip

def test_zip_members_sorted_by_name_and_decoded_like_pil(tmp_path, images):
    path = tmp_path / "set.zip"
    order = list(range(10))
    random.Random(1).shuffle(order)
    members = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i in order:  # written shuffled, read sorted
            name = f"imgs/{i:03d}.{'png' if i % 2 else 'jpg'}"
            data = _png(images[i]) if i % 2 else _jpeg(images[i])
            method = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2)[i % 3]
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
            members[name] = data
        zf.writestr("imgs/", b"")
        zf.writestr("readme.txt", b"not an image")
        zf.writestr("__MACOSX/imgs/._000.png", b"resource fork")
        zf.writestr("imgs/.hidden.png", _png(images[0]))
    source = open_archive_source(str(path))
    names = sorted(members)
    assert len(source) == 10
    assert [source.item_name(i) for i in range(10)] == [f"{path}:{n}" for n in names]
    for i, name in enumerate(names):
        assert np.array_equal(source.load(i), _pil(members[name]))
    described = source.describe()
    assert described["kind"] == "zip" and described["images"] == 10 and described["members"] == 14
    assert described["archive_files"] == [{"name": "set.zip", "size": path.stat().st_size}]


def test_zip64_directory(tmp_path, images):
    # More than 65535 members: the count lives in the zip64 end-of-directory record.
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(65540):
            zf.writestr(f"meta/{i}.txt", b"")
        zf.writestr("z.png", _png(images[3]))
    with open(path, "rb") as handle:
        handle.seek(-22, os.SEEK_END)
        assert struct.unpack("<IHHHHIIH", handle.read(22))[4] == 0xFFFF  # really zip64
    source = open_archive_source(path)
    assert len(source) == 1 and source.describe()["members"] == 65541
    assert np.array_equal(source.load(0), images[3])


def test_parallel_threads_and_forked_processes_read_the_same(tmp_path, images):
    paths = _shards(tmp_path, images)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i, image in enumerate(images):
            zf.writestr(f"{i:02d}.png", _png(image))
    for source in (open_archive_source(str(tmp_path / "train-{000000..000002}.tar")),
                   open_archive_source(tmp_path / "a.zip")):
        assert len(source) == len(images)
        sequential = [source.load(i) for i in range(len(source))]
        assert all(np.array_equal(a, b) for a, b in zip(sequential, images))
        order = list(range(len(source))) * 4
        random.Random(3).shuffle(order)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(source.load, order))
        assert all(np.array_equal(g, sequential[i]) for g, i in zip(got, order))
        context = multiprocessing.get_context("fork")
        with context.Pool(2) as pool:
            forked = pool.map(source.load, range(len(source)))
        assert all(np.array_equal(a, b) for a, b in zip(forked, sequential))
    assert len(paths) == 3


# ------------------------------------------------------------------------------ tar

def test_tar_shards_in_shard_then_member_order_with_webdataset_samples(tmp_path, images):
    _shards(tmp_path, images)
    source = open_archive_source(str(tmp_path / "train-{000000..000002}.tar"))
    assert len(source) == 12  # the seg.png of each sample is auxiliary
    assert source.item_name(5) == f"{tmp_path / 'train-000001.tar'}:000005.png"
    assert all(np.array_equal(source.load(i), images[i]) for i in range(12))
    described = source.describe()
    assert described["kind"] == "tar" and described["archives"] == 3
    assert described["members"] == 36 and described["auxiliary"] == 12
    assert described["spec"].endswith("train-{000000..000002}.tar")


def test_tar_sample_rule_keeps_every_image_unless_one_is_the_bare_one(tmp_path, images):
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "a/img.001.png", _png(images[1]))  # same key "a/img": no bare image,
        _add(tar, "a/img.002.png", _png(images[2]))  # so both are read
        _add(tar, "b/x.jpg", _jpeg(images[3]))  # two bare images: both read
        _add(tar, "b/x.png", _png(images[4]))
        _add(tar, "c/" + "long" * 40 + ".png", _png(images[5]))  # pax long name
        _add(tar, "d/._hidden.png", _png(images[6]))
        _add(tar, "e", b"", type=tarfile.DIRTYPE)
    source = open_archive_source(path)
    names = [source.item_name(i).split(":", 1)[1] for i in range(len(source))]
    assert names == ["a/img.001.png", "a/img.002.png", "b/x.jpg", "b/x.png", "c/" + "long" * 40 + ".png"]
    assert "auxiliary" not in source.describe()
    assert np.array_equal(source.load(4), images[5])


def test_member_list_digest_follows_the_members(tmp_path, images):
    first = tmp_path / "one" / "s.tar"
    second = tmp_path / "two" / "s.tar"
    for path, last in ((first, images[1]), (second, images[2][:, :8])):
        path.parent.mkdir()
        with tarfile.open(path, "w") as tar:
            _add(tar, "0.png", _png(images[0]))
            _add(tar, "1.png", _png(last))
    a, b = open_archive_source(first).describe(), open_archive_source(second).describe()
    assert a["list_sha256"] != b["list_sha256"]
    assert open_archive_source(first).describe() == a


# ------------------------------------------------------------------------------ lists

def test_files_from_list(tmp_path, images):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / "imgs" / f"{i}.png")
    elsewhere = tmp_path / "abs.png"
    Image.fromarray(images[5]).save(elsewhere)
    listing = tmp_path / "lists" / "set.txt"
    listing.parent.mkdir()
    listing.write_text(f"../imgs/2.png\n\n  ../imgs/0.png  \n{elsewhere}\n../imgs/missing.png\n")
    source = FileListSource(listing)
    assert len(source) == 4
    for i, expected in enumerate((images[2], images[0], images[5])):
        assert np.array_equal(source.load(i), expected)
    with pytest.raises(BadImageError, match=r"missing\.png: listed in .*set\.txt but missing"):
        source.load(3)
    assert source.describe()["kind"] == "file-list" and source.describe()["files"] == 4
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="names no files"):
        FileListSource(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        FileListSource(tmp_path / "latin.txt")


# ------------------------------------------------------------------------------ what is not an archive

def test_folders_and_arrays_are_not_archive_specs(tmp_path):
    (tmp_path / "folder").mkdir()
    assert open_archive_source(str(tmp_path / "folder")) is None
    assert open_archive_source(str(tmp_path / "x.npy")) is None
    assert open_archive_source(np.zeros(3)) is None


def test_missing_shards_and_mixed_patterns(tmp_path, images):
    _shards(tmp_path, images)
    with pytest.raises(InputError, match=r"train-000003\.tar is missing \(2 of 5 archive"):
        open_archive_source(str(tmp_path / "train-{000000..000004}.tar"))
    with pytest.raises(InputError, match="brace patterns are for"):
        open_archive_source(str(tmp_path / "{a,b}"))
    with pytest.raises(InputError, match="twice"):
        open_archive_source(str(tmp_path / "train-{000000,000000}.tar"))


# ------------------------------------------------------------------------------ hostile and damaged

def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 400
    return message


def _zip_with(tmp_path: Path, data: bytes, name: str = "x.png", **info_fields) -> Path:
    path = tmp_path / f"{name.replace('/', '_')}.zip"
    info = zipfile.ZipInfo(name)
    for key, value in info_fields.items():
        setattr(info, key, value)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _patch_central(path: Path, field_offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of the first central-directory entry."""
    blob = bytearray(path.read_bytes())
    at = blob.rfind(b"PK\x01\x02")
    struct.pack_into(fmt, blob, at + field_offset, value)
    path.write_bytes(bytes(blob))


def test_zip_bomb_declared_size_is_refused_before_reading(tmp_path, images, monkeypatch):
    data = _png(images[0])
    path = _zip_with(tmp_path, data)
    _patch_central(path, 24, "<I", 0xFFFFFFF0)  # uncompressed size: ~4 GB declared
    source = open_archive_source(path)
    with pytest.raises(BadImageError) as exc:
        source.load(0)
    assert "archive bomb" in _one_line(exc)
    # A real one: 3 MB of zeros in a few kB, over a lowered limit.
    bomb = _zip_with(tmp_path, b"\0" * (3 << 20), name="bomb.bmp")
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 1 << 20)
    with pytest.raises(BadImageError, match="archive bomb"):
        open_archive_source(bomb).load(0)


def test_zip_lies_about_its_size_or_crc(tmp_path, images):
    data = _png(images[0])
    smaller = _zip_with(tmp_path, data, name="a.png")
    _patch_central(smaller, 24, "<I", len(data) - 10)
    with pytest.raises(BadImageError, match="unpacks to more bytes"):
        open_archive_source(smaller).load(0)
    crc = _zip_with(tmp_path, data, name="b.png")
    _patch_central(crc, 16, "<I", 1234)
    with pytest.raises(BadImageError, match="CRC-32 mismatch"):
        open_archive_source(crc).load(0)


def test_zip_links_encryption_and_methods_are_bad_members(tmp_path, images):
    link = _zip_with(tmp_path, b"/etc/passwd", name="l.png", create_system=3,
                     external_attr=0o120777 << 16)
    with pytest.raises(BadImageError, match="link member"):
        open_archive_source(link).load(0)
    encrypted = _zip_with(tmp_path, _png(images[0]), name="e.png")
    _patch_central(encrypted, 8, "<H", 0x1)
    with pytest.raises(BadImageError, match="encrypted"):
        open_archive_source(encrypted).load(0)
    path = tmp_path / "lzma.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("m.png", _png(images[0]))
    with pytest.raises(BadImageError, match="compression method 14"):
        open_archive_source(path).load(0)
    garbage = _zip_with(tmp_path, b"definitely not a png", name="g.png")
    with pytest.raises(BadImageError, match="g.png: not a readable image"):
        open_archive_source(garbage).load(0)


def test_zip_path_traversal_names_are_only_names(tmp_path, images):
    path = _zip_with(tmp_path / "", _png(images[1]), name="../../evil.png")
    before = set(tmp_path.parent.parent.iterdir())
    source = open_archive_source(path)
    assert source.item_name(0).endswith(":../../evil.png")
    assert np.array_equal(source.load(0), images[1])
    assert set(tmp_path.parent.parent.iterdir()) == before


def test_zip_absurd_member_count_and_truncation(tmp_path, images):
    path = _zip_with(tmp_path, _png(images[0]))
    blob = bytearray(path.read_bytes())
    eocd = blob.rfind(b"PK\x05\x06")
    absurd = bytearray(blob)
    struct.pack_into("<HH", absurd, eocd + 8, 0xFFFE, 0xFFFE)  # 65534 members in ~50 bytes
    (tmp_path / "absurd.zip").write_bytes(bytes(absurd))
    with pytest.raises(InputError) as exc:
        open_archive_source(tmp_path / "absurd.zip")
    assert "corrupt zip directory (declares 65534 members" in _one_line(exc)
    (tmp_path / "cut.zip").write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(InputError) as exc:
        open_archive_source(tmp_path / "cut.zip")
    assert "truncated" in _one_line(exc)
    (tmp_path / "fake.zip").write_bytes(b"PK but not really a zip" * 10)
    with pytest.raises(InputError, match="not a zip archive"):
        open_archive_source(tmp_path / "fake.zip")


def test_zip_member_count_limit(tmp_path, images, monkeypatch):
    path = tmp_path / "five.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.png", _png(images[i]))
    monkeypatch.setattr(archives, "MAX_ARCHIVE_MEMBERS", 4)
    with pytest.raises(InputError, match="declares 5 members, over the limit of 4"):
        open_archive_source(path)


def test_tar_links_sparse_and_member_limit(tmp_path, images, monkeypatch):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "0.png", _png(images[0]))
        _add(tar, "1.png", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "2.png", b"", type=tarfile.LNKTYPE, linkname="0.png")
    source = open_archive_source(path)
    assert len(source) == 3 and np.array_equal(source.load(0), images[0])
    for i in (1, 2):
        with pytest.raises(BadImageError) as exc:
            source.load(i)
        assert "link member" in _one_line(exc)
    monkeypatch.setattr(archives, "MAX_ARCHIVE_MEMBERS", 2)
    with pytest.raises(InputError, match="more than 2 members"):
        open_archive_source(path)


def test_tar_truncated_or_corrupt_or_compressed(tmp_path, images):
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        for i in range(3):
            _add(tar, f"{i}.png", _png(images[i]))
    blob = good.read_bytes()
    with tarfile.open(good) as tar:
        members = tar.getmembers()
    last = members[-1]
    cases = {
        "in_data": blob[: last.offset_data + 100],  # inside the last member's data
        "at_boundary": blob[: last.offset_data + -(-last.size // 512) * 512],  # no end marker
        "in_header": blob[: last.offset + 200],  # inside the last header
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.tar").write_bytes(data)
        with pytest.raises(InputError) as exc:
            open_archive_source(tmp_path / f"{name}.tar")
        message = _one_line(exc)
        assert f"{name}.tar" in message and ("truncated" in message or "corrupt" in message), message
    corrupt = bytearray(blob)
    corrupt[last.offset + 148:last.offset + 156] = b"9999999\0"  # bad header checksum
    (tmp_path / "badsum.tar").write_bytes(bytes(corrupt))
    with pytest.raises(InputError, match="corrupt tar header"):
        open_archive_source(tmp_path / "badsum.tar")
    import gzip

    (tmp_path / "zipped.tar").write_bytes(gzip.compress(blob))
    with pytest.raises(InputError, match="gzip-compressed tar"):
        open_archive_source(tmp_path / "zipped.tar")
    with pytest.raises(InputError, match="compressed tar cannot be read by offset"):
        open_archive_source(tmp_path / "shards.tar.gz")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(InputError, match="empty.tar: not a readable tar"):
        open_archive_source(tmp_path / "empty.tar")


def test_archive_without_images(tmp_path):
    path = tmp_path / "docs.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "a.txt", b"hello")
    with pytest.raises(InputError, match="no image members among 1 members"):
        open_archive_source(path)


def test_member_truncated_after_indexing(tmp_path, images):
    path = tmp_path / "shrinks.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "0.png", _png(images[0]))
        _add(tar, "1.png", _png(images[1]))
    source = ArchiveSource([path])
    with tarfile.open(path) as tar:
        cut = tar.getmember("1.png").offset_data + 10
    os.truncate(path, cut)  # the file changes under a running job
    with pytest.raises(BadImageError, match="truncated"):
        source.load(1)
