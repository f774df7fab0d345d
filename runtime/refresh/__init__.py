"""Amortized refresh work in three objects: who computes, how results move, when they install.

- an *executor* (``runtime.refresh.executors``): inline, host threads or a CUDA
  stream; it snapshots a job's inputs where needed and computes it;
- a *publisher* (``runtime.refresh.publish``): brings a result from the rank
  that computed it to the ranks that install it (local in one process);
- the *install queue* (``runtime.refresh.queue``): holds each pending result
  by (block, version) and hands it out at exactly the step the staleness
  policy names, the same on every rank.

``RefreshPipeline`` composes them for an optimizer: ``submit`` at version v,
``take_due`` at the install step. A job's install step is fixed (and checked)
before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from runtime.execution import ExecutionConfig
from runtime.refresh.executors import (
    CudaStreamExecutor,
    Executor,
    InlineExecutor,
    JobOutcome,
    RefreshError,
    RefreshJob,
    ResultHandle,
    ThreadExecutor,
    map_tensors,
)
from runtime.refresh.publish import LocalPublisher, Publisher
from runtime.refresh.queue import InstallQueue, PendingRefresh, StalenessViolation
from traces.recorder import Recorder

__all__ = [
    "CudaStreamExecutor",
    "Executor",
    "InlineExecutor",
    "InstallQueue",
    "JobOutcome",
    "LocalPublisher",
    "PendingRefresh",
    "Publisher",
    "RefreshError",
    "RefreshJob",
    "RefreshPipeline",
    "ResultHandle",
    "StalenessViolation",
    "ThreadExecutor",
    "build_pipeline",
    "map_tensors",
]


class RefreshPipeline:
    """An executor, a publisher and an install queue, as one optimizer uses them."""

    def __init__(self, queue: InstallQueue, executor: Executor, publisher: Publisher) -> None:
        if queue.staleness.asynchronous and not executor.asynchronous:
            raise ValueError(
                f"staleness policy {queue.staleness.name} needs an asynchronous executor"
            )
        self.queue = queue
        self.executor = executor
        self.publisher = publisher

    def begin_step(self, step: int, update: int) -> None:
        """Start of optimizer call ``step``, which makes parameter update ``update`` (t)."""
        self.queue.begin_step(step)
        self.publisher.at_step(update)

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
        """Queue ``compute(inputs)`` for ``block`` at ``version`` (computed here if this rank owns it)."""
        install = self.queue.install_step(block, version, reference_tau)
        inline = not self.executor.asynchronous
        job = RefreshJob(block, version, step, compute, inputs, install, inline)
        computed = self.executor.run(job) if self.publisher.owns(block) else None
        self.queue.add(block, version, install, self.publisher.publish(job, computed))

    def take_due(self, block: str, step: int, device: torch.device) -> list[PendingRefresh]:
        return self.queue.take_due(block, step, device)

    def prefetch(self, block: str, step: int, device: torch.device) -> int:
        return self.queue.prefetch(block, step, device)

    def pending_count(self) -> int:
        return self.queue.pending_count()

    def state_dict(self) -> list[dict[str, Any]]:
        return self.queue.state_dict()

    def load_state_dict(
        self, items: list[dict[str, Any]], result_type: type, devices: dict[str, torch.device]
    ) -> None:
        self.queue.load_state_dict(items, result_type, devices)

    def close(self) -> None:
        """Join the executor's threads and the publisher's work; safe to call twice."""
        self.executor.close()
        self.publisher.close()


def build_pipeline(
    execution: ExecutionConfig,
    recorder: Recorder,
    devices: Iterable[torch.device],
    *,
    publisher: Publisher | None = None,
) -> RefreshPipeline:
    """The pipeline ``execution`` asks for, for parameters on ``devices``.

    Synchronous policies compute inline. Asynchronous ones compute on host
    threads (``root_device='host'``: snapshots copied to host memory) or on a
    low-priority CUDA stream of the training device (``root_device='device'``,
    which needs every parameter on CUDA).
    """
    queue = InstallQueue(execution.staleness, recorder)
    executor: Executor
    if not execution.staleness.asynchronous:
        executor = InlineExecutor(recorder)
    elif execution.root_device == "host":
        executor = ThreadExecutor(execution.workers, recorder, snapshot_device=torch.device("cpu"))
    elif {d.type for d in devices} != {"cuda"}:
        raise ValueError("root_device='device' needs parameters on a CUDA device")
    else:
        # (least, greatest): numerically larger is lower priority
        least = torch.cuda.Stream.priority_range()[0]  # type: ignore[call-arg]
        executor = CudaStreamExecutor(execution.workers, recorder, priority=least)
    return RefreshPipeline(queue, executor, publisher or LocalPublisher())
