"""Who a spill folder belongs to, and the reclaiming of folders whose owner died.

``SpillDirectory`` removes its folder on every exit it sees, but SIGKILL (or
the OOM killer, or a power cut) is one it cannot see; at LLM scale the files
left are hundreds of GB. So each folder records its owner (host, pid and the
process's start time, which tells a reused pid apart), and a new spill folder
in the same parent first removes the folders of owners that are gone — never
one whose owner still runs, never one of another host or another user, never
one without an owner record (made by something else).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

OWNER_FILENAME = ".owner.json"
PREFIX = "asteria-spill-"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch)

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def alive(self) -> bool:
        """Whether the owning process still runs (on this host; another host's counts as alive)."""
        if self.host != socket.gethostname():
            return True
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True


@dataclass(frozen=True)
class Reclaimed:
    path: Path
    owner_pid: int
    nbytes: int


def write_owner(folder: Path) -> None:
    owner = Owner.this_process()
    (folder / OWNER_FILENAME).write_text(
        json.dumps({"host": owner.host, "pid": owner.pid, "started": owner.started}) + "\n",
        encoding="utf-8",
    )


def read_owner(folder: Path) -> Owner | None:
    try:
        data = json.loads((folder / OWNER_FILENAME).read_text(encoding="utf-8"))
        return Owner(str(data["host"]), int(data["pid"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def reclaim_orphans(parent: Path) -> list[Reclaimed]:
    """Remove the spill folders in ``parent`` whose owner process is gone."""
    out: list[Reclaimed] = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        candidates = sorted(parent.glob(PREFIX + "*"))
    except OSError:
        return out
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            if uid is not None and folder.stat().st_uid != uid:
                continue
        except OSError:
            continue
        owner = read_owner(folder)
        if owner is None or owner.alive():
            continue
        nbytes = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            out.append(Reclaimed(folder, owner.pid, nbytes))
    return out
