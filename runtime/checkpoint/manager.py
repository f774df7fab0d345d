"""Checkpoints of a run: written atomically, checked on load, the last few kept.

A checkpoint is a folder ``step-<N>/`` under the run's ``checkpoints/``:

* the tensors of every saved object, through torch.distributed.checkpoint
  (each rank writes its own file; tensors every rank holds alike — the
  model, a replicated optimizer — are written once);
* ``state-rank<R>.json`` per rank: everything that is not a tensor, as JSON
  (``runtime.checkpoint.flatten``), so loading unpickles nothing;
* ``manifest.json``, written last: the step, the world size and the
  XXH3-64 checksum of every file.

It is built as ``step-<N>.partial/`` and renamed once the manifest is synced,
so a crash mid-write leaves the previous checkpoints as they were. A write that
fails (disk full) is reported and dropped; training goes on and the previous
checkpoint stands. On load every file is checked against the manifest; a
damaged checkpoint names the file and the one before it is used instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch.distributed.checkpoint.api import CheckpointException

from runtime.checkpoint.flatten import (
    StateError,
    TensorRef,
    dtype_of,
    flatten,
    tensor_refs,
    unflatten,
)
from runtime.stateful import Stateful
from traces.atomic import atomic_write_text, fsync_dir

CHECKPOINTS_DIRNAME = "checkpoints"
FORMAT = "asteria-checkpoint/1"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    world_size: int


def _checksum(path: Path) -> str:
    digest = xxhash.xxh3_64()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


class CheckpointManager:
    """Save and load named ``Stateful`` objects, collectively when several ranks run.

    ``rank_local`` names the objects whose state differs between ranks (data
    position, trace position, a sharded optimizer); their tensors are keyed by
    rank. The others must be identical on every rank and are stored once.
    """

    def __init__(self, root: Path, *, keep: int = 2, rank: int = 0, world_size: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep at least one checkpoint, got keep={keep}")
        self.root = Path(root)
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self.failures: list[str] = []
        self._rank_local: frozenset[str] = frozenset()

    # --------------------------------------------------------------- listing
    def checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints (a manifest in place), newest first."""
        out: list[CheckpointInfo] = []
        if not self.root.is_dir():
            return out
        for path in self.root.iterdir():
            match = _NAME.match(path.name)
            if match is None or not (path / MANIFEST).is_file():
                continue
            try:
                manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
                world = int(manifest["world_size"])
            except (OSError, ValueError, KeyError, TypeError):
                world = -1  # unreadable: found out (and named) when loaded
            out.append(CheckpointInfo(path, int(match.group(1)), world))
        return sorted(out, key=lambda c: c.step, reverse=True)

    # ----------------------------------------------------------------- save
    def save(
        self, step: int, objects: dict[str, Stateful], rank_local: Collection[str] = ()
    ) -> CheckpointInfo | None:
        """Write a checkpoint of ``objects`` at ``step``; None if it could not be written.

        Every rank calls this at the same step. A failure anywhere (disk full,
        an unwritable folder) leaves no partial folder and no new checkpoint.
        """
        final = self.root / f"step-{step:08d}"
        staging = final.with_name(final.name + ".partial")
        error: BaseException | None = None
        try:
            if self._leader:
                self.root.mkdir(parents=True, exist_ok=True)
                if staging.exists():
                    shutil.rmtree(staging)
                staging.mkdir()
            self._barrier()
            skeletons: dict[str, Any] = {}
            tensors: dict[str, torch.Tensor] = {}
            for name, obj in objects.items():
                prefix = f"rank{self.rank}/{name}/" if name in rank_local else f"{name}/"
                skeletons[name], found = flatten(obj.state_dict(), prefix)
                tensors.update(found)
            self._save_tensors(tensors, staging)
            atomic_write_text(
                staging / f"state-rank{self.rank:05d}.json",
                json.dumps(
                    {
                        "format": FORMAT,
                        "step": step,
                        "rank": self.rank,
                        "world_size": self.world_size,
                        "objects": skeletons,
                    }
                )
                + "\n",
            )
        except (OSError, RuntimeError, StateError, CheckpointException) as exc:
            error = exc  # CheckpointException: DCP's, a BaseException, wraps a rank's OSError
        if not self._all_ok(error is None):
            self._discard(staging)
            reason = _reason(error) if error is not None else "another rank could not write"
            message = f"checkpoint at step {step} not written ({reason})"
            previous = self.checkpoints()
            if previous:
                message += f"; {previous[0].path.name} still stands"
            self.failures.append(message)
            warnings.warn(message, stacklevel=2)
            if isinstance(error, StateError):
                raise error
            return None
        if self._leader:
            try:
                self._seal(staging, final, step)
            except OSError as exc:
                error = exc
        if not self._all_ok(error is None):
            self._discard(staging)
            message = f"checkpoint at step {step} not written ({_reason(error)})"
            self.failures.append(message)
            warnings.warn(message, stacklevel=2)
            return None
        if self._leader:
            self._prune()
        self._barrier()
        return CheckpointInfo(final, step, self.world_size)

    def _save_tensors(self, tensors: dict[str, torch.Tensor], folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(str(folder), single_file_per_rank=True, sync_files=True)
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, storage_writer=writer)

    def _seal(self, staging: Path, final: Path, step: int) -> None:
        files = {
            str(p.relative_to(staging)): {"bytes": p.stat().st_size, "xxh3_64": _checksum(p)}
            for p in _files(staging)
        }
        manifest = {"format": FORMAT, "step": step, "world_size": self.world_size, "files": files}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        fsync_dir(staging)
        if final.exists():  # a checkpoint of this step from a run resumed before it
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(self.root)

    def _prune(self) -> None:
        for old in self.checkpoints()[self.keep :]:
            shutil.rmtree(old.path, ignore_errors=True)
        for stale in self.root.glob("step-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)

    def _discard(self, staging: Path) -> None:
        if self._leader:
            shutil.rmtree(staging, ignore_errors=True)
        self._barrier()

    # ----------------------------------------------------------------- load
    def verify(self, checkpoint: CheckpointInfo) -> dict[str, Any]:
        """The manifest, once every file it lists is present and matches its checksum."""
        manifest_path = checkpoint.path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
            if manifest.get("format") != FORMAT or not isinstance(files, dict):
                raise ValueError(f"expected format {FORMAT}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{manifest_path}: not a checkpoint manifest ({exc})") from None
        for name, entry in sorted(files.items()):
            path = checkpoint.path / name
            if not path.is_file():
                raise CheckpointError(f"{path}: missing from the checkpoint")
            if path.stat().st_size != int(entry["bytes"]):
                raise CheckpointError(
                    f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
                )
            found = _checksum(path)
            if found != entry["xxh3_64"]:
                raise CheckpointError(
                    f"{path}: checksum mismatch (xxh3_64 {found}, manifest {entry['xxh3_64']})"
                )
        if int(manifest["world_size"]) != self.world_size:
            raise CheckpointError(
                f"{manifest_path}: written by {manifest['world_size']} ranks, this run has"
                f" {self.world_size}"
            )
        return manifest

    def load_latest(
        self, objects: dict[str, Stateful], rank_local: Collection[str] = ()
    ) -> CheckpointInfo | None:
        """Load the newest checkpoint that verifies into ``objects``; None if there is none.

        A damaged checkpoint is skipped with a warning naming the file; if every
        one is damaged the last error is raised.
        """
        self._rank_local = frozenset(rank_local)
        found = self.checkpoints()
        last: CheckpointError | None = None
        for checkpoint in found:
            try:
                self.verify(checkpoint)
                self._load(checkpoint, objects)
                return checkpoint
            except CheckpointError as exc:
                warnings.warn(f"{exc}; trying an earlier checkpoint", stacklevel=2)
                last = exc
        if last is not None:
            raise last
        return None

    def read_latest(self, name: str) -> tuple[CheckpointInfo, Any] | None:
        """The state one object saved in the newest good checkpoint, without the object.

        For tools that inspect a run (the final model of two runs, compared):
        the same verified, pickle-free load as ``load_latest``.
        """
        holder = _Holder()
        info = self.load_latest({name: holder})
        return None if info is None else (info, holder.state)

    def _load(self, checkpoint: CheckpointInfo, objects: dict[str, Stateful]) -> None:
        skeleton_path = checkpoint.path / f"state-rank{self.rank:05d}.json"
        try:
            saved = json.loads(skeleton_path.read_text(encoding="utf-8"))
            skeletons = saved["objects"]
            refs = [ref for name in objects for ref in tensor_refs(skeletons[name])]
            live = self._live_tensors(objects)
            targets = {r.key: _target(r, live.get(r.key)) for r in refs}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise CheckpointError(f"{skeleton_path}: unreadable ({exc})") from None
        self._load_tensors(targets, checkpoint.path)
        for name, obj in objects.items():
            try:
                state = unflatten(skeletons[name], targets)
                obj.load_state_dict(state)
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{checkpoint.path}: does not fit this run's {name} ({exc})"
                ) from None

    def _live_tensors(self, objects: dict[str, Stateful]) -> dict[str, torch.Tensor]:
        """The objects' current tensors by checkpoint key: sharded ones are loaded in their shape.

        A model sharded by FSDP2 holds DTensors; DCP fills a DTensor target
        with this rank's shard, so the load needs the live model's, not a
        plain tensor of the saved global shape.
        """
        live: dict[str, torch.Tensor] = {}
        for name, obj in objects.items():
            if not isinstance(obj, torch.nn.Module):  # only a model's state is cheap to ask twice
                continue
            prefix = f"rank{self.rank}/{name}/" if name in self._rank_local else f"{name}/"
            try:
                _, found = flatten(obj.state_dict(), prefix)
            except StateError:
                continue
            live.update({k: v for k, v in found.items() if _is_sharded(v)})
        return live

    def _load_tensors(self, targets: dict[str, torch.Tensor], folder: Path) -> None:
        import torch.distributed.checkpoint as dcp

        from runtime.checkpoint.safe_reader import SafeReader, UnsafeCheckpoint, load_index

        if not targets:
            return
        index = folder / ".metadata"
        try:
            load_index(index.read_bytes())  # refused here, by name, before DCP reads anything
        except (OSError, UnsafeCheckpoint) as exc:
            raise CheckpointError(f"{index}: {_reason(exc)}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(
                    targets, storage_reader=SafeReader(str(folder)), no_dist=self.world_size == 1
                )
        except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
            raise CheckpointError(f"{folder}: tensors could not be read ({_reason(exc)})") from None

    # ------------------------------------------------------------ collective
    @property
    def _leader(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def _all_ok(self, ok: bool) -> bool:
        if self.world_size == 1:
            return ok
        import torch.distributed as dist

        from runtime.distributed.context import collective_device

        device = collective_device(str(dist.get_backend()))
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


class _Holder:
    """A ``Stateful`` that only keeps what it is loaded with (``read_latest``)."""

    def __init__(self) -> None:
        self.state: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def _is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "placements") and hasattr(tensor, "to_local")


def _target(ref: TensorRef, live: torch.Tensor | None) -> torch.Tensor:
    """Where a saved tensor is loaded: like the live sharded tensor, else a plain one."""
    dtype = dtype_of(ref.dtype)
    if live is not None and tuple(live.shape) == ref.shape and live.dtype == dtype:
        return torch.empty_like(live)
    return torch.empty(ref.shape, dtype=dtype)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    failures = getattr(exc, "failures", None)  # DCP: rank -> the exception it met
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        if isinstance(inner, BaseException):
            return _reason(inner)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 240 else first[:240] + "..."
