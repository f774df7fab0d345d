"""Replicated updates: each block's refresh is computed by its owner and broadcast to every rank.

Every rank runs every block's hot path, so every rank must install the same
result at the same step. The owner (``runtime.plan.assign_owners``) computes
the refresh; the result travels as one byte buffer (``packing``) in
broadcasts issued with ``async_op=True``, so that they overlap training, and
the install queue waits on the last one at the install step.

The route depends on the topology (``Route``):

- one node: one broadcast on the publication group;
- several nodes, a block the plan keeps inside its node (node-local): each
  node's owner broadcasts on its node's intra-node group;
- several nodes, a block whose result crosses nodes: the owner broadcasts on
  its inter-node group (the ranks of its local index on every node: one
  *leader* per node), then each node's leader broadcasts within its node.
  Such a block installs at the inter-node staleness bound
  (``runtime.policies.levels``), so the slow hop has more steps to finish.

Collectives must be issued in the same order on every member of a group.
Every rank knows every job's version and install step (the schedule and the
staleness policy are deterministic), so each hop is issued at a point all
ranks reach in the same order:

- a result computed inline (synchronous policies) is published at once, at
  its submission: the owner has it, the others receive it while the step goes on;
- an asynchronous result's hops are issued at the start of the optimizer
  steps before its install, the last hop one update before it, the one before
  one update earlier (``at_step``); the owner waits for its worker there if it
  must (a ``wait_refresh`` span with detail ``publish``), and a leader waits
  for the inter-node hop before it forwards the result;
- with an inter-node bound τ_inter ≥ 4, inter-node hops go in rounds, at the
  updates that are multiples of τ_inter − 2: the first round after the
  result's version, which always comes before its intra-node hop. Nodes then
  synchronise over the slow link once every τ_inter − 2 updates, not every
  update;
- a hop whose point is not after the submission (small τ) is issued when the
  install asks for the result.

Each hop a rank takes part in is a ``publish`` span on its own track with its
bytes and its group (``detail``: ``v<version> from rank <r> in update <t>
(group <level>)``, t the update at whose start it was issued).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from runtime.distributed.context import DistContext
from runtime.distributed.packing import ResultLayout, pack, unpack
from runtime.plan.ownership import Assignment
from runtime.refresh.executors import (
    Finished,
    JobOutcome,
    RefreshError,
    RefreshJob,
    ResultHandle,
)
from traces.recorder import Recorder
from traces.schema import Category

PUBLISH_TRACK = "publish"


@dataclass(frozen=True)
class Hop:
    """One broadcast of a route: on ``group`` from ``src``; ``group`` None where this rank is not in it."""

    level: str  # publish | intra | inter: the group, as the trace names it
    group: Any
    src: int


def route(assignment: Assignment, ctx: DistContext, block: str) -> tuple[Hop, ...]:
    """The broadcasts that bring ``block``'s result to this rank, in order."""
    topology = ctx.topology
    if topology.nodes == 1:
        return (Hop("publish", ctx.publish_group, assignment.owners[block]),)
    per = topology.local_size
    here = topology.node_of(ctx.rank) * per
    if not assignment.crosses_nodes(block):
        return (Hop("intra", ctx.intra_group, assignment.owner_for(block, ctx.rank)),)
    owner = assignment.owners[block]
    leader = owner % per
    inter = Hop("inter", ctx.inter_group if ctx.local_rank == leader else None, owner)
    if per == 1:
        return (inter,)
    return (inter, Hop("intra", ctx.intra_group, here + leader))


