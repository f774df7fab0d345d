"""The optimizer shell shared by Shampoo, SOAP and KL-Shampoo.

The shell orchestrates; the subclasses hold the math. It cuts every parameter
into blocks (``runtime.blocking``), keeps every state tensor in the state store
(``runtime.state``), routes 1-D parameters to the AdamW fallback, hands
amortized work to the refresh pipeline (``runtime.refresh``) and records
spans. What a block holds and in which order its work runs come from the
optimizer's plan (``spec``, a ``runtime.plan.OptimizerSpec``): for every
matrix block the shell runs the plan's phases, and subclasses implement them:
``_init_block``, ``_statistics``, ``_precondition``, ``_refresh_inputs`` with
the pure ``compute_refresh``, and ``_install``.

Step-counter convention (stated once): t counts parameter updates and starts at
1. Optimizers with ``skips_first_call`` use a parameter's first gradient only to
initialise its state; that call leaves the parameter unchanged and t at 0.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from runtime.blocking import Block, block_view, matrix_view, partition
from runtime.execution import ExecutionConfig
from runtime.matrix_functions import check_fp32_matmul_precision
from runtime.optim.adamw import AdamWState, adamw_step, init_adamw_state
from runtime.plan.costmodel import CostConfig, block_hot_path_flops, block_refresh_flops
from runtime.plan.kinds import SlotKind
from runtime.plan.ownership import Assignment, BlockWork, assign_owners
from runtime.plan.spec import BlockConfig, OptimizerSpec, Phase
from runtime.refresh import LocalPublisher, Publisher, RefreshPipeline, build_pipeline
from runtime.refresh.executors import RefreshError
from runtime.state import DeviceStateStore, StateStore
from runtime.stateful import Stateful
from traces.schema import Category

_warned_tf32 = False
_RESULT_KINDS = frozenset({SlotKind.BASIS, SlotKind.ROOT})
"""Slots a refresh replaces; its snapshot holds them and the factors, its shadow result them."""
_FACTOR_KINDS = frozenset({SlotKind.FACTOR})


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """Optimizer state keeps fp32 master copies for low-precision params (§7.7)."""
    if param.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return param.dtype


def check_probability(name: str, value: float, *, allow_one: bool = False) -> None:
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)):
        raise ValueError(
            f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}"
        )


class BlockedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose matrix parameters are updated per block."""

    spec: ClassVar[OptimizerSpec]
    """The plan of this optimizer's blocks: slots, reference staleness, phases, schedule."""
    reference_tau: ClassVar[int]
    """Staleness of the synchronous reference (§6): 0 for Shampoo, 1 for SOAP / KL (from ``spec``)."""
    skips_first_call: ClassVar[bool]
    block_state_type: ClassVar[type]
    refresh_result_type: ClassVar[type]
    compute_refresh: ClassVar[Callable[[Any], Any]]
    """The pure amortized computation: refresh inputs -> refresh result, on any thread."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:
            cls.reference_tau = spec.reference_tau
            cls.skips_first_call = spec.skips_first_call

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        execution: ExecutionConfig | None = None,
    ) -> None:
        check_positive("lr", defaults["lr"], allow_zero=True)
        check_positive("weight_decay", defaults["weight_decay"], allow_zero=True)
        block_size = defaults.get("block_size")
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
        super().__init__(params, defaults)
        self.execution = execution if execution is not None else ExecutionConfig()
        self._recorder = self.execution.recorder
        self._trace_blocks = self.execution.trace_blocks and self._recorder.enabled
        self.store: StateStore = DeviceStateStore()
        self._calls = 0
        self._ordinal: dict[str, int] = {}
        self._active_version: dict[str, int] = {}
        self.rejected_refreshes = 0  # refreshes that raised or were not finite (previous kept)
        self._rejected_in_a_row: dict[str, int] = {}
        self.blocks: list[Block] = []
        self._param_blocks: dict[int, list[Block]] = {}
        self._param_index: dict[int, int] = {}
        self._params: list[torch.Tensor] = []
        self._group_of: dict[int, dict[str, Any]] = {}
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                blocks = partition(index, p.shape, group.get("block_size"))
                self._param_index[id(p)] = index
                self._group_of[index] = group
                self._params.append(p)
                self._param_blocks[index] = blocks
                self.blocks.extend(blocks)
                index += 1
        matrix_blocks = [b for b in self.blocks if b.is_matrix]
        self._ordinal = {b.id: ordinal for ordinal, b in enumerate(matrix_blocks)}
        self.assignment: Assignment | None = None
        self._owned: set[str] | None = None  # sharded updates: the blocks this rank updates
        self._gather: Any = None
        self._updated = False
        publisher = self._setup_parallel()
        self.pipeline: RefreshPipeline = build_pipeline(
            self.execution, self._recorder, (p.device for p in self._params), publisher=publisher
        )
        if self.execution.placement is not None:
            self.store = self._make_tiered_store()
        self._hook_handles: list[Any] = []
        self._batched: Any = None
        if self.execution.batched:
            from runtime.optim.batched import BatchedStepper

            self._batched = BatchedStepper(self)
        tiered = self.execution.placement is not None
        if (self.execution.staleness.asynchronous or tiered) and self.execution.hooks:
            self._register_hooks()
        global _warned_tf32
        message = check_fp32_matmul_precision()
        if message and not _warned_tf32:
            warnings.warn(message, stacklevel=2)
            _warned_tf32 = True

    def _setup_parallel(self) -> Publisher:
        """Owners of every block (the plan's assignment) and how results or updates move."""
        parallel = self.execution.parallel
        if parallel is None:
            return LocalPublisher()
        from runtime.distributed import check_staleness_for_ranks
        from runtime.distributed.publish import OwnerBroadcastPublisher
        from runtime.distributed.sharded import ShardedGather

        check_staleness_for_ranks(self.execution.staleness.name)
        ctx = parallel.context
        mode = parallel.update_mode
        links = parallel.links if mode == "replicated" else None
        self.assignment = assign_owners(self._ownership_work(mode), ctx.topology, links=links)
        owners = self.assignment.owners
        buffer_device = (
            torch.device("cuda", torch.cuda.current_device())
            if ctx.backend == "nccl"
            else torch.device("cpu")
        )
        if mode == "sharded":
            self._owned = {b.id for b in self.blocks if not b.is_matrix or owners[b.id] == ctx.rank}
            self._gather = ShardedGather(
                ctx, owners, self.blocks, self._params, self._recorder, buffer_device
            )
            return LocalPublisher()
        by_id = {b.id: b for b in self.blocks}

        def layout_of(block_id: str) -> Any:
            block = by_id[block_id]
            group = self._group_of[block.param_index]
            dtype = state_dtype(self._params[block.param_index])
            return self._result_layout(block, self._block_config(group), dtype)

        if parallel.inter_node_staleness is not None and ctx.topology.nodes > 1:
            from runtime.policies.levels import LevelStaleness

            crossing = frozenset(b for b in owners if self.assignment.crosses_nodes(b))
            staleness = LevelStaleness(
                self.execution.staleness, parallel.inter_node_staleness, crossing
            )
            self.execution = dataclasses.replace(self.execution, staleness=staleness)
        return OwnerBroadcastPublisher(
            ctx,
            self.assignment,
            layout_of,
            self.refresh_result_type,
            self._recorder,
            buffer_device,
            inter_node_staleness=parallel.inter_node_staleness if ctx.topology.nodes > 1 else None,
        )

    def _ownership_work(self, mode: str) -> list[BlockWork]:
        """What owning a block costs: its refresh (replicated), or its whole update (sharded)."""
        if mode != "sharded":
            return self.block_work()
        out = []
        for block in self.blocks:
            if not block.is_matrix:
                continue
            group = self._group_of[block.param_index]
            config = self._block_config(group)
            cost_config = self._cost_config(group)
            a, b = block.shape
            cost = block_hot_path_flops(a, b, cost_config)
            cost += block_refresh_flops(a, b, cost_config) / config.precondition_frequency
            out.append(BlockWork(block.id, cost, self._slot_bytes(block)))
        return out

    def _cost_config(self, group: dict[str, Any]) -> CostConfig:
        limit: Any = "reference" if self.spec.name == "shampoo" else group.get("max_precond_dim")
        return CostConfig(
            self.spec.name,  # type: ignore[arg-type]
            max_precond_dim=limit,
            grafting=group.get("grafting") != "none",
        )

    def _result_layout(self, block: Block, config: BlockConfig, dtype: torch.dtype) -> Any:
        """Every field a refresh result of ``block`` may hold (``runtime.distributed.packing``)."""
        raise NotImplementedError

    def _register_hooks(self) -> None:
        for p in self._params:
            if p.requires_grad and hasattr(p, "register_post_accumulate_grad_hook"):
                self._hook_handles.append(p.register_post_accumulate_grad_hook(self._on_grad_ready))

    def _on_grad_ready(self, p: torch.Tensor) -> None:
        """Post-accumulate-grad hook: prefetch this parameter's state and due refresh results."""
        index = self._param_index[id(p)]
        pstate = self.state.get(p)
        if not pstate or "step" not in pstate:
            return
        for block in self._param_blocks[index]:
            self.store.prefetch(block.id)
        next_t = pstate["step"] + 1
        for block in self._param_blocks[index]:
            if block.is_matrix and self.pipeline.prefetch(block.id, next_t, p.device):
                self._recorder.counter("prefetched", 1, step=self._calls + 1, key=block.id)

    def _make_tiered_store(self) -> StateStore:
        from runtime.tiers import BudgetError, TieredStateStore

        execution = self.execution
        assert execution.placement is not None
        device = self._params[0].device if self._params else torch.device("cpu")
        unlimited = 1 << 62
        device_budget = execution.device_budget_bytes or unlimited
        store = TieredStateStore(
            execution.placement,
            device,
            device_budget_bytes=device_budget,
            host_budget_bytes=execution.host_budget_bytes or unlimited,
            recorder=self._recorder,
            spill=execution.spill,
        )
        # Refuse a budget below one block's hot working set before any training.
        for block in self.blocks:
            if not block.is_matrix:
                continue
            needed = self._slot_bytes(block)
            if needed > device_budget:
                raise BudgetError(
                    f"device budget {device_budget} bytes is smaller than block {block.id}'s hot working set"
                    f" ({needed} bytes: its factors, bases or roots and moments, shape {block.shape})"
                )
        return store

    def close(self) -> None:
        """Join the refresh workers; the optimizer can still checkpoint, not step."""
        self.pipeline.close()
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()

    def _block_config(self, group: dict[str, Any]) -> BlockConfig:
        """The plan's view of a param group: frequency, t0, rotation limit, grafting, stagger."""
        return BlockConfig(
            precondition_frequency=group["precondition_frequency"],
            start_preconditioning_step=group.get("start_preconditioning_step"),
            max_precond_dim=group.get("max_precond_dim"),
            grafting=group.get("grafting") != "none",
            stagger=self.execution.stagger,
        )

    def _slot_bytes(self, block: Block, kinds: frozenset[SlotKind] | None = None) -> int:
        """Bytes of the block's slots (of ``kinds``, or all) at its parameter's state dtype."""
        element = torch.finfo(state_dtype(self._params[block.param_index])).bits // 8
        config = self._block_config(self._group_of[block.param_index])
        slots = self.spec.slots(*block.shape, config)
        return sum(s.nbytes(element) for s in slots if kinds is None or s.kind in kinds)

    def block_work(self) -> list[BlockWork]:
        """Each matrix block's amortized work, priced by the plan's cost model (§8).

        ``cost`` is the refresh's FLOPs; ``nbytes`` what its owner holds for
        it while it runs (a snapshot of the factors and bases, and the shadow
        result). This is what ``runtime.plan.assign_owners`` balances over ranks.
        """
        out = []
        for block in self.blocks:
            if not block.is_matrix:
                continue
            group = self._group_of[block.param_index]
            if not self.spec.has_refresh(*block.shape, self._block_config(group)):
                continue
            cost = block_refresh_flops(*block.shape, self._cost_config(group))
            result = self._slot_bytes(block, _RESULT_KINDS)
            nbytes = self._slot_bytes(block, _FACTOR_KINDS) + 2 * result
            out.append(BlockWork(block.id, cost, nbytes, result_bytes=result))
        return out

    # ----------------------------------------------------------------- hooks
    def _init_block(self, block: Block, g: torch.Tensor, group: dict[str, Any]) -> Any:
        """The state of a matrix block, from its first gradient."""
        raise NotImplementedError

    def _statistics(
        self, block: Block, state: Any, g: torch.Tensor, group: dict[str, Any], t: int
    ) -> None:
        """Phase STATISTICS: the factor statistics from the gradient (hot path)."""
        raise NotImplementedError

    def _precondition(
        self,
        block: Block,
        state: Any,
        w: torch.Tensor,
        g: torch.Tensor,
        group: dict[str, Any],
        t: int,
    ) -> None:
        """Phase PRECONDITION: moments, direction and the parameter update (hot path)."""
        raise NotImplementedError

    def _refresh_inputs(self, state: Any, group: dict[str, Any], t: int) -> Any:
        """Phase REFRESH, when due: the inputs of ``compute_refresh`` (None: nothing to refresh)."""
        raise NotImplementedError

    def _install(self, block: Block, state: Any, result: Any) -> None:
        raise NotImplementedError

    def _fallback_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """β1, β2, ε, weight decay of the AdamW fallback for this group."""
        raise NotImplementedError

    # ----------------------------------------------------------- public API
    def block_state(self, block_id: str) -> Any:
        """The typed state of one block (its tensors on the compute device)."""
        return self.store.get(block_id)

    @property
    def optimizer_step(self) -> int:
        """How many times ``step()`` has been called; the trace's step number."""
        return self._calls

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._calls += 1
        self._updated = False
        self.pipeline.begin_step(self._calls, self._calls - int(self.skips_first_call))
        with self._recorder.span("optimizer_step", Category.OPTIMIZER, step=self._calls):
            if self._batched is not None:
                self._batched.step()
            else:
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            self._step_param(p, group)
            if self._gather is not None and self._updated:
                self._gather.gather(self._calls)
            # The step boundary: placement decides where state rests for the next
            # step now, so that the next backward's prefetch hooks see it.
            self.store.step_boundary(self._calls + 1)
        return loss

    # ---------------------------------------------------------- internals
    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        assert grad is not None
        if grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if not p.is_contiguous():
            raise RuntimeError(f"{type(self).__name__} needs contiguous parameters")
        index = self._param_index[id(p)]
        blocks = self._param_blocks[index]
        pstate = self.state[p]
        dtype = state_dtype(p)
        w2 = matrix_view(p, blocks[0])
        g2 = matrix_view(grad, blocks[0]).to(dtype)
        owned = self._owned
        if owned is not None:
            blocks = [b for b in blocks if b.id in owned]
        first_call = "step" not in pstate
        if first_call:
            pstate["step"] = 0
            for block in blocks:
                gb = block_view(g2, block)
                state = (
                    self._init_block(block, gb, group) if block.is_matrix else init_adamw_state(gb)
                )
                self.store.put(block.id, state)
            if self.skips_first_call:
                return
        pstate["step"] += 1
        t = pstate["step"]
        self._updated = True
        config = self._block_config(group)
        for block in blocks:
            state = self.store.get(block.id)
            wb = block_view(w2, block)
            gb = block_view(g2, block)
            if block.is_matrix:
                self._run_phases(block, state, wb, gb, group, t, config)
                if self._recorder.enabled:
                    age = t - self._active_version.get(block.id, 0)
                    self._recorder.counter(
                        "preconditioner_age", age, step=self._calls, key=block.id
                    )
            else:
                hp = self._fallback_hyperparameters(group)
                adamw_step(wb, gb, state, step=t, lr=group["lr"], **hp)
            self.store.release(block.id, state)

    def _run_phases(
        self,
        block: Block,
        state: Any,
        w: torch.Tensor,
        g: torch.Tensor,
        group: dict[str, Any],
        t: int,
        config: BlockConfig,
    ) -> None:
        """One matrix block's step, in the order its plan gives (``spec.phases``)."""
        for phase in self.spec.phases:
            if phase is Phase.STATISTICS:
                with self._span("factor_update", block):
                    self._statistics(block, state, g, group, t)
            elif phase is Phase.PRECONDITION:
                with self._span("precondition", block):
                    self._precondition(block, state, w, g, group, t)
            elif phase is Phase.INSTALL:
                self._install_due(block, state, t)
            elif self.spec.refresh_due(t, self._ordinal[block.id], config):
                inputs = self._refresh_inputs(state, group, t)
                if inputs is not None:
                    self._submit_refresh(block, t, type(self).compute_refresh, inputs)

    def _submit_refresh(
        self, block: Block, version: int, compute: Callable[[Any], Any], inputs: Any
    ) -> None:
        self.pipeline.submit(
            block.id, version, self.reference_tau, compute, inputs, step=self._calls
        )

    def _install_due(self, block: Block, state: Any, t: int) -> None:
        """Install every refresh of ``block`` whose install step is ``t``."""
        device = self._device_of(block)
        for item in self.pipeline.take_due(block.id, t, device):
            if item.failure is not None:
                self._reject(block, item.version, item.failure)
                continue
            with self._recorder.span(
                "install",
                Category.REFRESH,
                step=self._calls,
                block=block.id,
                detail=f"v{item.version}",
            ):
                self._install(block, state, item.result)
            self._recorder.counter("staleness", t - item.version, step=self._calls, key=block.id)
            self._active_version[block.id] = item.version
            self._rejected_in_a_row.pop(block.id, None)

    def _reject(self, block: Block, version: int, reason: str) -> None:
        """A refresh that raised or is not finite: keep the block's previous preconditioner.

        One bad eigendecomposition (a NaN from a degenerate factor, a worker
        that died) must not end a long run or poison its state; the block keeps
        the version it has, as a staler one, and the trace counts the rejection.
        """
        now = self._recorder.clock()
        self._recorder.add_span(
            "refresh_rejected",
            Category.EVENT,
            now,
            now,
            step=self._calls,
            block=block.id,
            detail=f"v{version}: {reason}",
        )
        self.rejected_refreshes += 1
        self._recorder.counter("refresh_rejected", self.rejected_refreshes, step=self._calls)
        in_a_row = self._rejected_in_a_row.get(block.id, 0) + 1
        self._rejected_in_a_row[block.id] = in_a_row
        if in_a_row >= MAX_REJECTED_IN_A_ROW:  # not a fault any more: a bug, or broken input
            raise RefreshError(
                f"refresh of block {block.id} failed {in_a_row} times in a row, last at version"
                f" {version}: {reason}"
            )
        if self.rejected_refreshes == 1:
            warnings.warn(f"{reason}; the block keeps its previous preconditioner", stacklevel=3)

    def _device_of(self, block: Block) -> torch.device:
        return self._params[block.param_index].device

    def _span(self, name: str, block: Block) -> Any:
        if self._trace_blocks:
            return self._recorder.span(name, Category.OPTIMIZER, step=self._calls, block=block.id)
        return _NO_SPAN

    # ------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus every block's tensors and pending refreshes.

        Contains only tensors, numbers, strings, lists and dicts, so it saves
        with ``torch.save`` and loads with ``torch.load(weights_only=True)``.
        """
        out = super().state_dict()
        out["blocks"] = self.store.state_dict()
        out["tiers"] = self.store.tier_map()
        out["pending_refreshes"] = self.pipeline.state_dict()
        out["optimizer_calls"] = self._calls
        out["active_versions"] = dict(self._active_version)
        out["rejected"] = {
            "total": self.rejected_refreshes,
            "in_a_row": dict(self._rejected_in_a_row),
        }
        staleness = self.execution.staleness
        if isinstance(staleness, Stateful):  # adaptive: its choices and measurements
            out["staleness"] = staleness.state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        blocks = state_dict.pop("blocks", {})
        rejected = state_dict.pop("rejected", {"total": 0, "in_a_row": {}})
        self.rejected_refreshes = int(rejected["total"])
        self._rejected_in_a_row = {str(k): int(v) for k, v in rejected["in_a_row"].items()}
        tiers = state_dict.pop("tiers", None)
        staleness = state_dict.pop("staleness", None)
        pending = state_dict.pop("pending_refreshes", [])
        calls = state_dict.pop("optimizer_calls", 0)
        self._active_version = {
            str(k): int(v) for k, v in state_dict.pop("active_versions", {}).items()
        }
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        devices = {b.id: params[b.param_index].device for b in self.blocks}
        types = {b.id: (self.block_state_type if b.is_matrix else AdamWState) for b in self.blocks}
        self.store.load_state_dict(blocks, types, devices, tiers)
        self.pipeline.load_state_dict(pending, self.refresh_result_type, devices)
        policy = self.execution.staleness
        if staleness is not None:
            if not isinstance(policy, Stateful):
                raise ValueError(
                    "the state dict holds adaptive staleness state, this optimizer runs"
                    f" {policy.name}"
                )
            policy.load_state_dict(staleness)
        self._calls = int(calls)
        for p in params:
            if "step" in self.state[p]:
                self.state[p]["step"] = int(self.state[p]["step"])


MAX_REJECTED_IN_A_ROW = 3
"""Refreshes of one block rejected in a row before the run stops: one is a fault, three a bug."""


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()
