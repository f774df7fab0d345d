"""Batched execution: same-shape blocks stepped together (``ExecutionConfig(batched=True)``).

The per-block path runs a short sequence of small kernels per block; on a GPU
at LLM scale their launches, not their FLOPs, set the step time. Here the
blocks of one parameter group with the same shape, state dtype and device form
a *group*, and every phase of the plan (``spec.phases``) runs on stacked
tensors (``runtime.optim.batched_rules``): the groups of one param group at one
step form a *batch*, whose matmuls run once per group and whose elementwise
work runs once for the batch (``torch._foreach_*`` over the groups' stacks);
vectors take the AdamW fallback with ``torch._foreach_*`` ops. The math is the
per-block math, so both paths agree to round-off.

Where state lives, and what stays per block:

- **Placement ``device``** (no tiers): a batch holds every group of its param
  group and step. After a group's first step its slots are stored stacked, one (n, ...) tensor per slot, and every block's state holds
  views of it, so nothing is copied per step and ``block_state`` still reads a
  block. A slot a refresh install replaces (a new basis, a permuted V) is
  re-stacked at the next phase that needs it.
- **Tiered placements** (``host``, ``lifecycle``, ``pressure``): tiers stay per
  block. A batch takes groups, in order, while their working sets together fit
  the device budget less what rests on the device; a group that does not fit
  beside others is a batch alone, and with no budget every group of the step is
  one batch. Each step a batch's block states are taken from the tiered store
  as usual, stacked, stepped, and the slots the step wrote are copied back into
  the block tensors the store hands back, which it then writes back to their
  tiers (the bases and roots the hot path only reads are not copied back).
- **Refreshes**: computed per group (batched QR / eigh over the group's
  snapshot), but queued, installed and checkpointed **per block**: each block
  gets its slice of the group's result at the install step its staleness
  policy gives it, and installs with the per-block ``_install``. With
  staggering, the blocks due at a step form the batch.
- **Data parallelism** (``parallel``) is not supported in batched mode yet:
  owners are per block and a group job has no single owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from runtime.blocking import Block, block_view, matrix_view
from runtime.optim.adamw import init_adamw_state
from runtime.optim.batched_rules import (
    RULES,
    BatchedRule,
    Slots,
    Update,
    adamw_step_foreach,
    apply_updates,
)
from runtime.plan.spec import Phase
from runtime.refresh import JobOutcome, RefreshJob, ResultHandle, map_tensors
from traces.schema import Category

if TYPE_CHECKING:
    from runtime.optim.base import BlockedOptimizer


@dataclass(frozen=True)
class GroupKey:
    """What blocks must share to be stacked: param group, shape, dtype, device, kind."""

    param_group: int
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    is_matrix: bool


@dataclass
class BlockGroup:
    """Blocks stepped as one stack, in block order; ``name`` labels its spans and jobs."""

    name: str
    key: GroupKey
    blocks: list[Block]
    stacked: dict[str, torch.Tensor] = field(default_factory=dict)
    views: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def group_blocks(optimizer: BlockedOptimizer) -> list[BlockGroup]:
    """Every block of ``optimizer`` in exactly one group, groups in first-block order.

    Vectors need no stacking (their AdamW runs on lists), so all vectors of a
    param group with one dtype and device form one group whatever their length.
    """
    from runtime.optim.base import state_dtype

    index_of_group = {id(g): i for i, g in enumerate(optimizer.param_groups)}
    groups: dict[GroupKey, BlockGroup] = {}
    for block in optimizer.blocks:
        param = optimizer._params[block.param_index]
        key = GroupKey(
            index_of_group[id(optimizer._group_of[block.param_index])],
            block.shape if block.is_matrix else (0, 1),
            state_dtype(param),
            param.device,
            block.is_matrix,
        )
        if key not in groups:
            a, b = key.shape
            kind = "m" if key.is_matrix else "v"
            groups[key] = BlockGroup(f"{kind}{len(groups)}:{a}x{b}", key, [])
        groups[key].blocks.append(block)
    return list(groups.values())


class _SliceHandle:
    """Block ``index``'s result out of a group job's list of per-block results."""

    __slots__ = ("_index", "_inner")

    def __init__(self, inner: ResultHandle, index: int) -> None:
        self._inner = inner
        self._index = index

    def done(self) -> bool:
        return self._inner.done()

    def outcome(self) -> JobOutcome:
        outcome = self._inner.outcome()
        return JobOutcome(outcome.result[self._index], outcome.compute_ns)


@dataclass
class _Part:
    """The blocks of one group that step at one t, and their states while they step."""

    bg: BlockGroup
    blocks: list[Block]
    t: int
    states: list[Any] = field(default_factory=list)
    w: list[torch.Tensor] = field(default_factory=list)
    slots: Slots = field(default_factory=dict)


@dataclass
class _Active:
    """A parameter that makes an update this step: its t and 2-D views of it and its grad."""

    t: int
    w2: torch.Tensor
    g2: torch.Tensor


class BatchedStepper:
    """Steps an optimizer's blocks batch by batch; ``BlockedOptimizer.step`` calls ``step``."""

    def __init__(self, optimizer: BlockedOptimizer) -> None:
        self.optimizer = optimizer
        self.rule: BatchedRule = RULES[optimizer.spec.name]
        self.groups = group_blocks(optimizer)
        self.persistent = optimizer.execution.placement is None
        self._block_bytes: dict[str, int] = {}  # a block's working set, for tiered batches
        self.statistics = self.rule.statistics
        self.precondition = self.rule.precondition
        if optimizer.execution.compile:
            # Floats (lr, bias corrections) are graph inputs where torch does not
            # specialize them (torch >= 2.6); older versions recompile per value.
            self.statistics = torch.compile(self.rule.statistics)
            self.precondition = torch.compile(self.rule.precondition)

    # ------------------------------------------------------------------ step
    def step(self) -> None:
        opt = self.optimizer
        active: dict[int, _Active] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    prepared = self._prepare(p, group)
                    if prepared is not None:
                        active[opt._param_index[id(p)]] = prepared
        parts: list[_Part] = []
        for bg in self.groups:
            by_t: dict[int, list[Block]] = {}
            for block in bg.blocks:
                if block.param_index in active:
                    by_t.setdefault(active[block.param_index].t, []).append(block)
            for t, blocks in by_t.items():
                if bg.key.is_matrix:
                    parts.append(_Part(bg, blocks, t))
                else:
                    self._vector_group(bg, blocks, t, active)
        updates: list[tuple[list[torch.Tensor], Update]] = []
        for batch in self._batches(parts):
            self._matrix_batch(batch, active, updates)
        apply_updates(updates)

    def _batches(self, parts: list[_Part]) -> list[list[_Part]]:
        """Parts that step together: those of one param group, t, dtype and device; under a
        tiered placement, split so that each batch's working set fits the device budget."""
        batches: dict[tuple[Any, ...], list[_Part]] = {}
        for part in parts:
            key = part.bg.key
            batches.setdefault((key.param_group, part.t, key.dtype, key.device), []).append(part)
        if self.persistent:
            return list(batches.values())
        room = self._device_room()
        out: list[list[_Part]] = []
        for same in batches.values():
            batch: list[_Part] = []
            held = 0
            for part in same:
                need = sum(self._working_set(b) for b in part.blocks)
                if batch and held + need > room:
                    out.append(batch)
                    batch, held = [], 0
                batch.append(part)
                held += need
            out.append(batch)
        return out

    def _device_room(self) -> int:
        """Device bytes a tiered batch may hold: the budget less what rests there."""
        from runtime.tiers import Tier, TieredStateStore

        budget = self.optimizer.execution.device_budget_bytes
        store = self.optimizer.store
        if budget is None or not isinstance(store, TieredStateStore):
            return 1 << 62
        return budget - store.tier_bytes()[Tier.DEVICE]

    def _working_set(self, block: Block) -> int:
        nbytes = self._block_bytes.get(block.id)
        if nbytes is None:
            nbytes = self._block_bytes[block.id] = self.optimizer._slot_bytes(block)
        return nbytes

    def _prepare(self, p: torch.Tensor, group: dict[str, Any]) -> _Active | None:
        """The per-parameter part of a step: checks, first-call init, the step counter."""
        from runtime.optim.base import state_dtype

        opt = self.optimizer
        grad = p.grad
        assert grad is not None
        name = type(opt).__name__
        if grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if not p.is_contiguous():
            raise RuntimeError(f"{name} needs contiguous parameters")
        index = opt._param_index[id(p)]
        blocks = opt._param_blocks[index]
        pstate = opt.state[p]
        w2 = matrix_view(p, blocks[0])
        g2 = matrix_view(grad, blocks[0])
        if g2.dtype != state_dtype(p):
            g2 = g2.to(state_dtype(p))
        if "step" not in pstate:
            pstate["step"] = 0
            for block in blocks:
                gb = block_view(g2, block)
                state = (
                    opt._init_block(block, gb, group) if block.is_matrix else init_adamw_state(gb)
                )
                opt.store.put(block.id, state)
            if opt.skips_first_call:
                return None
        pstate["step"] += 1
        opt._updated = True
        return _Active(pstate["step"], w2, g2)

    # -------------------------------------------------------------- vectors
    def _vector_group(
        self, bg: BlockGroup, blocks: list[Block], t: int, active: dict[int, _Active]
    ) -> None:
        opt = self.optimizer
        group = opt.param_groups[bg.key.param_group]
        states = [opt.store.get(b.id) for b in blocks]
        w = [block_view(active[b.param_index].w2, b) for b in blocks]
        g = [block_view(active[b.param_index].g2, b) for b in blocks]
        adamw_step_foreach(
            w,
            g,
            [s.M for s in states],
            [s.V for s in states],
            step=t,
            lr=group["lr"],
            **opt._fallback_hyperparameters(group),
        )
        for block, state in zip(blocks, states, strict=True):
            opt.store.release(block.id, state)

    # ------------------------------------------------------------- matrices
    def _matrix_batch(
        self,
        batch: list[_Part],
        active: dict[int, _Active],
        updates: list[tuple[list[torch.Tensor], Update]],
    ) -> None:
        """The batch's phases; its parameter updates go to ``updates`` (applied after all)."""
        opt = self.optimizer
        group = opt.param_groups[batch[0].bg.key.param_group]
        t = batch[0].t
        config = opt._block_config(group)
        g = []  # each part's gradient blocks, stacked
        for part in batch:
            part.states = [opt.store.get(b.id) for b in part.blocks]
            part.w = [block_view(active[b.param_index].w2, b) for b in part.blocks]
            part.slots = self._gather(part)
            g.append(torch.stack([block_view(active[b.param_index].g2, b) for b in part.blocks]))
        for phase in opt.spec.phases:
            if phase is Phase.STATISTICS:
                with self._span("factor_update", batch):
                    self.statistics([part.slots for part in batch], g, group, t)
            elif phase is Phase.PRECONDITION:
                w = [part.w for part in batch]
                with self._span("precondition", batch):
                    directions = self.precondition([part.slots for part in batch], w, g, group, t)
                updates.extend(zip(w, directions, strict=True))
            elif phase is Phase.INSTALL and opt.pipeline.pending_count():
                # The per-block install (rejections and counters included) on
                # block states made current; slots it replaced are re-stacked.
                for part in batch:
                    self._scatter([part])
                    for block, state in zip(part.blocks, part.states, strict=True):
                        opt._install_due(block, state, t)
                    part.slots = self._gather(part)
            elif phase is Phase.REFRESH:
                for part in batch:
                    due_blocks = [
                        i
                        for i, b in enumerate(part.blocks)
                        if opt.spec.refresh_due(t, opt._ordinal[b.id], config)
                    ]
                    if due_blocks:
                        self._submit(part, due_blocks, group)
        self._scatter(batch)
        for part in batch:
            for block, state in zip(part.blocks, part.states, strict=True):
                if opt._recorder.enabled:
                    age = t - opt._active_version.get(block.id, 0)
                    opt._recorder.counter("preconditioner_age", age, step=opt._calls, key=block.id)
                opt.store.release(block.id, state)

    def _gather(self, part: _Part) -> Slots:
        """Each slot of the blocks as one stacked tensor (reused when the blocks hold its views).

        With persistent stacks (placement ``device``, the whole group stepping)
        a freshly stacked slot becomes the blocks' storage: each block's state
        gets its view, so the next step finds them linked and copies nothing.
        """
        bg, states = part.bg, part.states
        link = self.persistent and len(part.blocks) == len(bg.blocks)
        out: Slots = {}
        for name in self.rule.slots:
            tensors = [getattr(s, name) for s in states]
            if tensors[0] is None:
                out[name] = None
                continue
            views = bg.views.get(name) if link else None
            if views is not None and all(x is y for x, y in zip(tensors, views, strict=True)):
                out[name] = bg.stacked[name]
                continue
            stacked = torch.stack(tensors)
            out[name] = stacked
            if link:
                views = list(stacked.unbind(0))
                for state, view in zip(states, views, strict=True):
                    setattr(state, name, view)
                bg.stacked[name], bg.views[name] = stacked, views
        return out

    def _scatter(self, parts: list[_Part]) -> None:
        """Copy the slots the step wrote back into block tensors that are not views of them,
        all parts in one ``_foreach_copy_``.

        Slots the hot phases only read (``rule.read_only``) are skipped: their
        stacks were made from the block tensors and still equal them.
        """
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for part in parts:
            for name, stacked in part.slots.items():
                if stacked is None or name in self.rule.read_only:
                    continue
                tensors = [getattr(s, name) for s in part.states]
                views = part.bg.views.get(name)
                linked = views is not None and part.bg.stacked.get(name) is stacked
                if linked and all(x is y for x, y in zip(tensors, views or (), strict=True)):
                    continue
                targets += tensors
                sources += stacked.unbind(0)
        if targets:
            torch._foreach_copy_(targets, sources)

    def _submit(self, part: _Part, due: list[int], group: dict[str, Any]) -> None:
        """One batched refresh job for the part's due blocks; each block queues its slice."""
        opt = self.optimizer
        bg, blocks, t = part.bg, part.blocks, part.t
        inputs = opt._refresh_inputs(SimpleNamespace(**part.slots), group, t)
        if inputs is None:
            return
        if len(due) < len(blocks):
            index = torch.tensor(due, device=bg.key.device)
            inputs = map_tensors(inputs, lambda x: x.index_select(0, index))
        ids = [blocks[i].id for i in due]
        pipeline = opt.pipeline
        installs = [pipeline.queue.install_step(b, t, opt.reference_tau) for b in ids]
        job = RefreshJob(
            f"{bg.name}x{len(ids)}",  # m<i>:<rows>x<cols>x<blocks>: simulator.workload reads it
            t,
            opt._calls,
            self.rule.refresh,
            inputs,
            installs[0],
            not pipeline.executor.asynchronous,
        )
        handle = pipeline.executor.run(job)
        for k, (block_id, install) in enumerate(zip(ids, installs, strict=True)):
            pipeline.queue.add(block_id, t, install, _SliceHandle(handle, k))

    def _span(self, name: str, batch: list[_Part]) -> Any:
        """One span for the batch; its detail names each group and its block count."""
        opt = self.optimizer
        if opt._trace_blocks:
            detail = ", ".join(f"{part.bg.name} ({len(part.blocks)} blocks)" for part in batch)
            return opt._recorder.span(name, Category.OPTIMIZER, step=opt._calls, detail=detail)
        return _NullContext()


class _NullContext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
