"""Private, durable files: what every store of this project (dead letters, journals, the audit
log, encryption key files, the recovery store) writes through.

Files hold record data, principals and offsets, so they are created ``0600`` and their
directories ``0700`` whatever the process umask is. Writes that replace a file are atomic:
a temporary file beside it, fsynced, renamed over it, and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["DIR_MODE", "FILE_MODE", "append_durable", "atomic_write", "fsync_dir",
           "open_private", "private_dir"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) as ``0700``; tighten it if it exists and is ours.

    Parents that already exist are left alone (they may be shared, e.g. ``/var/lib``).
    """
    p = Path(path)
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask; chmod is not
    if p.is_dir() and p.stat().st_uid == os.getuid() and p.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):
            os.chmod(p, DIR_MODE)
    return p


def open_private(path: str | os.PathLike[str], mode: str = "ab") -> IO[bytes]:
    """Open ``path`` for binary writing, created ``0600`` (umask-independent) if it is new."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    if "x" in mode:
        flags |= os.O_EXCL
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab" if "a" in mode else "wb")
    except BaseException:
        os.close(fd)
        raise


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], body: bytes | Iterable[bytes]) -> None:
    """Replace ``path`` with ``body``: temporary file, fsync, rename, fsync of the directory.
    An iterable body is written as it comes (a large file is never all in memory)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open_private(tmp, "wb") as f:
            if isinstance(body, bytes):
                f.write(body)
            else:
                f.writelines(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(p.parent)


@contextlib.contextmanager
def append_durable(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Append to ``path`` (``0600``); the bytes are fsynced when the block ends."""
    with open_private(path, "ab") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
