"""The per-run spill folder: private (0700), never shared, removed whatever happens.

A ``SpillDirectory`` is a fresh folder made inside the user's ``--spill-dir``;
it is removed by ``close()``, at interpreter exit, and on SIGTERM / SIGINT (the
previous handler runs afterwards, so Ctrl-C still stops the program). It
records its owner, so that after a SIGKILL the next spill folder made in the
same parent reclaims it (``runtime.spill.owner``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
import weakref
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.spill.errors import SpillError
from runtime.spill.layout import ALIGN, aligned_buffer
from runtime.spill.owner import PREFIX, reclaim_orphans, write_owner

_O_DIRECT = getattr(os, "O_DIRECT", 0)

_registry_lock = threading.RLock()  # re-entrant: a signal may land while it is held
_live: weakref.WeakValueDictionary[int, SpillDirectory] = weakref.WeakValueDictionary()
_previous_handlers: dict[int, Any] = {}
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _foreign(folder: Path) -> bool:
    """Owned by another user, unless it is a world-writable sticky folder (/tmp, a scratch disk).

    In a sticky folder others cannot remove or replace what we create; in a
    folder another user owns, they could swap our spill files underneath us.
    """
    if not hasattr(os, "getuid"):
        return False
    info = folder.stat()
    if info.st_uid == os.getuid():
        return False
    shared = info.st_mode & stat.S_ISVTX and info.st_mode & stat.S_IWOTH
    return not shared


def _remove_tree(path: str) -> None:
    """Remove ``path``; retried because an I/O thread may add a file meanwhile."""
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return


def _on_signal(signum: int, frame: FrameType | None) -> None:
    with _registry_lock:
        directories = list(_live.values())
    for directory in directories:
        if signum != signal.SIGINT or directory.cleanup_on_sigint:
            directory.close()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:  # SIG_DFL: die of the signal, as without us (the exit status says so)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)


def _install_handlers() -> None:
    """Chain our handler in front of the current one (main thread, SIG_IGN respected)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _HANDLED_SIGNALS:
        if signum in _previous_handlers:
            continue
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or current is None:  # ignored, or a handler not ours to chain
            continue
        _previous_handlers[signum] = current
        signal.signal(signum, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # left installed: with no live directory it only chains
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)
        del _previous_handlers[signum]


class SpillDirectory:
    """A fresh, private (0700) folder inside ``parent`` that is removed whatever happens.

    Removed by ``close()`` (idempotent), when garbage collected, at interpreter
    exit (``weakref.finalize`` runs from ``atexit``) and, with
    ``handle_signals``, on SIGTERM and SIGINT before the previous handler runs
    (SIGINT then still raises ``KeyboardInterrupt``). Handlers are installed
    only from the main thread and restored when the last directory closes.
    With ``cleanup_on_sigint=False`` a Ctrl-C leaves the files until exit, for
    a program that catches ``KeyboardInterrupt`` and still needs them (say, to
    write a checkpoint).
    """

    def __init__(
        self,
        parent: str | os.PathLike[str],
        *,
        handle_signals: bool = True,
        cleanup_on_sigint: bool = True,
    ) -> None:
        parent_path = Path(parent).expanduser()
        if parent_path.is_symlink():
            raise SpillError(
                f"spill directory parent {parent_path} is a symbolic link; give the folder it"
                " points to",
                path=parent_path,
            )
        if not parent_path.is_dir():
            what = "does not exist" if not parent_path.exists() else "is not a directory"
            raise SpillError(f"spill directory parent {parent_path} {what}", path=parent_path)
        if _foreign(parent_path):
            raise SpillError(
                f"spill directory parent {parent_path} belongs to another user (and is not a"
                " shared sticky folder such as /tmp)",
                path=parent_path,
            )
        if not os.access(parent_path, os.W_OK | os.X_OK):
            raise SpillError(
                f"spill directory parent {parent_path} is not writable", path=parent_path
            )
        self.reclaimed = reclaim_orphans(parent_path)  # folders of runs that were killed
        try:
            path = tempfile.mkdtemp(prefix=PREFIX, dir=parent_path)
        except OSError as exc:
            raise SpillError(
                f"cannot create a spill directory in {parent_path}: {exc.strerror}",
                path=parent_path,
                code=exc.errno,
            ) from exc
        os.chmod(path, stat.S_IRWXU)
        self.path = Path(path)
        write_owner(self.path)
        self.cleanup_on_sigint = cleanup_on_sigint
        self._direct_io: bool | None = None
        self._finalizer = weakref.finalize(self, _remove_tree, path)
        with _registry_lock:
            _live[id(self)] = self
            if handle_signals:
                _install_handlers()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def direct_io(self) -> bool:
        """Whether O_DIRECT works here (probed on first use, then remembered)."""
        if self._direct_io is None:
            self._direct_io = probe_direct_io(self.path)
        return self._direct_io

    def close(self) -> None:
        """Remove every file and the folder. Safe to call twice, from any thread."""
        self._finalizer()
        with _registry_lock:
            if _live.pop(id(self), None) is not None and not _live:
                _restore_handlers()

    def __enter__(self) -> SpillDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SpillDirectory({str(self.path)!r}{', closed' if self.closed else ''})"


def probe_direct_io(directory: str | os.PathLike[str]) -> bool:
    """Whether an aligned O_DIRECT write and read of one block work in ``directory``."""
    if not _O_DIRECT:
        return False
    path = Path(directory) / f".direct-probe-{os.getpid()}-{threading.get_ident()}"
    buffer = aligned_buffer(ALIGN)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o600)
        try:
            return os.write(fd, buffer.data) == ALIGN and os.preadv(fd, [buffer.data], 0) == ALIGN
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
