"""Where ``replay``, ``simulate`` and ``profile`` write: never over what a user made.

An output folder holds a marker file naming the command that wrote it. A
command refuses an ``--out`` that exists and is not empty unless
``--overwrite`` is given, and even then replaces only a folder carrying the
marker; a measured run is never written into, whatever the flags. Results are
written into ``<out>.partial/`` and swapped in at the end, so an old sweep's
folders never sit beside a new ``simulate.csv`` and a failure leaves the old
output as it was. A profile file is replaced only with ``--overwrite`` (and
atomically).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from asteria_bench.errors import UserError
from traces.atomic import atomic_write_text, fsync_dir

MARKER = ".asteria-bench-output"
"""The file that makes a folder ours to replace; it names the command that wrote it."""


def _is_measured_run(path: Path) -> bool:
    metadata = path / "trace" / "metadata.json"
    if not (path / "config.json").is_file() or not metadata.is_file():
        return False
    try:
        return json.loads(metadata.read_text()).get("kind") == "measured"
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: treat it as a run to keep


def check_out_folder(out: Path | None, *, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that this command may not write."""
    if out is None:
        return
    if out.is_symlink():
        raise UserError(f"--out: {out} is a symbolic link; expected a folder of its own")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; expected a folder to write into")
    if not out.exists() or not any(out.iterdir()):
        return
    if _is_measured_run(out):
        raise UserError(f"--out: {out} is a measured run; results are never written into one")
    if not overwrite:
        raise UserError(
            f"--out: {out} exists and is not empty; choose another folder or pass --overwrite"
        )
    if not (out / MARKER).is_file():
        raise UserError(
            f"--out: {out} was not written by asteria-bench; --overwrite replaces only"
            " folders it wrote (or empty ones)"
        )


def write_out_folder(out: Path, command: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(folder)`` into ``<out>.partial/``, then put it in the place of ``out``."""
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {staging} ({exc.strerror})") from None
    try:
        write(staging)
        atomic_write_text(staging / MARKER, f"{command}\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        previous = out.with_name(out.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(out, previous)
        os.replace(staging, out)
        shutil.rmtree(previous)
    else:
        os.replace(staging, out)
    fsync_dir(out.parent)
    return out


def check_out_file(out: Path, *, overwrite: bool) -> None:
    """A file ``--out`` (a profile): an existing one is replaced only with ``--overwrite``."""
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; expected a .toml file path")
    if out.exists() and not overwrite:
        raise UserError(f"--out: {out} exists; choose another path or pass --overwrite")
    if not out.parent.is_dir():
        raise UserError(f"--out: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out: the folder {out.parent} is not writable")
