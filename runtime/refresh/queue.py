"""When a refresh result is installed: pending results by (block, version), under the staleness rule.

The install queue is the same on every rank whatever computed the result and
however it arrived: the staleness policy fixes each version's install step
when the job is submitted, and at that step the training thread takes the
result, waiting for it if it is late (a ``wait_refresh`` span). Installing at
an exact step, never "when ready", is what makes a run deterministic
whatever the worker speed, and what keeps every rank on the same version.

It owns every pending result, so a checkpoint saves them (``state_dict``) and
a resumed run installs exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from runtime.policies.staleness import StalenessPolicy
from runtime.refresh.executors import JobOutcome, RefreshError, ResultHandle, map_tensors
from traces.recorder import Recorder
from traces.schema import Category


@dataclass
class PendingRefresh:
    """A result waiting for its install step: known (``result``) or still coming (``handle``)."""

    block: str
    version: int
    install_step: int
    result: Any = None
    handle: ResultHandle | None = None
    failure: str | None = None  # why the result was rejected (the job raised, or not finite)


def _finite(result: Any) -> bool:
    """Whether every tensor of a result is finite (one device sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in _tensors(result)]
    return bool(torch.stack(flags).all()) if flags else True


def _tensors(result: Any) -> list[torch.Tensor]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        values = [getattr(result, f.name) for f in dataclasses.fields(result)]
        return [v for v in values if isinstance(v, torch.Tensor)]
    return [result] if isinstance(result, torch.Tensor) else []


class StalenessViolation(RuntimeError):
    """A result was not installed at its step: a bug, never a recoverable state."""


class InstallQueue:
    """Pending refresh results of one optimizer, installed at the steps the policy names."""

    def __init__(self, staleness: StalenessPolicy, recorder: Recorder) -> None:
        self.staleness = staleness
        self._recorder = recorder
        self._pending: dict[str, deque[PendingRefresh]] = {}
        self._step_started_ns = 0
        self._last_step_ns = 0.0

    def begin_step(self, step: int) -> None:
        """Measure the step time the adaptive policy weighs job times against."""
        now = time.perf_counter_ns()
        if self._step_started_ns:
            self._last_step_ns = float(now - self._step_started_ns)
        self._step_started_ns = now

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        """The policy's install step for a new job, checked before any work is done."""
        install = self.staleness.install_step(block, version, reference_tau)
        if install < version:
            raise StalenessViolation(
                f"staleness policy {self.staleness.name!r} installs block {block} version "
                f"{version} at step {install}, before it was computed"
            )
        return install

    def add(self, block: str, version: int, install_step: int, handle: ResultHandle) -> None:
        item = PendingRefresh(block, version, install_step, handle=handle)
        self._pending.setdefault(block, deque()).append(item)

    # --------------------------------------------------------------- install
    def take_due(self, block: str, step: int, device: torch.device) -> list[PendingRefresh]:
        """Pop the results of ``block`` whose install step is ``step``, oldest first.

        Waits for a late result (a ``wait_refresh`` span) and moves results to ``device``.
        """
        queue = self._pending.get(block)
        if not queue:
            return []
        due = []
        while queue and queue[0].install_step <= step:
            item = queue.popleft()
            if item.install_step < step:
                raise StalenessViolation(
                    f"block {block} version {item.version} was due at step {item.install_step} "
                    f"but is installed at step {step}"
                )
            self._resolve(item, wait_step=step)
            if item.failure is None:
                item.result = map_tensors(item.result, lambda t: t.to(device, non_blocking=True))
            due.append(item)
        return due

    def prefetch(self, block: str, step: int, device: torch.device) -> int:
        """Move finished results due at ``step`` to ``device`` now, without waiting.

        Called from post-accumulate-grad hooks during backward, so that the
        host-to-device copy of a new basis overlaps the rest of the backward
        pass instead of sitting at the install. Returns how many moved.
        """
        moved = 0
        for item in self._pending.get(block, ()):
            if item.install_step != step:
                continue
            if item.handle is not None:
                if not item.handle.done():
                    continue
                self._resolve(item, wait_step=None)
            if item.failure is not None:
                continue
            item.result = map_tensors(item.result, lambda t: t.to(device, non_blocking=True))
            moved += 1
        return moved

    def _resolve(self, item: PendingRefresh, *, wait_step: int | None) -> None:
        handle = item.handle
        if handle is None:
            return
        if not handle.done() and wait_step is not None:
            with self._recorder.span(
                "wait_refresh",
                Category.WAIT,
                step=wait_step,
                block=item.block,
                detail=f"v{item.version}",
            ):
                outcome = self._outcome_of(item, handle)
        else:
            outcome = self._outcome_of(item, handle)
        item.handle = None
        if outcome is None:
            return
        if not _finite(outcome.result):
            item.failure = f"refresh of block {item.block} version {item.version} is not finite"
            return
        item.result = outcome.result
        self._observe(item.block, outcome)

    @staticmethod
    def _outcome_of(item: PendingRefresh, handle: ResultHandle) -> JobOutcome | None:
        """The job's outcome, or None with ``item.failure`` set if it raised."""
        try:
            return handle.outcome()
        except RefreshError as exc:
            item.failure = str(exc)
            return None

    def _observe(self, block: str, outcome: JobOutcome) -> None:
        observe = getattr(self.staleness, "observe", None)
        if observe is not None:
            observe(block, outcome.compute_ns, self._last_step_ns)

    def pending_count(self) -> int:
        return sum(len(q) for q in self._pending.values())

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> list[dict[str, Any]]:
        """Pending results as tensors and ints only (loads with weights_only=True).

        Jobs still running are waited for: a checkpoint holds their results, so
        a resumed run installs exactly what the uninterrupted one would have.
        """
        out = []
        for queue in self._pending.values():
            for item in queue:
                self._resolve(item, wait_step=None)
                entry: dict[str, Any] = {
                    "block": item.block,
                    "version": item.version,
                    "install_step": item.install_step,
                }
                if item.failure is not None:
                    entry["failure"] = item.failure
                else:
                    tensors = {
                        f.name: getattr(item.result, f.name)
                        for f in dataclasses.fields(item.result)
                    }
                    entry["result"] = {k: v for k, v in tensors.items() if v is not None}
                out.append(entry)
        return out

    def load_state_dict(
        self, items: list[dict[str, Any]], result_type: type, devices: dict[str, torch.device]
    ) -> None:
        self._pending.clear()
        for item in items:
            block = item["block"]
            device = devices[block]
            failure = item.get("failure")
            result = (
                None
                if failure is not None
                else result_type(**{k: v.to(device) for k, v in item["result"].items()})
            )
            self._pending.setdefault(block, deque()).append(
                PendingRefresh(
                    block,
                    int(item["version"]),
                    int(item["install_step"]),
                    result=result,
                    failure=None if failure is None else str(failure),
                )
            )
