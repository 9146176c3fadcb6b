"""Images read in place from archives and lists: a ``.zip``, one or many ``.tar`` shards
(WebDataset layout), or a text file naming image files. Nothing is unpacked to disk.

Order (fixed, so that statistics, manifests and checkpoints never depend on the machine):

* ``.zip``: image members sorted by member name (Python string order of the decoded names);
* ``.tar``: shards in the order given (a brace pattern's expansion order), members in the order
  they are stored in each shard;
* several archives: one after the other, in the order given;
* a file list: the list's own line order.

What counts as an image: a member whose name ends in one of
:data:`fidkit.defaults.IMAGE_SUFFIXES` (any case), hidden names (``.x``, ``._x``) and, in zips,
``__MACOSX/`` excepted, as for folders. In a tar, consecutive members that share a WebDataset key
(the path up to the first dot of the file name: ``000123`` for ``000123.jpg``, ``000123.json``,
``000123.seg.png``) form a sample. A sample normally holds one image. When it holds several image
members and exactly one of them has a bare image extension (``jpg``, ``png``, ...) beside others
with compound ones (``seg.png``, ``depth.jpg``), the bare one is the sample's image and the
others are auxiliary: not read, counted in ``describe()["auxiliary"]``. Otherwise every image
member is read (a plain tar of image files behaves like a folder).

Reading: the archives' directories are indexed once when the source is opened (a zip's central
directory, parsed here; each tar shard's headers, walked with :mod:`tarfile`), into compact
arrays (about 40 bytes and the name per image), then every member is read with ``os.pread`` at its
offset through per-thread file handles, so decoding threads (or forked worker processes) read
in parallel without sharing a file position.

Hostile or damaged archives give one-line errors: a missing or corrupt zip directory, a corrupt
or truncated tar, more than :data:`MAX_ARCHIVE_MEMBERS` members, or a compressed tar are
:class:`InputError` for the whole input; a member that claims more than
:data:`MAX_MEMBER_BYTES` bytes (zip bomb), is encrypted, is a symbolic or hard link, uses an
unsupported compression, fails its CRC or is cut short is a :class:`BadImageError` for that item,
the path an unreadable file takes (``--skip-bad`` skips it). Member names are never used as paths,
so ``../`` names are harmless.
"""
from __future__ import annotations

import bz2
import hashlib
import os
import re
import stat
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fidkit.defaults import IMAGE_SUFFIXES
from fidkit.errors import BadImageError, InputError, UsageError
from fidkit.sources.images import decode_image

#: Members (of any kind) one archive may hold; more is refused as hostile or broken.
MAX_ARCHIVE_MEMBERS = 20_000_000
#: Bytes one member may unpack to (a 178-Mpixel RGB BMP, the largest image decoded, is ~540 MB).
MAX_MEMBER_BYTES = 1 << 30
#: Paths a brace pattern may expand to.
MAX_EXPANSION = 1_000_000
#: Open archive files kept per decoding thread.
HANDLES_PER_THREAD = 8

ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip", ".tar")
COMPRESSED_TAR_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz",
                                            ".tar.xz", ".txz", ".tar.zst", ".tzst", ".tar.lz4")
_BARE_EXTENSIONS = frozenset(s[1:] for s in IMAGE_SUFFIXES)

# Member flags.
_LINK, _ENCRYPTED, _SPARSE = 1, 2, 4


# ---------------------------------------------------------------------------------------------
# Brace patterns

