"""The training job behind ``asteria-bench run``: a small GPT on bytes, traced.

Everything a run measures comes from one recorder: spans for the step, the
forward and backward passes, the optimizer step and (inside it) every block's
factor update, preconditioning and amortized refresh; counters for loss,
learning rate, optimizer-state bytes and host / GPU telemetry. The per-step
metrics table is derived from the same spans, so ``metrics.parquet`` and the
trace can never disagree.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asteria_bench.checkpointing import (
    CheckpointPlan,
    Interrupted,
    LoopPosition,
    StopRequest,
    offset_clock,
)
from asteria_bench.config import BASELINES, RunConfig, owner_links_of, resolved_optimizer
from asteria_bench.errors import UserError
from asteria_bench.optimizers import build_optimizer, optimizer_parameter_groups
from asteria_bench.workload.data import ByteDataset, DataError, default_dataset, load_text
from asteria_bench.workload.model import GPT, GPTConfig
from runtime.checkpoint import CheckpointManager
from runtime.distributed import (
    DistContext,
    ParallelConfig,
    check_staleness_for_ranks,
    collective_device,
    is_collective_failure,
)
from runtime.execution import ExecutionConfig
from runtime.stateful import Stateful
from traces.recorder import Recorder
from traces.schema import Category, Span, Tier
from traces.stream import TraceStream

STEP_METRIC_COLUMNS = (
    "step",
    "loss",
    "val_loss",
    "lr",
    "step_time_ns",
    "forward_ns",
    "backward_ns",
    "optimizer_ns",
    "refresh_ns",
    "wait_ns",
    "transfer_ns",
    "optimizer_state_bytes",
)


@dataclass
class StepMetrics:
    step: int
    loss: float
    val_loss: float
    lr: float
    step_time_ns: int
    forward_ns: int
    backward_ns: int
    optimizer_ns: int
    refresh_ns: int
    wait_ns: int
    transfer_ns: int
    optimizer_state_bytes: int


@dataclass
class TrainResult:
    metrics: list[StepMetrics]
    recorder: Recorder
    model_shape: dict[str, Any]
    hyperparameters: dict[str, Any]
    policies: dict[str, str]
    device: str
    stopped_early: str | None = None
    staleness_schedule: dict[tuple[str, int], int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stagger: bool = False  # as used (the default follows the staleness policy)
    torch_threads: int = 1  # as used (the default is torch's)


ProgressCallback = Callable[[StepMetrics], None]


@dataclass(frozen=True)
class TrainStart:
    """What is known of a run once its optimizer is built: enough for its trace's metadata."""

    model_shape: dict[str, Any]
    hyperparameters: dict[str, Any]
    policies: dict[str, str]
    device: str
    stagger: bool
    torch_threads: int


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda was requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_dataset(config: RunConfig) -> ByteDataset:
    data = config.data
    try:
        if data.path is None:
            if (data.corpus_seed, data.corpus_bytes) == (1234, 1_000_000):
                return default_dataset(data.val_fraction)
            from asteria_bench.workload.corpus import generate_corpus

            return ByteDataset.from_bytes(
                generate_corpus(data.corpus_seed, data.corpus_bytes), data.val_fraction
            )
        raw = load_text(Path(data.path), context=config.model.context)
        return ByteDataset.from_bytes(raw, data.val_fraction)
    except DataError as exc:
        raise UserError(f"--data: {exc}") from None


