"""Atomic file writing: a reader (or a crash) never sees a half-written file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from fidkit.errors import InputError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed, fsynced and
    renamed over ``path`` in one step. On any error (or SIGKILL) ``path`` is left as it was and the
    temporary file is removed (or, after SIGKILL, left under a hidden ``.name.*.tmp`` name).

    Two concurrent writers each rename a complete file: the last one wins, neither corrupts it.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {target}: folder {folder} does not exist; create it first")
    if target.is_dir():
        raise InputError(f"cannot write {target}: it is a folder; give a file name")
    if not overwrite and target.exists():
        raise InputError(f"{target} exists; remove it or choose another output name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write in {folder}: {exc.strerror}; check its permissions") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes 0600 files; a stats file is meant to be shared, so give it the mode
            # open() would (0666 less the umask), or keep the mode of the file it replaces.
            os.fchmod(handle.fileno(), _mode_for(target))
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the name appeared meanwhile: never clobber
            except FileExistsError:
                raise InputError(f"{target} exists; remove it or choose another output name") from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk (matters on power loss,
    # not on a killed process); some file systems refuse to open folders, which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`; raises :class:`InputError`."""
    with atomic_writer(path, overwrite=overwrite) as handle:
        handle.write(data)


def write_with(path: str | os.PathLike, fn: Callable[[IO[bytes]], None], *, overwrite: bool = True) -> None:
    """Call ``fn(handle)`` on an :func:`atomic_writer` handle for ``path``."""
    with atomic_writer(path, overwrite=overwrite) as handle:
        fn(handle)
