"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

A run directory is read by reports and the simulator while (or after) a run
writes it, and a run can be killed at any instant. Every file is therefore
written under a temporary name in the same folder (so the rename stays on one
file system), flushed and fsynced, renamed over the target with ``os.replace``
(atomic on POSIX and Windows), and the folder is fsynced so that the rename
itself survives a power cut. If anything fails, the temporary file is removed
and the old file is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer", "fsync_dir"]

_TMP_SUFFIX = ".tmp"

# fsync on a directory is not supported everywhere (some network and FUSE file
# systems); there is nothing better to do there, so these errors are ignored.
_FSYNC_DIR_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or creation inside ``path`` durable.

    A no-op on Windows (directories cannot be opened there) and on file systems
    that refuse to fsync a directory.
    """
    if os.name == "nt":
        return
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_DIR_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _open_temp(target: Path) -> tuple[Path, int]:
    """Create a fresh temporary file beside ``target``.

    ``os.open`` with mode 0o666 lets the process umask decide the permissions,
    so the final file gets the same mode a plain ``open(target, "w")`` would
    have given it (``tempfile.mkstemp`` would force 0o600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {target}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block succeeds.

    For writers that stream (pyarrow, gzip) rather than hand over one buffer.
    The parent folder must exist.
    """
    target = Path(path)
    tmp, fd = _open_temp(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically; newlines are written as given."""
    atomic_write_bytes(path, text.encode(encoding))
