"""Amortized refresh jobs: snapshot at version v, compute, install at a set step.

An optimizer hands the scheduler a job (a block, its version, its input
tensors and the pure function that turns them into a result); the staleness
policy fixes the step at which the result is installed. The scheduler owns
every pending result, keyed by block, so that a checkpoint can save them and
the install rule never depends on which thread computed what.

This synchronous scheduler computes each job when it is submitted, on the
calling thread, which is exactly the reference behaviour when τ equals the
optimizer's reference staleness.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.policies.staleness import StalenessPolicy
from traces.recorder import Recorder
from traces.schema import Category


@dataclass
class PendingRefresh:
    """A computed result waiting for its install step."""

    block: str
    version: int
    install_step: int
    result: Any  # a dataclass of tensors (or None fields for failed sides)


class StalenessViolation(RuntimeError):
    """A result was not installed at its step: a bug, never a recoverable state."""


class RefreshScheduler:
    def __init__(self, staleness: StalenessPolicy, recorder: Recorder) -> None:
        self.staleness = staleness
        self._recorder = recorder
        self._pending: dict[str, deque[PendingRefresh]] = {}

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
        """Compute ``compute(inputs)`` for ``block`` at ``version`` and queue it."""
        install = self.staleness.install_step(block, version, reference_tau)
        if install < version:
            raise StalenessViolation(
                f"staleness policy {self.staleness.name!r} installs block {block} version {version} "
                f"at step {install}, before it was computed"
            )
        with self._recorder.span(
            "refresh", Category.REFRESH, step=step, block=block, detail=f"v{version}"
        ):
            result = compute(inputs)
        self._pending.setdefault(block, deque()).append(
            PendingRefresh(block=block, version=version, install_step=install, result=result)
        )

    def take_due(self, block: str, step: int) -> list[PendingRefresh]:
        """Pop the results of ``block`` whose install step is ``step``, oldest first."""
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
            due.append(item)
        return due

    def pending_count(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def state_dict(self) -> list[dict[str, Any]]:
        """Pending results as tensors and ints only (loads with weights_only=True)."""
        out = []
        for queue in self._pending.values():
            for item in queue:
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
                PendingRefresh(block, int(item["version"]), int(item["install_step"]), result)
            )
