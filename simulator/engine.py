"""The discrete-event model of a training run (SimPy; time unit: integer nanoseconds).

Actors, each one generator that reads like what it models:

- ``training``: the training thread. Per step: forward, backward, then the
  optimizer walks its blocks in the runtime's order, installing due refreshes
  (waiting for late ones), running the hot path, and submitting refresh jobs
  when they come due, inline under a synchronous policy or to the worker pool.
- ``worker``: a refresh worker taking jobs from ``host_workers`` (a queue).
  With ``jobs_on_device`` the job's kernels run on the training device, which
  is a priority resource (``device``): training kernels go first, a job runs
  in slices between them, so device-side refreshes cost training time only
  where they actually occupy the device.

With ``tiering`` the optimizer state is placed by a runtime placement policy
and moved over the links (``simulator.tiering``, ``simulator.links``); without
it every slot rests on the device and nothing is copied. The gradient
all-reduce holds the network links (``Links.allreduce``) after backward.

The staleness and placement policies are the runtime's own objects
(``runtime.policies``): the same ``install_step`` and ``place`` decide here what
they decide on real tensors. Each block's work follows its optimizer's plan
(``runtime.plan.spec``): the phases in the runtime's order and the same due
rule. The hot path is one op, timed where the preconditioning runs (the
statistics phase adds no op of its own). The simulated run is written with a
``traces.Recorder`` whose clock is SimPy's, so it is a trace in the same schema
as a measured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from runtime.plan.spec import Phase
from runtime.policies.staleness import StalenessPolicy, Sync
from simulator.links import LinkBusy, Links
from simulator.tiering import TRAINING_TRACK, StaticStaging, TieredState, Tiering
from simulator.workload import BlockCost, WorkloadModel
from traces.recorder import Recorder
from traces.schema import Category


@dataclass(frozen=True)
class SimConfig:
    steps: int
    staleness: StalenessPolicy = field(default_factory=Sync)
    workers: int = 1
    stagger: bool = False
    worker_speed: float = 1.0  # >1: jobs run faster than measured (e.g. more cores per job)
    jobs_on_device: bool = False  # refresh jobs share the training device (a low-priority stream)
    device_slice_ns: int = 2_000_000  # kernel granularity at which training preempts a job
    worker_interference: float = 0.0  # host jobs slow training ops by this fraction while they run
    tiering: Tiering | None = None  # None: all optimizer state rests on the device
    overlap: bool = True  # False: copies on the training thread where needed (no prefetch)


@dataclass
class SimResult:
    step_ns: np.ndarray  # per step, simulated
    compute_ns: np.ndarray  # forward + backward
    optimizer_ns: np.ndarray
    wait_ns: np.ndarray  # waiting for refreshes
    recorder: Recorder
    transfer_wait_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    link_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    peak_device_state_bytes: int = 0  # tiered slots only, resting plus staged (0: untiered)
    link_busy: LinkBusy = field(default_factory=LinkBusy)


@dataclass
class _Job:
    block: BlockCost
    version: int
    install_step: int
    done: simpy.Event
    duration_ns: int


def simulate(
    model: WorkloadModel, config: SimConfig, recorder: Recorder | None = None
) -> SimResult:
    env = simpy.Environment()
    rec = recorder if recorder is not None else Recorder(clock=lambda: int(env.now))
    if recorder is not None:
        rec.clock = lambda: int(env.now)
    policy = config.staleness
    phases = model.spec.phases
    schedules = model.schedules(config.stagger)
    # A block with no work on this rank (another rank owns it) adds only zero-length
    # events; its ordinal still sets the others' staggered schedules.
    working = [(k, b) for k, b in enumerate(model.blocks) if has_work(b)]
    host_workers: simpy.Store = simpy.Store(env)
    device = simpy.PriorityResource(env, capacity=1)
    contended = config.jobs_on_device and policy.asynchronous
    running_jobs = [0]  # host worker jobs in progress (they share cores and memory bandwidth)
    pending: dict[str, list[_Job]] = {b.id: [] for b in model.blocks}
    steps = config.steps
    step_ns = np.zeros(steps, dtype=np.int64)
    compute_ns = np.zeros(steps, dtype=np.int64)
    optimizer_ns = np.zeros(steps, dtype=np.int64)
    wait_ns = np.zeros(steps, dtype=np.int64)
    last_step_ns = [0.0]
    links = Links(env, config.tiering.rates if config.tiering else None, rec)
    tiered = (
        TieredState(
            env,
            config.tiering,
            [(b.id, b.slots) for b in model.blocks],
            links,
            rec,
            overlap=config.overlap,
            steps=steps,
        )
        if config.tiering is not None
        else None
    )

    def timed(
        name: str,
        category: Category,
        duration: int,
        step: int,
        block: str | None = None,
        detail: str | None = None,
    ) -> Any:
        start = int(env.now)
        if running_jobs[0] and not contended:
            duration = int(duration * (1.0 + config.worker_interference))
        if contended and duration > 0:
            with device.request(priority=0) as held:
                yield held
                yield env.timeout(duration)
        else:
            yield env.timeout(duration)
        rec.add_span(
            name,
            category,
            start,
            int(env.now),
            step=step,
            block=block,
            track=TRAINING_TRACK,
            detail=detail,
        )

    def worker(index: int) -> Any:
        track = f"refresh-worker_{index}"
        while True:
            job: _Job = yield host_workers.get()
            start = int(env.now)
            if contended:
                left = job.duration_ns
                while left > 0:
                    piece = min(left, config.device_slice_ns)
                    with device.request(priority=1) as held:
                        yield held
                        yield env.timeout(piece)
                    left -= piece
            else:
                running_jobs[0] += 1
                yield env.timeout(job.duration_ns)
                running_jobs[0] -= 1
            rec.add_span(
                "refresh",
                Category.REFRESH,
                start,
                int(env.now),
                block=job.block.id,
                detail=f"v{job.version}",
                track=track,
            )
            observe = getattr(policy, "observe", None)
            if observe is not None:
                observe(job.block.id, job.duration_ns, last_step_ns[0])
            job.done.succeed()

    def submit(block: BlockCost, version: int, step: int) -> Any:
        install = policy.install_step(block.id, version, model.reference_tau)
        done = env.event()
        if policy.asynchronous:
            yield from timed(
                "snapshot", Category.REFRESH, block.snapshot_ns, step, block.id, f"v{version}"
            )
            duration = int(block.refresh_ns / config.worker_speed)
            pending[block.id].append(_Job(block, version, install, done, duration))
            yield host_workers.put(pending[block.id][-1])
        else:
            yield from timed(
                "refresh", Category.REFRESH, block.refresh_ns, step, block.id, f"v{version}"
            )
            done.succeed()
            pending[block.id].append(_Job(block, version, install, done, block.refresh_ns))

    def install_due(block: BlockCost, t: int, step: int, index: int) -> Any:
        """Install the refreshes due at ``t`` (waiting for late ones); returns how many."""
        queue = pending[block.id]
        installed = 0
        while queue and queue[0].install_step <= t:
            job = queue.pop(0)
            if not job.done.triggered:
                start = int(env.now)
                yield job.done
                wait_ns[index] += int(env.now) - start
                rec.add_span(
                    "wait_refresh",
                    Category.WAIT,
                    start,
                    int(env.now),
                    step=step,
                    block=block.id,
                    track=TRAINING_TRACK,
                )
            yield from timed(
                "install", Category.REFRESH, block.install_ns, step, block.id, f"v{job.version}"
            )
            rec.counter("staleness", t - job.version, step=step, key=block.id)
            installed += 1
        return installed

    def update(block: BlockCost, step: int, index: int, installed: int) -> Any:
        """The block's hot path, with its slots staged, streamed or written back per placement."""
        hot_ns = block.hot_ns
        if tiered is not None:
            yield from tiered.before_update(block.id, step, index)
            hot_ns = tiered.update_ns(block.id, hot_ns, index)
        yield from timed("precondition", Category.OPTIMIZER, hot_ns, step, block.id)
        if tiered is not None:
            yield from tiered.after_update(block.id, step, index, installed > 0)

    def allreduce(step: int) -> Any:
        if model.step.allreduce_ns <= 0:
            return
        start = int(env.now)
        yield from links.allreduce(
            model.step.allreduce_intra_node_ns, model.step.allreduce_inter_node_ns
        )
        rec.add_span(
            "allreduce", Category.COLLECTIVE, start, int(env.now), step=step, track=TRAINING_TRACK
        )

    def training() -> Any:
        updates = 0
        for index in range(steps):
            step = index + 1
            begin = int(env.now)
            if step == 1 and model.step.first_step_ns and model.skips_first_call:
                yield from timed("step", Category.STEP, model.step.first_step_ns, step)
                if tiered is not None:
                    yield from tiered.boundary(step + 1, index)
                step_ns[index] = int(env.now) - begin
                continue
            yield from timed("forward", Category.COMPUTE, model.step.forward_ns, step)
            if tiered is not None:
                tiered.start_prefetch(step, index)
            yield from timed("backward", Category.COMPUTE, model.step.backward_ns, step)
            compute_ns[index] = model.step.forward_ns + model.step.backward_ns
            if tiered is not None and not config.overlap:
                staging = int(env.now)
                yield from tiered.stage_all(step, index)
                compute_ns[index] += int(env.now) - staging  # the hooks' copies, in backward
            yield from allreduce(step)
            opt_begin = int(env.now)
            updates += 1
            t = updates
            for ordinal, block in working:
                installed = 0
                for phase in phases:
                    if phase is Phase.INSTALL:
                        installed = yield from install_due(block, t, step, index)
                    elif phase is Phase.PRECONDITION:
                        yield from update(block, step, index, installed)
                    elif phase is Phase.REFRESH and schedules[ordinal].due(t):
                        yield from submit(block, t, step)
            yield env.timeout(model.step.optimizer_other_ns)
            if tiered is not None:  # the runtime's step boundary, inside optimizer.step()
                yield from tiered.boundary(step + 1, index)
            rec.add_span(
                "optimizer_step",
                Category.OPTIMIZER,
                opt_begin,
                int(env.now),
                step=step,
                track=TRAINING_TRACK,
            )
            optimizer_ns[index] = int(env.now) - opt_begin
            yield env.timeout(model.step.loop_other_ns)
            rec.add_span(
                "step", Category.STEP, begin, int(env.now), step=step, track=TRAINING_TRACK
            )
            step_ns[index] = int(env.now) - begin
            last_step_ns[0] = float(step_ns[index])
            links.record_busy(step)

    if policy.asynchronous:
        for i in range(config.workers):
            env.process(worker(i))
    done = env.process(training())
    env.run(until=done)
    if tiered is None:
        return SimResult(
            step_ns,
            compute_ns,
            optimizer_ns,
            wait_ns,
            rec,
            transfer_wait_ns=np.zeros(steps, dtype=np.int64),
            link_bytes=np.zeros(steps, dtype=np.int64),
            link_busy=links.busy,
        )
    return SimResult(
        step_ns,
        compute_ns,
        optimizer_ns,
        wait_ns,
        rec,
        transfer_wait_ns=tiered.transfer_wait_ns,
        link_bytes=tiered.link_bytes,
        peak_device_state_bytes=tiered.peak_device_bytes,
        link_busy=links.busy,
    )