def lr_multiplier(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (or constant)."""
    t = config.train
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr_ratio + (1.0 - t.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    store = getattr(optimizer, "store", None)
    if store is not None:
        return int(store.total_bytes())
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total


@torch.no_grad()
def evaluate(
    model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> float:
    model.eval()
    total = 0.0
    for x, y in batches:
        _, loss = model(x.to(device), y.to(device))
        assert loss is not None
        total += float(loss)
    model.train()
    return total / len(batches)


def _sum_spans(
    spans: list[Span],
    start: int,
    name: str | None = None,
    category: Category | None = None,
    track: str | None = None,
) -> int:
    """Total duration of the matching spans recorded since index ``start``."""
    total = 0
    for span in spans[start:]:
        if (
            (name is None or span.name == name)
            and (category is None or span.category == category)
            and (track is None or span.track == track)
        ):
            total += span.end_ns - span.start_ns
    return total


def model_description(model: GPT, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The model's shape plus every optimizer block's (rows, cols), for the simulator."""
    description: dict[str, Any] = dict(model.shape_summary())
    blocks = getattr(optimizer, "blocks", None)
    if blocks is not None:
        description["blocks"] = {b.id: list(b.shape) for b in blocks if b.is_matrix}
    return description


def execution_config(
    config: RunConfig,
    recorder: Recorder,
    device: torch.device,
    spill: Any = None,
    dist: DistContext | None = None,
) -> ExecutionConfig:
    from asteria_bench.config import parse_bytes
    from runtime.policies.placement import parse_placement
    from runtime.policies.staleness import parse_staleness
    from runtime.tiers import link_of

    r = config.runtime
    staleness = parse_staleness(r.staleness)
    if dist is not None and r.batched:  # a group job has no single owner; shards are per rank
        raise UserError("--batched: not under torchrun yet (owners are chosen per block)")
    if dist is not None and r.parallel == "fsdp2":
        dist = None  # each rank updates its own rows: nothing for the ranks to agree on
    if dist is not None:
        try:
            check_staleness_for_ranks(staleness.name)
        except ValueError as exc:
            raise UserError(f"--staleness: {exc}") from None
    stagger = staleness.asynchronous if r.stagger is None else r.stagger
    tiered = r.placement != "device" or r.device_budget is not None or spill is not None
    return ExecutionConfig(
        staleness=staleness,
        workers=r.workers,
        root_device=r.root_device,
        stagger=stagger,
        batched=r.batched,
        compile=r.compile,
        recorder=recorder,
        placement=parse_placement(r.placement, link=link_of(device)) if tiered else None,
        device_budget_bytes=None
        if r.device_budget is None
        else parse_bytes(r.device_budget, "--device-budget"),
        host_budget_bytes=None
        if r.host_budget is None
        else parse_bytes(r.host_budget, "--host-budget"),
        spill=spill,
        parallel=None
        if dist is None
        else ParallelConfig(
            dist,
            r.update_mode,
            r.inter_node_staleness,
            links=owner_links_of(r, dist.topology.local_size),
        ),
    )


def _resume(
    manager: CheckpointManager,
    saved: dict[str, Stateful],
    rank_local: set[str],
    position: LoopPosition,
    folder: Path,
) -> int:
    """Load the newest good checkpoint; the first step to run."""
    from runtime.checkpoint import CheckpointError

    try:
        info = manager.load_latest(saved, rank_local)
    except CheckpointError as exc:
        raise UserError(f"--resume: {exc}") from None
    if info is None:
        raise UserError(f"--resume: {folder} holds no checkpoint to resume from")
    return position.step + 1


def _close_spill(spill: Any, folder: Any) -> None:
    """Remove the run's spill files: only once workers are joined and checkpoints written."""
    if spill is not None:
        spill.close()
    if folder is not None:
        folder.close()


def _stop_agreed(stop: StopRequest, dist: DistContext | None) -> bool:
    """Whether any rank was asked to stop: every rank checkpoints the same step."""
    if dist is None:
        return stop.requested
    import torch.distributed as torch_dist

    device = collective_device(dist.backend)
    flag = torch.tensor([1 if stop.requested else 0], dtype=torch.int32, device=device)
    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
    return bool(flag.item())


def train(
    config: RunConfig,
    *,
    progress: ProgressCallback | None = None,
    dist: DistContext | None = None,
    recorder: Recorder | None = None,
    stream: TraceStream | None = None,
    started: Callable[[TrainStart], None] | None = None,
    checkpoints: CheckpointPlan | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Run the configured training job and return its metrics and trace.

    With a ``stream`` the trace goes to disk every few steps (``traces.stream``)
    and only the last steps' spans stay in ``result.recorder``; ``started`` is
    called once the optimizer is built (the stream's metadata).

    Under torchrun (``dist``) the model is wrapped in DDP and every rank takes
    its slice of one global batch (``batch_size`` per rank), drawn from one
    seeded generator: the same data a single process with the whole batch sees.

    With ``checkpoints`` the run saves every ``checkpoints.every`` steps and,
    when ``stop`` has noted SIGTERM / Ctrl-C, once more before raising
    ``Interrupted``; with ``checkpoints.resume`` it first loads the newest
    good checkpoint and continues after its step, bitwise as if never stopped.
    """
    t = config.train
    if t.torch_threads is not None:
        torch.set_num_threads(t.torch_threads)
    device = resolve_device(t.device)
    if dist is not None:
        device = dist.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    dataset = load_dataset(config)
    torch.manual_seed(t.seed)
    m = config.model
    shape = GPTConfig(
        context=m.context, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout
    )
    try:
        model = GPT(shape)
        model.to(device)
    except (RuntimeError, MemoryError) as exc:  # the allocator's "can't allocate", CUDA OOM
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--n-layer/--n-embd: a GPT of {m.n_layer} layers x width {m.n_embd} does not fit in"
            f" {device.type} memory ({first[:160]})"
        ) from None
    recorder = recorder if recorder is not None else Recorder(enabled=True)
    net: torch.nn.Module = model
    current_step = [0]  # the step whose gradients DDP is reducing, for their spans
    fsdp = dist is not None and config.runtime.parallel == "fsdp2"
    if fsdp:  # every rank holds and updates its rows of every parameter
        from runtime.distributed.fsdp import FsdpUnavailable, shard_model

        try:
            shard_model(model, model.blocks, device.type)
        except FsdpUnavailable as exc:
            raise UserError(f"--parallel: {exc}") from None
    elif dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        from runtime.distributed.gradients import trace_gradient_allreduce

        trace_gradient_allreduce(net, recorder, lambda: current_step[0])
    spill = None
    spill_folder = None
    if config.runtime.spill_dir is not None:
        from runtime.spill import SpillDirectory, SpillError, SpillStore

        try:
            # With a stop request the job removes the spill files itself, after
            # the checkpoint that still needs them (not from the signal handler).
            folder = SpillDirectory(config.runtime.spill_dir, handle_signals=stop is None)
            spill = SpillStore(folder, recorder=recorder)
            spill_folder = folder
            for gone in folder.reclaimed:  # left by a run that was killed
                now = recorder.clock()
                recorder.add_span(
                    "spill_reclaimed",
                    Category.EVENT,
                    now,
                    now,
                    nbytes=gone.nbytes,
                    detail=f"{gone.path.name} of pid {gone.owner_pid}",
                )
        except SpillError as exc:
            raise UserError(f"--spill-dir: {exc}") from None
    execution = execution_config(config, recorder, device, spill, dist)
    hp = resolved_optimizer(config.optim)
    from runtime.tiers import BudgetError, DeviceOutOfMemory

    groups = optimizer_parameter_groups(config.optim.name, model, hp["weight_decay"])
    shards: list[Any] = []
    if fsdp:
        from runtime.distributed.fsdp import attach, local_groups

        try:
            groups, shards = local_groups(groups)
        except ValueError as exc:
            raise UserError(f"--parallel: {exc}") from None
    try:
        optimizer = build_optimizer(config.optim.name, groups, hp, execution)
        if shards:
            attach(optimizer, shards)
    except BudgetError as exc:
        _close_spill(spill, spill_folder)
        raise UserError(f"--device-budget: {exc}") from None
    except ValueError as exc:  # a hyperparameter the optimizer refuses that validate() let by
        _close_spill(spill, spill_folder)
        raise UserError(f"--optimizer {config.optim.name}: {exc}") from None
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    policies = (
        execution.describe()
        if config.optim.name not in BASELINES
        else {"placement": "device", "staleness": "none"}
    )
    if fsdp and dist is not None:
        policies = {**policies, "parallel": "fsdp2", "world_size": str(dist.world_size)}
    if started is not None:
        started(
            TrainStart(
                model_description(model, optimizer),
                hp,
                policies,
                str(device),
                execution.stagger,
                torch.get_num_threads(),
            )
        )
    tiered_store = execution.placement is not None and config.optim.name not in BASELINES
    generator = torch.Generator().manual_seed(t.seed)
    eval_set = dataset.eval_batches(t.batch_size, m.context, t.eval_batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    from runtime.optim.base import BlockedOptimizer
    from runtime.telemetry import TelemetrySampler

    def outer_optimizer_span(step: int) -> Any:
        # Our optimizers record their own optimizer_step span; others get one here.
        if isinstance(optimizer, BlockedOptimizer):
            return contextlib.nullcontext()
        return recorder.span("optimizer_step", Category.OPTIMIZER, step=step)

    def training_step(step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Forward, backward and the optimizer step, timed; the loss and the optimizer's ns."""
        with recorder.span("step", Category.STEP, step=step):
            with recorder.span("forward", Category.COMPUTE, step=step):
                _, loss = net(x, y)
                assert loss is not None
                sync()
            with recorder.span("backward", Category.COMPUTE, step=step):
                loss.backward()
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                sync()
            opt_start = time.perf_counter_ns()
            with outer_optimizer_span(step):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            return loss, time.perf_counter_ns() - opt_start

    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)

    def global_mean(value: torch.Tensor) -> torch.Tensor:
        """The loss over the global batch: every rank's mean, averaged (for the metrics)."""
        import torch.distributed as torch_dist

        total = value.clone()
        torch_dist.all_reduce(total)
        return total / world

    position = LoopPosition(generator, recorder, stream)
    saved: dict[str, Stateful] = {"model": model, "optimizer": optimizer, "loop": position}
    # Optimizer state differs between ranks when each updates its own blocks (sharded) or
    # its own rows (FSDP2): saved per rank. A replicated optimizer is identical everywhere.
    own_state = config.runtime.update_mode == "sharded" or config.runtime.parallel == "fsdp2"
    rank_local = {"loop", "optimizer"} if dist is not None and own_state else {"loop"}
    manager = None if checkpoints is None else checkpoints.manager(rank, world)
    first_step = 1
    if manager is not None and checkpoints is not None and checkpoints.resume:
        started_ns = recorder.clock()
        first_step = _resume(manager, saved, rank_local, position, checkpoints.folder)
        took_ns = recorder.clock() - started_ns
        offset_clock(recorder, position)  # the trace's clock goes on from the checkpoint's
        now = recorder.clock()
        recorder.add_span("resume", Category.IO, now - took_ns, now, step=first_step - 1)

    def checkpoint(step: int) -> Path | None:
        assert manager is not None
        with recorder.span("checkpoint", Category.IO, step=step):
            info = manager.save(step, saved, rank_local)
        return None if info is None else info.path

    metrics: list[StepMetrics] = []
    main_track = threading.current_thread().name
    stopped: str | None = None
    sampler = TelemetrySampler(recorder, gpu=device.type == "cuda")
    try:
        for step in range(first_step, t.steps + 1):
            scale = lr_multiplier(step - 1, config)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * scale
            x, y = dataset.batch("train", t.batch_size * world, m.context, generator)
            if dist is not None:
                x, y = (
                    x[rank * t.batch_size : (rank + 1) * t.batch_size],
                    y[rank * t.batch_size : (rank + 1) * t.batch_size],
                )
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            first_span = len(recorder.spans)
            current_step[0] = step
            try:
                loss, opt_ns = training_step(step, x, y)
                if dist is not None:
                    loss = global_mean(loss.detach())
                    dist.heartbeat(step)
            except DeviceOutOfMemory as exc:
                stopped = str(exc)
                break
            except torch.cuda.OutOfMemoryError as exc:  # a RuntimeError: caught before those
                reason = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
                placement = config.runtime.placement
                stopped = f"out of device memory in step {step} (placement {placement}): {reason}"
                break
            except RuntimeError as exc:
                if dist is None or not is_collective_failure(exc):
                    raise
                raise dist.explain_failure(exc) from None
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                stopped = f"loss became {loss_value} at step {step}"
                break
            spans = recorder.spans
            val_loss = math.nan
            if step % t.eval_every == 0 or step == t.steps:
                with recorder.span("eval", Category.EVAL, step=step):
                    val_loss = evaluate(model, eval_set, device)
                recorder.counter("val_loss", val_loss, step=step)
            state_bytes = optimizer_state_bytes(optimizer)
            recorder.counter("loss", loss_value, step=step)
            recorder.counter("lr", optimizer.param_groups[0]["lr"], step=step)
            if not tiered_store:  # a tiered store records bytes per tier itself
                recorder.counter("state_bytes", state_bytes, step=step, key=Tier.DEVICE.value)
            if step % t.telemetry_every == 0 or step in (1, t.steps):
                sampler.sample(step)
            row = StepMetrics(
                step=step,
                loss=loss_value,
                val_loss=val_loss,
                lr=optimizer.param_groups[0]["lr"],
                step_time_ns=_sum_spans(spans, first_span, name="step"),
                forward_ns=_sum_spans(spans, first_span, name="forward"),
                backward_ns=_sum_spans(spans, first_span, name="backward"),
                optimizer_ns=opt_ns,
                refresh_ns=_sum_spans(
                    spans, first_span, category=Category.REFRESH, track=main_track
                ),
                wait_ns=_sum_spans(spans, first_span, category=Category.WAIT, track=main_track),
                transfer_ns=_sum_spans(
                    spans, first_span, category=Category.TRANSFER, track=main_track
                ),
                optimizer_state_bytes=state_bytes,
            )
            metrics.append(row)
            position.step = step
            if stream is not None:
                stream.step_done(recorder, step)
            if progress is not None:
                progress(row)
            if manager is None or checkpoints is None:
                continue
            if stop is not None and _stop_agreed(stop, dist):
                raise Interrupted(stop.signal_name or "signal", step, checkpoint(step))
            if checkpoints.every and (step % checkpoints.every == 0 or step == t.steps):
                checkpoint(step)  # the last one holds the trained model
    finally:
        sampler.close()
        close = getattr(optimizer, "close", None)
        if close is not None:
            close()
        _close_spill(spill, spill_folder)
    return TrainResult(
        metrics=metrics,
        recorder=recorder,
        model_shape=model_description(model, optimizer),
        hyperparameters=hp,
        policies=policies,
        device=str(device),
        stopped_early=stopped,
        staleness_schedule=getattr(execution.staleness, "choices", None),
        stagger=execution.stagger,
        torch_threads=torch.get_num_threads(),
    )
