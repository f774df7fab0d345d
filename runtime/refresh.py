"""Amortized refresh jobs: snapshot at version v, compute, install at a set step.

An optimizer hands the scheduler a job (a block, its version, its input
tensors and the pure function that turns them into a result); the staleness
policy fixes the step at which the result is installed. The scheduler owns
every pending job, keyed by block, so that a checkpoint can save them and the
install rule never depends on which thread computed what.

Under a synchronous policy a job is computed when it is submitted, on the
calling thread: exactly the reference behaviour. Under an asynchronous policy
its inputs are snapshotted (cloned, to the host when roots are computed there)
and the job goes to the worker pool; at its install step the training thread
takes the result, waiting for it if it is late (a recorded ``wait`` span).
A worker's exception surfaces there, naming the block and version.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from runtime.policies.staleness import StalenessPolicy
from runtime.workers import JobOutcome, RefreshWorkers
from traces.recorder import Recorder
from traces.schema import Category


@dataclass
class PendingRefresh:
    """A job waiting for its install step: a finished result or a running future."""

    block: str
    version: int
    install_step: int
    result: Any = None
    future: Future[JobOutcome] | None = None


class StalenessViolation(RuntimeError):
    """A result was not installed at its step: a bug, never a recoverable state."""


class RefreshError(RuntimeError):
    """A refresh job raised on a worker; re-raised on the training thread."""


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor field of a dataclass (None and scalars kept)."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = fn(value)
    return dataclasses.replace(obj, **changes)


class RefreshScheduler:
    """Owns every pending refresh of one optimizer.

    ``root_device`` is where asynchronous jobs compute: ``None`` means the
    tensors' own device (a worker thread on the CPU; on CUDA, a side stream),
    ``torch.device("cpu")`` means host workers even when training on a GPU.
    """

    def __init__(
        self,
        staleness: StalenessPolicy,
        recorder: Recorder,
        *,
        workers: RefreshWorkers | None = None,
        root_device: torch.device | None = None,
    ) -> None:
        if staleness.asynchronous and workers is None:
            raise ValueError(f"staleness policy {staleness.name} needs refresh workers")
        self.staleness = staleness
        self._recorder = recorder
        self._workers = workers
        self._root_device = root_device
        self._pending: dict[str, deque[PendingRefresh]] = {}
        self._step = 0
        self._step_started_ns = 0
        self._last_step_ns = 0.0

    # ------------------------------------------------------------ lifecycle
    def begin_step(self, step: int) -> None:
        now = time.perf_counter_ns()
        if self._step_started_ns:
            self._last_step_ns = float(now - self._step_started_ns)
        self._step_started_ns = now
        self._step = step

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()

    # ------------------------------------------------------------ submission
    def submit(
        self,
        block: str,
        version: int,
        reference_tau: int,
        compute: Callable[[Any], Any],
        inputs: Any,
        *,
        step: int,
    ) -> None:
        """Queue ``compute(inputs)`` for ``block`` at ``version``."""
        install = self.staleness.install_step(block, version, reference_tau)
        if install < version:
            raise StalenessViolation(
                f"staleness policy {self.staleness.name!r} installs block {block} version "
                f"{version} at step {install}, before it was computed"
            )
        queue = self._pending.setdefault(block, deque())
        if self._workers is None:
            with self._recorder.span(
                "refresh", Category.REFRESH, step=step, block=block, detail=f"v{version}"
            ):
                result = compute(inputs)
            queue.append(PendingRefresh(block, version, install, result=result))
            return
        with self._recorder.span(
            "snapshot", Category.REFRESH, step=step, block=block, detail=f"v{version}"
        ):
            target = self._root_device
            snapshot = map_tensors(
                inputs,
                lambda t: t.detach().to(target if target is not None else t.device, copy=True),
            )
            ready = None
            if torch.cuda.is_available() and any(
                isinstance(v, torch.Tensor) and v.is_cuda for v in vars(snapshot).values()
            ):
                ready = torch.cuda.Event()
                ready.record()
        future = self._workers.submit(
            compute, snapshot, block=block, version=version, step=step, ready_event=ready
        )
        queue.append(PendingRefresh(block, version, install, future=future))

    # --------------------------------------------------------------- install
    def take_due(self, block: str, step: int, device: torch.device) -> list[PendingRefresh]:
        """Pop the results of ``block`` whose install step is ``step``, oldest first.

        Waits for a late result (a ``wait`` span) and moves results to ``device``.
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
            item.result = map_tensors(item.result, lambda t: t.to(device, non_blocking=True))
            due.append(item)
        return due

    def _resolve(self, item: PendingRefresh, *, wait_step: int | None) -> None:
        future = item.future
        if future is None:
            return
        if not future.done() and wait_step is not None:
            with self._recorder.span(
                "wait_refresh",
                Category.WAIT,
                step=wait_step,
                block=item.block,
                detail=f"v{item.version}",
            ):
                outcome = self._outcome(item)
        else:
            outcome = self._outcome(item)
        item.result, item.future = outcome.result, None
        observe = getattr(self.staleness, "observe", None)
        if observe is not None:
            observe(item.block, outcome.compute_ns, self._last_step_ns)

    def _outcome(self, item: PendingRefresh) -> JobOutcome:
        assert item.future is not None
        try:
            return item.future.result()
        except Exception as exc:
            raise RefreshError(
                f"refresh of block {item.block} version {item.version} failed on a worker: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

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
            if item.future is not None:
                if not item.future.done():
                    continue
                self._resolve(item, wait_step=None)
            item.result = map_tensors(item.result, lambda t: t.to(device, non_blocking=True))
            moved += 1
        return moved

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
                tensors = {
                    f.name: getattr(item.result, f.name) for f in dataclasses.fields(item.result)
                }
                out.append(
                    {
                        "block": item.block,
                        "version": item.version,
                        "install_step": item.install_step,
                        "result": {k: v for k, v in tensors.items() if v is not None},
                    }
                )
        return out

    def load_state_dict(
        self, items: list[dict[str, Any]], result_type: type, devices: dict[str, torch.device]
    ) -> None:
        self._pending.clear()
        for item in items:
            block = item["block"]
            device = devices[block]
            result = result_type(**{k: v.to(device) for k, v in item["result"].items()})
            self._pending.setdefault(block, deque()).append(
                PendingRefresh(
                    block, int(item["version"]), int(item["install_step"]), result=result
                )
            )