def has_work(block: BlockCost) -> bool:
    return bool(
        block.hot_ns or block.refresh_ns or block.install_ns or block.snapshot_ns or block.slots
    )


def due_matrix(model: WorkloadModel, t: np.ndarray, stagger: bool) -> np.ndarray:
    """due[i, k]: block k's refresh is due at update count t[i], by the plan's schedules.

    ``RefreshSchedule.due`` vectorized over steps; t < 1 (the skipped first call) is never due.
    """
    schedules = model.schedules(stagger)
    frequency = np.array([s.frequency for s in schedules], dtype=np.int64)
    offset = np.array([s.offset for s in schedules], dtype=np.int64)
    first = np.array([s.first for s in schedules], dtype=np.int64)
    tt = t[:, None]
    periodic = (tt % frequency[None, :]) == offset[None, :]
    due = (tt == first[None, :]) | ((tt > first[None, :]) & periodic)
    return due & (tt >= 1)


def fast_sync_step_ns(
    model: WorkloadModel,
    steps: int,
    stagger: bool = False,
    staging: StaticStaging | None = None,
) -> np.ndarray:
    """Vectorized step times of a synchronous run: the event model's cross-check.

    Under a synchronous policy nothing overlaps, so a step is the sum of its
    parts; refresh and install costs land on the steps the due rule picks.
    ``staging`` (``tiering.static_staging``) adds a static placement's copies,
    made on the training thread (``SimConfig.overlap=False``).
    """
    index = np.arange(steps)
    step_numbers = index + 1
    offset = 1 if (model.skips_first_call and model.step.first_step_ns) else 0
    t = step_numbers - offset
    base = (
        model.step.forward_ns
        + model.step.backward_ns
        + model.step.optimizer_other_ns
        + model.step.loop_other_ns
        + model.step.allreduce_ns
        + model.hot_ns
        + (staging.per_step_ns if staging is not None else 0)
    )
    out = np.full(steps, base, dtype=np.int64)
    refresh = np.array([b.refresh_ns for b in model.blocks], dtype=np.int64)
    install = np.array([b.install_ns for b in model.blocks], dtype=np.int64)
    due = due_matrix(model, t, stagger)
    out += due.astype(np.int64) @ refresh
    installed = np.zeros_like(due)
    tau = model.reference_tau
    if tau == 0:
        installed = due
    else:
        installed[tau:] = due[:-tau]
        installed &= t[:, None] >= 1
    out += installed.astype(np.int64) @ install
    if staging is not None:
        out += installed.astype(np.int64) @ staging.install_ns
    if offset:
        out[0] = model.step.first_step_ns
    return out
