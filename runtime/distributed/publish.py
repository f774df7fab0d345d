"""Replicated updates: each block's refresh is computed by its owner and broadcast to every rank.

Every rank runs every block's hot path, so every rank must install the same
result at the same step. The owner (``runtime.plan.assign_owners``) computes
the refresh; the result travels as one byte buffer (``packing``) in a
broadcast on the publication group, issued with ``async_op=True`` so that it
overlaps training, and the install queue waits on it at the install step.

Collectives must be issued in the same order on every rank. Every rank knows
every job's version and install step (the schedule and the staleness policy
are deterministic), so a publication is issued at a point all ranks reach in
the same order:

- a result computed inline (synchronous policies) is published at once, at
  its submission: the owner has it, the others receive it while the step goes on;
- an asynchronous result is published at the start of the optimizer step one
  update before its install (``at_step(install - 1)``), the owner waiting for
  its worker there if it must (a ``wait_refresh`` span with detail
  ``publish``), so that a whole step of training overlaps the transfer;
- if that point is not after the submission (τ = 1), it is published when the
  install asks for it.

Each publication is a ``publish`` span on its own track with its bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from runtime.distributed.context import DistContext
from runtime.distributed.packing import ResultLayout, pack, unpack
from runtime.refresh.executors import Finished, JobOutcome, RefreshJob, ResultHandle
from traces.recorder import Recorder
from traces.schema import Category

PUBLISH_TRACK = "publish"


class _Publication:
    """One block version's result on its way from the owner; a ``ResultHandle``."""

    def __init__(
        self,
        publisher: OwnerBroadcastPublisher,
        job: RefreshJob,
        computed: ResultHandle | None,
        owner: int,
    ) -> None:
        self._publisher = publisher
        self.job = job
        self.computed = computed
        self.owner = owner
        self.buffer: torch.Tensor | None = None
        self.work: Any = None
        self.issued_ns = 0
        self._outcome: JobOutcome | None = None

    @property
    def issued(self) -> bool:
        return self.work is not None

    def issue(self) -> None:
        """Start the broadcast (the owner first takes its own result, waiting if needed)."""
        pub = self._publisher
        layout = pub.layout_of(self.job.block)
        if self.computed is not None:
            if not self.computed.done():
                with pub.recorder.span(
                    "wait_refresh",
                    Category.WAIT,
                    step=self.job.step,
                    block=self.job.block,
                    detail="publish",
                ):
                    outcome = self.computed.outcome()
            else:
                outcome = self.computed.outcome()
            self._outcome = outcome
            self.buffer = pack(outcome.result, layout, pub.buffer_device)
        else:
            self.buffer = layout.empty(pub.buffer_device)
        self.issued_ns = pub.recorder.clock()
        self.work = dist.broadcast(
            self.buffer, src=self.owner, group=pub.ctx.publish_group, async_op=True
        )

    def done(self) -> bool:
        return self.issued and bool(self.work.is_completed())

    def outcome(self) -> JobOutcome:
        if not self.issued:
            self._publisher.issue_now(self)
        self.work.wait()
        pub = self._publisher
        assert self.buffer is not None
        pub.recorder.add_span(
            "publish",
            Category.COLLECTIVE,
            self.issued_ns,
            pub.recorder.clock(),
            step=self.job.step,
            block=self.job.block,
            nbytes=int(self.buffer.numel()),
            detail=f"v{self.job.version} from rank {self.owner} (group publish)",
            track=PUBLISH_TRACK,
        )
        if self._outcome is None:
            result = unpack(self.buffer, pub.layout_of(self.job.block), pub.result_type)
            self._outcome = JobOutcome(result, 0)
        return self._outcome


class OwnerBroadcastPublisher:
    """Results go from each block's owner to all ranks, one async broadcast per version."""

    def __init__(
        self,
        ctx: DistContext,
        owners: dict[str, int],
        layout_of: Callable[[str], ResultLayout],
        result_type: type,
        recorder: Recorder,
        buffer_device: torch.device,
    ) -> None:
        self.ctx = ctx
        self.owners = owners
        self.layout_of = layout_of
        self.result_type = result_type
        self.recorder = recorder
        self.buffer_device = buffer_device
        self._waiting: list[_Publication] = []  # not issued yet, in submission order

    def owns(self, block: str) -> bool:
        return self.owners[block] == self.ctx.rank

    def publish(self, job: RefreshJob, computed: ResultHandle | None) -> ResultHandle:
        publication = _Publication(self, job, computed, self.owners[job.block])
        if isinstance(computed, Finished) or (computed is None and job.inline):
            self.issue_now(publication)
        else:
            self._waiting.append(publication)
        return publication

    def at_step(self, t: int) -> None:
        """Issue, in submission order, the publications due one update before their install."""
        due = [p for p in self._waiting if p.job.install_step - 1 == t and t > p.job.version]
        for publication in due:
            self.issue_now(publication)

    def issue_now(self, publication: _Publication) -> None:
        if publication in self._waiting:
            self._waiting.remove(publication)
        publication.issue()

    def close(self) -> None:
        self._waiting.clear()