class _Publication:
    """One block version's result on its way from the owner; a ``ResultHandle``."""

    def __init__(
        self,
        publisher: OwnerBroadcastPublisher,
        job: RefreshJob,
        computed: ResultHandle | None,
        hops: tuple[Hop, ...],
    ) -> None:
        self._publisher = publisher
        self.job = job
        self.computed = computed
        self.hops = hops
        self.issued = 0  # how many hops have been issued
        self.buffer: torch.Tensor | None = None
        self._works: list[tuple[Hop, Any, int]] = []  # (hop, work, issued at), for our hops
        self._updates: list[int] = []  # the update at whose start each of them was issued
        self._outcome: JobOutcome | None = None

    def issue_at(self, hop: int) -> int:
        """The update at whose start hop ``hop`` is issued: the last one before the install."""
        return self.job.install_step - (len(self.hops) - hop)

    def _packed_result(self) -> torch.Tensor:
        """This rank's own result, waited for if its worker is still on it, as bytes.

        A job that raised publishes all-ones bytes (NaN in every float format),
        so that every rank, the owner included, rejects the same version.
        """
        pub = self._publisher
        assert self.computed is not None
        try:
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
        except RefreshError:
            return pub.layout_of(self.job.block).empty(pub.buffer_device).fill_(255)
        self._outcome = outcome
        return pack(outcome.result, pub.layout_of(self.job.block), pub.buffer_device)

    def issue_next(self) -> None:
        """Start the next hop (the owner first takes its own result; a leader waits the hop before)."""
        pub = self._publisher
        hop = self.hops[self.issued]
        self.issued += 1
        if hop.group is None:
            return  # not a member of this hop
        if self.buffer is None:
            if self.computed is not None:
                self.buffer = self._packed_result()
            else:
                self.buffer = pub.layout_of(self.job.block).empty(pub.buffer_device)
        buffer = self.buffer
        self._wait_all()  # what this rank forwards must have arrived
        work = dist.broadcast(buffer, src=hop.src, group=hop.group, async_op=True)
        self._works.append((hop, work, pub.recorder.clock()))
        self._updates.append(pub.update)

    def _wait_all(self) -> None:
        pub = self._publisher
        assert self.buffer is not None
        while self._works:
            hop, work, issued_ns = self._works.pop(0)
            update = self._updates.pop(0)
            work.wait()
            pub.recorder.add_span(
                "publish",
                Category.COLLECTIVE,
                issued_ns,
                pub.recorder.clock(),
                step=self.job.step,
                block=self.job.block,
                nbytes=int(self.buffer.numel()),
                detail=f"v{self.job.version} from rank {hop.src} in update {update}"
                f" (group {hop.level})",
                track=PUBLISH_TRACK,
            )

    @property
    def complete(self) -> bool:
        return self.issued == len(self.hops)

    def done(self) -> bool:
        return self.complete and all(work.is_completed() for _, work, _ in self._works)

    def outcome(self) -> JobOutcome:
        while not self.complete:
            self._publisher.issue_next(self)
        self._wait_all()
        if self._outcome is None:
            pub = self._publisher
            assert self.buffer is not None
            result = unpack(self.buffer, pub.layout_of(self.job.block), pub.result_type)
            self._outcome = JobOutcome(result, 0)
        return self._outcome


class OwnerBroadcastPublisher:
    """Results go from each block's owner to all ranks, along the block's ``route``."""

    def __init__(
        self,
        ctx: DistContext,
        assignment: Assignment,
        layout_of: Callable[[str], ResultLayout],
        result_type: type,
        recorder: Recorder,
        buffer_device: torch.device,
        inter_node_staleness: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.assignment = assignment
        # Inter-node hops go in rounds, every inter_every updates: with τ_inter ≥ 3 the
        # longest period that still leaves each result a round before its intra-node hop.
        self.inter_every = max(1, (inter_node_staleness or 0) - 2)
        self.update = 0  # the update whose optimizer step runs now
        self.layout_of = layout_of
        self.result_type = result_type
        self.recorder = recorder
        self.buffer_device = buffer_device
        self._routes = {block: route(assignment, ctx, block) for block in assignment.owners}
        self._waiting: list[_Publication] = []  # hops not all issued, in submission order

    def owns(self, block: str) -> bool:
        return self.assignment.owner_for(block, self.ctx.rank) == self.ctx.rank

    def publish(self, job: RefreshJob, computed: ResultHandle | None) -> ResultHandle:
        publication = _Publication(self, job, computed, self._routes[job.block])
        if isinstance(computed, Finished) or (computed is None and job.inline):
            while not publication.complete:
                publication.issue_next()
        else:
            self._waiting.append(publication)
        return publication

    def at_step(self, t: int) -> None:
        """Issue, in submission order, the hops due by update ``t`` of jobs submitted before it."""
        self.update = t
        for publication in list(self._waiting):
            if t <= publication.job.version:
                continue
            while not publication.complete and self._due(publication, t):
                publication.issue_next()
            if publication.complete:
                self._waiting.remove(publication)

    def _due(self, publication: _Publication, t: int) -> bool:
        """Whether the publication's next hop goes now: at its point, or in an inter-node round."""
        last = publication.issue_at(publication.issued)
        if publication.hops[publication.issued].level == "inter" and t < last:
            return self.inter_every > 1 and t % self.inter_every == 0
        return last <= t

    def issue_next(self, publication: _Publication) -> None:
        publication.issue_next()
        if publication.complete and publication in self._waiting:
            self._waiting.remove(publication)

    def close(self) -> None:
        self._waiting.clear()