def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces, left to right, as bash does: ``{000000..000127}`` (integer
    ranges; zero padding kept when an end is written with a leading zero; optional step
    ``{0..10..2}``), ``{a..e}`` (letter ranges) and ``{train,val}`` lists, nested and combined
    (``s{0..1}-{a,b}.tar`` gives ``s0-a.tar s0-b.tar s1-a.tar s1-b.tar``). Braces that hold no
    list or range stay as written. Raises UsageError beyond :data:`MAX_EXPANSION` paths."""
    out: list[str] = []
    _expand(pattern, out)
    return out


_INT_RANGE = re.compile(r"^([+-]?\d+)\.\.([+-]?\d+)(?:\.\.([+-]?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.([+-]?\d+))?$")


def _expand(text: str, out: list[str]) -> None:
    group = _first_group(text)
    if group is None:
        if len(out) >= MAX_EXPANSION:
            raise UsageError(f"{text!r}: the brace pattern gives more than {MAX_EXPANSION} paths")
        out.append(text)
        return
    start, stop, alternatives = group
    for alternative in alternatives:
        _expand(text[:start] + alternative + text[stop + 1:], out)


def _first_group(text: str) -> tuple[int, int, list[str]] | None:
    """(position of '{', position of its '}', the alternatives) of the first expandable group."""
    for start, char in enumerate(text):
        if char != "{":
            continue
        depth, parts, last = 0, [], start + 1
        for stop in range(start, len(text)):
            if text[stop] == "{":
                depth += 1
            elif text[stop] == "}":
                depth -= 1
                if depth == 0:
                    break
            elif text[stop] == "," and depth == 1:
                parts.append(text[last:stop])
                last = stop + 1
        else:
            return None  # unbalanced: literal text
        if parts:
            return start, stop, parts + [text[last:stop]]
        ranged = _range(text[start + 1:stop])
        if ranged is not None:
            return start, stop, ranged
    return None


def _range(body: str) -> list[str] | None:
    match = _INT_RANGE.match(body)
    if match:
        first, last = int(match.group(1)), int(match.group(2))
        step = abs(int(match.group(3) or 1)) or 1
        count = abs(last - first) // step + 1
        if count > MAX_EXPANSION:
            raise UsageError(f"{{{body}}}: the range gives {count} values, more than "
                             f"{MAX_EXPANSION}")
        padded = any(len(end.lstrip("+-")) > 1 and end.lstrip("+-").startswith("0")
                     for end in match.groups()[:2])
        width = max(len(match.group(1).lstrip("+")), len(match.group(2).lstrip("+"))) if padded else 0
        values = range(first, last + (1 if last >= first else -1), step if last >= first else -step)
        return [_padded(v, width) for v in values]
    match = _CHAR_RANGE.match(body)
    if match:
        first, last = ord(match.group(1)), ord(match.group(2))
        step = abs(int(match.group(3) or 1)) or 1
        values = range(first, last + (1 if last >= first else -1), step if last >= first else -step)
        return [chr(v) for v in values]
    return None


def _padded(value: int, width: int) -> str:
    if value < 0:
        return "-" + str(-value).zfill(max(width - 1, 0))
    return str(value).zfill(width)


# ---------------------------------------------------------------------------------------------
# Compact tables

class _Names:
    """Many strings in one bytes blob (UTF-8, surrogates escaped) plus an offset array: a
    million member names cost ~30 MB instead of ~80 MB as Python strings."""

    def __init__(self, names: Sequence[str]) -> None:
        encoded = [n.encode("utf-8", "surrogateescape") for n in names]
        self.ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self.blob = b"".join(encoded)

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def __getitem__(self, index: int) -> str:
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.blob[start:int(self.ends[index])].decode("utf-8", "surrogateescape")


class _Index:
    """The image members of one archive, in reading order."""

    def __init__(self, path: Path, kind: str, size: int, members: int, names: Sequence[str],
                 offsets: Sequence[int], stored: Sequence[int], sizes: Sequence[int],
                 methods: Sequence[int], crcs: Sequence[int], flags: Sequence[int],
                 auxiliary: int = 0) -> None:
        self.path = path
        self.kind = kind
        self.size = size
        self.members = members  # every member, images or not
        self.auxiliary = auxiliary
        self.names = _Names(names)
        self.offsets = np.asarray(offsets, dtype=np.int64)  # zip: local header; tar: data
        self.stored = np.asarray(stored, dtype=np.int64)  # bytes in the archive
        self.sizes = np.asarray(sizes, dtype=np.int64)  # bytes unpacked
        self.methods = np.asarray(methods, dtype=np.int16)
        self.crcs = np.asarray(crcs, dtype=np.uint32)
        self.flags = np.asarray(flags, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, j: int, item: str) -> bytes:
        """The unpacked bytes of image member ``j``; BadImageError naming ``item``."""
        flags, size, stored = int(self.flags[j]), int(self.sizes[j]), int(self.stored[j])
        if flags & _LINK:
            raise BadImageError(f"{item}: a symbolic or hard link member; archives are read in "
                                "place and links are not followed: store the image itself")
        if flags & _ENCRYPTED:
            raise BadImageError(f"{item}: an encrypted member; decrypt the archive first")
        if flags & _SPARSE:
            raise BadImageError(f"{item}: a sparse tar member, which is not read; store it as a "
                                "regular file")
        if size > MAX_MEMBER_BYTES or stored > MAX_MEMBER_BYTES:
            raise BadImageError(f"{item}: declares {max(size, stored)} bytes, over the "
                                f"{MAX_MEMBER_BYTES}-byte limit: refused as a possible archive "
                                "bomb")
        offset = int(self.offsets[j])
        if self.kind == "tar":
            return self._read_exact(offset, size, item)
        header = self._read_exact(offset, 30, item)
        if header[:4] != b"PK\x03\x04":
            raise BadImageError(f"{item}: no local header at byte {offset} (corrupt archive); "
                                "re-create it")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        raw = self._read_exact(offset + 30 + name_length + extra_length, stored, item)
        method = int(self.methods[j])
        try:
            if method == 0:
                data = raw
            elif method == 8:
                inflater = zlib.decompressobj(-15)
                data = inflater.decompress(raw, size + 1)
            elif method == 12:
                data = bz2.BZ2Decompressor().decompress(raw, max_length=size + 1)
            else:
                raise BadImageError(f"{item}: zip compression method {method} is not supported "
                                    "(stored, deflate and bzip2 are); re-zip it")
        except (zlib.error, OSError, EOFError, ValueError) as exc:
            raise BadImageError(f"{item}: corrupt compressed data ({' '.join(str(exc).split())}); "
                                "re-create the archive") from None
        if len(data) != size:
            raise BadImageError(f"{item}: unpacks to {'more' if len(data) > size else 'fewer'} "
                                f"bytes than the {size} its directory declares (corrupt or "
                                "hostile archive); re-create it")
        if zlib.crc32(data) != int(self.crcs[j]):
            raise BadImageError(f"{item}: CRC-32 mismatch (corrupt member); re-create the "
                                "archive")
        return data

    def _read_exact(self, offset: int, count: int, item: str) -> bytes:
        if offset + count > self.size:
            raise BadImageError(f"{item}: extends past the end of the archive ({self.size} "
                                "bytes): truncated; re-download it")
        try:
            data = _read_at(str(self.path), offset, count)
        except OSError as exc:
            raise BadImageError(f"{item}: cannot read {self.path} ({exc.strerror or exc})") from None
        if len(data) != count:
            raise BadImageError(f"{item}: the archive ended early (truncated while in use?); "
                                "run again once it is complete")
        return data


_LOCAL = threading.local()


def _read_at(path: str, offset: int, count: int) -> bytes:
    """``count`` bytes at ``offset`` of ``path`` (fewer only at the end of the file), through this
    thread's own handles (a small LRU), so that threads never share a file position and each
    forked process opens its own."""
    files = getattr(_LOCAL, "files", None)
    if files is None or getattr(_LOCAL, "pid", None) != os.getpid():
        files = _LOCAL.files = OrderedDict()
        _LOCAL.pid = os.getpid()
    handle = files.get(path)
    if handle is None:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open for later reads
        files[path] = handle
        while len(files) > HANDLES_PER_THREAD:
            files.popitem(last=False)[1].close()
    else:
        files.move_to_end(path)
    parts, done = [], 0
    while done < count:
        chunk = os.pread(handle.fileno(), count - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return bool(base) and not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def _archive_error(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}")


# ---------------------------------------------------------------------------------------------
# Zip

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory, 22 bytes
_EOCD64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory entry, 46 bytes


def _zip_directory(handle: Any, path: Path, size: int) -> tuple[int, int, int]:
    """(member count, central directory offset, offset correction for prepended data)."""
    tail_size = min(size, _EOCD.size + 65535)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    position = tail.rfind(b"PK\x05\x06")
    while position >= 0 and position + _EOCD.size > len(tail):
        position = tail.rfind(b"PK\x05\x06", 0, position)
    if position < 0:
        raise _archive_error(path, "not a zip archive, or truncated (no end-of-central-directory "
                                   "record); re-download or re-create it")
    eocd_at = size - tail_size + position
    (_, disk, cd_disk, _, count, cd_size, cd_offset, _) = _EOCD.unpack_from(tail, position)
    directory_end = eocd_at
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        if eocd_at < _EOCD64_LOCATOR.size:
            raise _archive_error(path, "corrupt zip64 directory; re-create the archive")
        handle.seek(eocd_at - _EOCD64_LOCATOR.size)
        locator = handle.read(_EOCD64_LOCATOR.size)
        signature, _, _, _ = _EOCD64_LOCATOR.unpack(locator)
        if signature != 0x07064B50:
            raise _archive_error(path, "corrupt zip64 directory (no locator); re-create the archive")
        directory_end = eocd_at - _EOCD64_LOCATOR.size - _EOCD64.size
        if directory_end < 0:
            raise _archive_error(path, "corrupt zip64 directory; re-create the archive")
        handle.seek(directory_end)
        record = handle.read(_EOCD64.size)
        fields = _EOCD64.unpack(record)
        if fields[0] != 0x06064B50:
            raise _archive_error(path, "corrupt zip64 directory record; re-create the archive")
        disk, cd_disk, count, cd_size, cd_offset = fields[4], fields[5], fields[7], fields[8], fields[9]
    if disk != 0 or cd_disk != 0:
        raise _archive_error(path, "a multi-part (split) zip; join the parts into one archive")
    if count > MAX_ARCHIVE_MEMBERS:
        raise _archive_error(path, f"declares {count} members, over the limit of "
                                   f"{MAX_ARCHIVE_MEMBERS}; split it into several archives")
    correction = directory_end - cd_size - cd_offset
    start = cd_offset + correction
    if start < 0 or cd_size > size or count * _CENTRAL.size > cd_size:
        raise _archive_error(path, f"corrupt zip directory (declares {count} members in "
                                   f"{cd_size} bytes); re-create the archive")
    return count, start, correction


def _index_zip(path: Path) -> _Index:
    import mmap

    size = path.stat().st_size
    rows: list[tuple] = []
    with open(path, "rb") as handle:
        count, start, correction = _zip_directory(handle, path, size)
        # The directory is parsed straight from a read-only map of the file: no copy of it
        # (tens of MB for a million members) and no read call per field.
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            position = start
            for number in range(count):
                if position + _CENTRAL.size > size:
                    raise _archive_error(path, f"zip directory cut short at member {number} of "
                                               f"{count}; re-create the archive")
                (signature, made_by, _, flag_bits, method, _, _, crc, stored, unpacked,
                 name_length, extra_length, comment_length, _, _, external,
                 offset) = _CENTRAL.unpack_from(view, position)
                if signature != 0x02014B50:
                    raise _archive_error(path, f"corrupt zip directory at member {number}; "
                                               "re-create the archive")
                position += _CENTRAL.size
                raw_name = view[position:position + name_length]
                extra = view[position + name_length:position + name_length + extra_length]
                position += name_length + extra_length + comment_length
                name = raw_name.decode("utf-8" if flag_bits & 0x800 else "cp437", "surrogateescape")
                if name.endswith("/") or "/__MACOSX/" in f"/{name}" or not _is_image_name(name):
                    continue
                if 0xFFFFFFFF in (stored, unpacked, offset):
                    unpacked, stored, offset = _zip64_sizes(extra, unpacked, stored, offset, path,
                                                            name)
                flags = 0
                if flag_bits & 0x1:
                    flags |= _ENCRYPTED
                if made_by >> 8 == 3 and stat.S_ISLNK(external >> 16):
                    flags |= _LINK
                rows.append((name, offset + correction, stored, unpacked, method, crc, flags))
    rows.sort(key=lambda row: row[0])
    columns = list(zip(*rows)) if rows else [[] for _ in range(7)]
    return _Index(path, "zip", size, count, columns[0], columns[1], columns[2], columns[3],
                  columns[4], columns[5], columns[6])


def _zip64_sizes(extra: bytes, unpacked: int, stored: int, offset: int, path: Path,
                 name: str) -> tuple[int, int, int]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        body = extra[position + 4:position + 4 + length]
        if tag == 0x0001:
            values = [struct.unpack_from("<Q", body, k)[0] for k in range(0, len(body) - 7, 8)]
            wanted = [unpacked == 0xFFFFFFFF, stored == 0xFFFFFFFF, offset == 0xFFFFFFFF]
            if len(values) < sum(wanted):
                break
            found = iter(values)
            unpacked = next(found) if wanted[0] else unpacked
            stored = next(found) if wanted[1] else stored
            offset = next(found) if wanted[2] else offset
            return unpacked, stored, offset
        position += 4 + length
    raise _archive_error(path, f"member {name!r} lacks its zip64 sizes (corrupt directory); "
                               "re-create the archive")


# ---------------------------------------------------------------------------------------------
# Tar

_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
                     b"\x28\xb5\x2f\xfd": "zstd", b"\x04\x22\x4d\x18": "lz4"}


def _sample_key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: (key, extension) at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension if dot else "")


def _index_tar(path: Path) -> _Index:
    import tarfile

    size = path.stat().st_size
    rows: list[tuple] = []
    group: list[tuple] = []
    group_key: str | None = None
    auxiliary = 0
    count = 0

    def flush() -> None:
        nonlocal auxiliary
        if not group:
            return
        bare = [row for row in group if row[-1].lower() in _BARE_EXTENSIONS]
        chosen = bare if len(group) > 1 and len(bare) == 1 else group
        auxiliary += len(group) - len(chosen)
        rows.extend(row[:-1] for row in chosen)
        group.clear()

    with open(path, "rb") as handle:
        head = handle.read(6)
        for magic, kind in _COMPRESSED_MAGIC.items():
            if head.startswith(magic):
                raise _archive_error(path, f"a {kind}-compressed tar, which cannot be read by "
                                           "offset; decompress it to a plain .tar (WebDataset "
                                           "shards are plain tars)")
        handle.seek(0)
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")
        except tarfile.ReadError as exc:
            raise _archive_error(path, f"not a readable tar archive ({exc}); re-create or "
                                       "re-download it") from None
        while True:
            try:
                info = archive.next()
            except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
                raise _archive_error(path, f"corrupt or truncated tar archive after {count} "
                                           f"members ({' '.join(str(exc).split())}); re-download "
                                           "or re-create it") from None
            if info is None:
                break
            archive.members.clear()  # tarfile keeps every header otherwise: memory ~ N
            count += 1
            if count > MAX_ARCHIVE_MEMBERS:
                raise _archive_error(path, f"more than {MAX_ARCHIVE_MEMBERS} members; split it "
                                           "into several shards")
            name = info.name
            key, extension = _sample_key(name)
            if key != group_key:
                flush()
                group_key = key
            if not _is_image_name(name):
                continue
            if info.issym() or info.islnk():
                flags = _LINK
            elif info.issparse():
                flags = _SPARSE
            elif info.isreg():
                flags = 0
            else:
                continue  # folders, devices, fifos
            group.append((name, info.offset_data, info.size, info.size, -1, 0, flags, extension))
        flush()
        end = archive.offset
        handle.seek(min(end, size))
        trailer = handle.read(1 << 16)
    if end > size:
        raise _archive_error(path, "truncated tar archive (the last member is cut short); "
                                   "re-download or re-create it")
    if trailer.strip(b"\0"):
        raise _archive_error(path, f"corrupt tar header at byte {end} after {count} members; "
                                   "re-download or re-create it")
    if count and end == size:
        raise _archive_error(path, "truncated tar archive (no end-of-archive marker after "
                                   f"{count} members); re-download or re-create it")
    columns = list(zip(*rows)) if rows else [[] for _ in range(7)]
    return _Index(path, "tar", size, count, columns[0], columns[1], columns[2], columns[3],
                  columns[4], columns[5], columns[6], auxiliary=auxiliary)


# ---------------------------------------------------------------------------------------------
# Sources

class ArchiveSource:
    """The images of one or more ``.zip``/``.tar`` archives, read in place (see the module's
    docstring for the order and what counts as an image). ``item_name`` is
    ``"ARCHIVE:MEMBER"``. Raises InputError when an archive cannot be indexed or none holds an
    image; ``load`` raises BadImageError for an unreadable member."""

    def __init__(self, archives: Sequence[str | os.PathLike], *, spec: str | None = None) -> None:
        if not archives:
            raise InputError(f"{spec or 'archive list'}: no archives given")
        self.spec = spec if spec is not None else os.fspath(archives[0])
        self.indexes: list[_Index] = []
        for archive in archives:
            path = Path(archive)
            kind = archive_kind(path)
            if kind is None:
                raise InputError(f"{path}: not a .zip or .tar archive")
            try:
                index = _index_zip(path) if kind == "zip" else _index_tar(path)
            except OSError as exc:
                raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
            self.indexes.append(index)
        counts = [len(index) for index in self.indexes]
        self._ends = np.cumsum(counts, dtype=np.int64)
        if int(self._ends[-1]) == 0:
            members = sum(index.members for index in self.indexes)
            raise InputError(f"{self.spec}: no image members among {members} members of "
                             f"{len(self.indexes)} archive(s); supported: png, jpg, jpeg, bmp, "
                             "tif, tiff, webp, pgm, ppm")
        self._digest: str | None = None

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, index: int) -> tuple[_Index, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        archive = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[archive - 1]) if archive else 0
        return self.indexes[archive], index - start

    def load(self, index: int) -> np.ndarray:
        archive, j = self._locate(index)
        item = f"{archive.path}:{archive.names[j]}"
        return decode_image(item, data=archive.read(j, item))

    def item_name(self, index: int) -> str:
        archive, j = self._locate(index)
        return f"{archive.path}:{archive.names[j]}"

    def list_digest(self) -> str:
        """SHA-256 over ``archive file name:member\\tsize`` lines of every image, in order."""
        if self._digest is None:
            digest = hashlib.sha256()
            for archive in self.indexes:
                for j in range(len(archive)):
                    digest.update(f"{archive.path.name}:{archive.names[j]}\t"
                                  f"{int(archive.sizes[j])}\n".encode("utf-8", "surrogateescape"))
            self._digest = digest.hexdigest()
        return self._digest

    def describe(self) -> dict[str, Any]:
        kinds = sorted({index.kind for index in self.indexes})
        listing = hashlib.sha256()
        for index in self.indexes:
            listing.update(f"{index.path.name}\t{index.size}\n".encode("utf-8", "surrogateescape"))
        out: dict[str, Any] = {
            "kind": kinds[0] if len(kinds) == 1 else "archives",
            "spec": self.spec,
            "folder": str(self.indexes[0].path.resolve().parent),
            "archives": len(self.indexes),
            "bytes": int(sum(index.size for index in self.indexes)),
            "archives_sha256": listing.hexdigest(),
            "members": int(sum(index.members for index in self.indexes)),
            "images": len(self),
            "list_sha256": self.list_digest(),
        }
        if len(self.indexes) <= 16:
            out["archive_files"] = [{"name": index.path.name, "size": index.size}
                                    for index in self.indexes]
        auxiliary = sum(index.auxiliary for index in self.indexes)
        if auxiliary:
            out["auxiliary"] = int(auxiliary)
        return out


class FileListSource:
    """The image files named in a text file, one path per line (UTF-8), in the list's order.
    Relative paths are relative to the list's folder; blank lines are ignored and each line is
    stripped of surrounding white space. A listed file that is missing or unreadable is a
    BadImageError when it is reached (``--skip-bad`` skips it). Raises InputError for an
    unreadable or empty list."""

    def __init__(self, list_path: str | os.PathLike) -> None:
        self.list_path = Path(list_path)
        try:
            text = self.list_path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise InputError(f"{self.list_path} does not exist; check the --files-from path") from None
        except IsADirectoryError:
            raise InputError(f"{self.list_path} is a folder; --files-from takes a text file "
                             "with one image path per line") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.list_path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"{self.list_path}: not UTF-8 text; --files-from takes a text file "
                             "with one image path per line") from None
        entries = [line.strip() for line in text.splitlines()]
        entries = [entry for entry in entries if entry]
        if not entries:
            raise InputError(f"{self.list_path}: the list names no files")
        digest = hashlib.sha256()
        for entry in entries:
            digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
        self._digest = digest.hexdigest()
        self.root = self.list_path.resolve().parent
        self.entries = _Names(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, index: int) -> Path:
        entry = Path(self.entries[index])
        return entry if entry.is_absolute() else self.root / entry

    def load(self, index: int) -> np.ndarray:
        path = self.path(index)
        if not path.is_file():
            raise BadImageError(f"{path}: listed in {self.list_path} but "
                                f"{'not a file' if path.exists() else 'missing'}; fix the list")
        return decode_image(path)

    def item_name(self, index: int) -> str:
        return str(self.path(index))

    def describe(self) -> dict[str, Any]:
        return {"kind": "file-list", "list": str(self.list_path.resolve()), "files": len(self),
                "list_sha256": self._digest}


# ---------------------------------------------------------------------------------------------
# Entry points

def archive_kind(path: str | os.PathLike) -> str | None:
    """``"zip"`` or ``"tar"`` from the name's suffix (any case), None for anything else.
    Raises InputError for a compressed tar (it cannot be read by offset)."""
    name = os.fspath(path).lower()
    if name.endswith(COMPRESSED_TAR_SUFFIXES):
        raise InputError(f"{path}: a compressed tar cannot be read by offset; decompress it to a "
                         "plain .tar first (WebDataset shards are plain tars)")
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".tar"):
        return "tar"
    return None


def open_archive_source(spec: Any) -> ArchiveSource | None:
    """An :class:`ArchiveSource` for ``spec`` when it names archives: a ``.zip`` or ``.tar`` file,
    or a brace pattern of them (``shards/train-{000000..000127}.tar``, ``{a,b}.zip``; see
    :func:`expand_braces`); None for anything else (a folder, an array file), so that
    :func:`fidkit.sources.open_source` can go on. Raises InputError for missing archives,
    compressed tars and unreadable archives."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = os.fspath(spec)
    if not isinstance(text, str):
        return None
    paths = expand_braces(text) if "{" in text and not os.path.exists(text) else [text]
    kinds = [archive_kind(p) for p in paths]
    if all(kind is None for kind in kinds):
        if len(paths) > 1:
            raise InputError(f"{text}: brace patterns are for .tar/.zip archives; give a folder "
                             "or an archive")
        return None
    strangers = [p for p, kind in zip(paths, kinds) if kind is None]
    if strangers:
        raise InputError(f"{strangers[0]}: not a .tar/.zip archive; a pattern must name archives only")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        what = "a folder" if os.path.isdir(missing[0]) else "missing"
        raise InputError(f"{missing[0]} is {what} ({len(missing)} of {len(paths)} archive(s) "
                         "not found); check the path or the pattern")
    if len(set(paths)) != len(paths):
        raise InputError(f"{text}: names an archive twice; each image would count twice")
    return ArchiveSource(paths, spec=text)


def open_file_list(list_path: str | os.PathLike) -> FileListSource:
    """The source behind ``--files-from LIST`` (see :class:`FileListSource`)."""
    return FileListSource(list_path)

