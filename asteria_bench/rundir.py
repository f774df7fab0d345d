"""Run directories that never look finished unless they are.

A run is written into ``<out>.incomplete/`` holding a marker file
``INCOMPLETE``; only when every file is written and synced is the marker
removed and the folder renamed to ``<out>``. An interrupted or failed run
therefore leaves ``<out>.incomplete/`` (marker included, with the reason),
never a folder that looks like a finished run, and never touches a finished
run that already stood at ``<out>``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from asteria_bench.errors import UserError
from traces.atomic import atomic_write_text, fsync_dir
from traces.stream import discard_chunks

MARKER = "INCOMPLETE"
FINISHED_MARKER_FILE = "summary.md"


def is_finished_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and not (path / MARKER).exists()


def made_by_us(path: Path) -> bool:
    """A run directory this tool wrote (its config and trace metadata), or an empty folder.

    ``--overwrite`` replaces only these: never a folder a user made for
    something else, whatever it holds.
    """
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    return (path / "config.json").is_file() and (path / "trace" / "metadata.json").is_file()


class RunDirectory:
    """The staging folder of one run and its promotion to the final name."""

    def __init__(self, out: Path, *, overwrite: bool = False) -> None:
        self.final = out
        self.staging = out.with_name(out.name + ".incomplete")
        if out.exists() and not overwrite:
            raise UserError(f"--out: {out} already exists; choose another path or pass --overwrite")
        for path in (out, self.staging):
            if path.is_symlink():
                raise UserError(f"--out: {path} is a symbolic link; expected a folder of its own")
            if path.exists() and hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
                raise UserError(f"--out: {path} belongs to another user")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out: {out} exists and is not a folder")
        if out.exists() and not made_by_us(out):
            raise UserError(
                f"--out: {out} is not a run directory of asteria-bench; --overwrite replaces"
                " only those (or an empty folder)"
            )
        if self.staging.exists() and not (self.staging / MARKER).is_file():
            raise UserError(
                f"--out: {self.staging} exists and is not an unfinished run of asteria-bench;"
                " move it away or choose another --out"
            )

    @staticmethod
    def final_name(path: Path) -> Path:
        """The name a run finishes under: ``path`` without its ``.incomplete`` suffix."""
        return path.with_name(path.name.removesuffix(".incomplete"))

    @classmethod
    def unfinished(cls, path: Path) -> RunDirectory:
        """An unfinished run to continue (``--resume``): its ``.incomplete`` folder must exist."""
        final = cls.final_name(path)
        staging = final.with_name(final.name + ".incomplete")
        if is_finished_run(final) and not staging.exists():
            raise UserError(f"--resume: {final} is a finished run; there is nothing to resume")
        if not (staging / MARKER).is_file():
            raise UserError(
                f"--resume: {staging} is not an unfinished run of asteria-bench"
                f" (expected a folder with an {MARKER} marker)"
            )
        if staging.is_symlink():
            raise UserError(f"--resume: {staging} is a symbolic link; expected a folder of its own")
        if hasattr(os, "getuid") and staging.stat().st_uid != os.getuid():
            raise UserError(f"--resume: {staging} belongs to another user")
        if final.exists():
            raise UserError(
                f"--resume: {final} already exists; move it away so the resumed run can finish"
            )
        run = cls.__new__(cls)
        run.final, run.staging = final, staging
        return run

    def reopen(self) -> Path:
        """Continue in the existing staging folder (a resumed run)."""
        atomic_write_text(self.staging / MARKER, "run in progress (resumed)\n")
        return self.staging

    def create(self) -> Path:
        if self.staging.exists():
            shutil.rmtree(self.staging)
        try:
            self.staging.mkdir(parents=True)
        except OSError as exc:
            raise UserError(f"--out: cannot create {self.staging} ({exc.strerror})") from None
        atomic_write_text(self.staging / MARKER, "run in progress\n")
        return self.staging

    def mark_incomplete(self, reason: str) -> None:
        """Record why the run stopped; the folder keeps its .incomplete name."""
        if self.staging.exists():
            atomic_write_text(self.staging / MARKER, reason.rstrip() + "\n")

    def discard(self) -> None:
        """Remove the staging folder of a run refused before its first step (bad input)."""
        if self.staging.exists() and (self.staging / MARKER).is_file():
            shutil.rmtree(self.staging)

    def finish(self) -> Path:
        """Remove the marker and move the folder to its final name."""
        for path in self.staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        (self.staging / MARKER).unlink()
        fsync_dir(self.staging)
        if self.final.exists():
            previous = self.final.with_name(self.final.name + ".previous")
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(self.final, previous)
            os.replace(self.staging, self.final)
            shutil.rmtree(previous)
        else:
            os.replace(self.staging, self.final)
        fsync_dir(self.final.parent)
        discard_chunks(self.final)  # only now: until the rename a resume may need them
        return self.final
