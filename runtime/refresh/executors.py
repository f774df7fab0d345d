"""Who computes a refresh job, and where: inline, on host threads, or on a CUDA stream.

An executor turns a ``RefreshJob`` (a block, its version, its inputs and the
pure function that turns them into a result) into a ``ResultHandle``. It does
not decide when the result is installed (``runtime.refresh.queue``) nor how
it reaches other ranks (``runtime.refresh.publish``).

- ``InlineExecutor`` computes on the calling thread, at once: the synchronous
  reference (a ``refresh`` span on the training track).
- ``ThreadExecutor`` snapshots the inputs (cloned, to the host when roots are
  computed there) and hands them to a fixed pool of threads. torch releases
  the GIL inside its kernels, so threads give real parallelism for eigh, QR
  and matmul; a process pool would add a copy of every snapshot. Each job
  leaves a ``queued`` and a ``refresh`` span on its worker's track.
- ``CudaStreamExecutor`` is a thread pool whose jobs run their kernels on a
  low-priority CUDA stream per thread, after the snapshot's copies (an event).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from traces.recorder import Recorder
from traces.schema import Category


@dataclass(frozen=True)
class RefreshJob:
    """``compute(inputs)`` for ``block`` at ``version``, submitted during optimizer step ``step``.

    ``install_step`` is when its result is installed (fixed at submission);
    ``inline`` is whether it is computed at once on the submitting thread.
    """

    block: str
    version: int
    step: int
    compute: Callable[[Any], Any]
    inputs: Any
    install_step: int = 0
    inline: bool = False


@dataclass(frozen=True)
class JobOutcome:
    result: Any
    compute_ns: int


class RefreshError(RuntimeError):
    """A refresh job raised where it ran; re-raised on the training thread."""


class ResultHandle(Protocol):
    """A result that is, or will be, available: ``outcome`` waits for it."""

    def done(self) -> bool: ...
    def outcome(self) -> JobOutcome: ...


class Finished:
    """A handle whose outcome is already known."""

    __slots__ = ("_outcome",)

    def __init__(self, outcome: JobOutcome) -> None:
        self._outcome = outcome

    def done(self) -> bool:
        return True

    def outcome(self) -> JobOutcome:
        return self._outcome


class Failed:
    """A handle on a job that raised where it ran (inline): ``outcome`` raises its error."""

    __slots__ = ("_error",)

    def __init__(self, error: RefreshError) -> None:
        self._error = error

    def done(self) -> bool:
        return True

    def outcome(self) -> JobOutcome:
        raise self._error


class FutureHandle:
    """A handle on a job running in a thread pool; a worker's exception names the job."""

    __slots__ = ("_future", "_job")

    def __init__(self, future: Future[JobOutcome], job: RefreshJob) -> None:
        self._future = future
        self._job = job

    def done(self) -> bool:
        return self._future.done()

    def outcome(self) -> JobOutcome:
        try:
            return self._future.result()
        except Exception as exc:
            raise RefreshError(
                f"refresh of block {self._job.block} version {self._job.version} failed on a"
                f" worker: {type(exc).__name__}: {exc}"
            ) from exc


class Executor(Protocol):
    """Computes refresh jobs; ``close`` joins whatever it started (also on errors)."""

    @property
    def asynchronous(self) -> bool:
        """Whether ``run`` may return before the result exists."""
        ...

    def run(self, job: RefreshJob) -> ResultHandle: ...
    def close(self) -> None: ...


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor field of a dataclass (None and scalars kept)."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = fn(value)
    return dataclasses.replace(obj, **changes)


class InlineExecutor:
    """The synchronous reference: compute on the calling thread, now."""

    asynchronous = False

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def run(self, job: RefreshJob) -> ResultHandle:
        t0 = time.perf_counter_ns()
        try:
            with self._recorder.span(
                "refresh",
                Category.REFRESH,
                step=job.step,
                block=job.block,
                detail=f"v{job.version}",
            ):
                result = job.compute(job.inputs)
        except Exception as exc:  # the install queue rejects it, as a worker's failure
            return Failed(
                RefreshError(
                    f"refresh of block {job.block} version {job.version} failed:"
                    f" {type(exc).__name__}: {exc}"
                )
            )
        return Finished(JobOutcome(result, time.perf_counter_ns() - t0))

    def close(self) -> None:
        return None


class ThreadExecutor:
    """A fixed pool of refresh threads computing snapshots of the inputs.

    ``snapshot_device`` is where the snapshot goes: ``None`` keeps each
    tensor's own device, ``torch.device("cpu")`` computes on the host even
    when training on a GPU.
    """

    asynchronous = True

    def __init__(
        self, workers: int, recorder: Recorder, *, snapshot_device: torch.device | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._recorder = recorder
        self._snapshot_device = snapshot_device
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="refresh-worker"
        )
        self._closed = False

    def run(self, job: RefreshJob) -> ResultHandle:
        if self._closed:
            raise RuntimeError("refresh workers are closed")
        with self._recorder.span(
            "snapshot", Category.REFRESH, step=job.step, block=job.block, detail=f"v{job.version}"
        ):
            target = self._snapshot_device
            snapshot = map_tensors(
                job.inputs,
                lambda t: t.detach().to(target if target is not None else t.device, copy=True),
            )
            ready = _copies_done_event(snapshot)
        submitted = self._recorder.clock()
        copy = dataclasses.replace(job, inputs=snapshot)
        future = self._executor.submit(self._job, copy, submitted, ready)
        return FutureHandle(future, job)

    def _job(self, job: RefreshJob, submitted: int, ready: Any) -> JobOutcome:
        recorder = self._recorder
        start = recorder.clock()
        track = threading.current_thread().name
        detail = f"v{job.version}"
        recorder.add_span(
            "queued",
            Category.REFRESH,
            submitted,
            start,
            step=job.step,
            block=job.block,
            detail=detail,
            track=track,
        )
        t0 = time.perf_counter_ns()
        result = self._compute(job, ready)
        compute_ns = time.perf_counter_ns() - t0
        recorder.add_span(
            "refresh",
            Category.REFRESH,
            start,
            recorder.clock(),
            step=job.step,
            block=job.block,
            detail=detail,
            track=track,
        )
        return JobOutcome(result, compute_ns)

    def _compute(self, job: RefreshJob, ready: Any) -> Any:
        return job.compute(job.inputs)

    def close(self) -> None:
        """Cancel queued jobs and join the threads; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True, cancel_futures=True)


class CudaStreamExecutor(ThreadExecutor):
    """Threads whose jobs run on a low-priority CUDA stream each (``root_device='device'``).

    Made on the training thread: its current device and stream are where the
    results are used. A worker thread starts on device 0 whatever the training
    thread chose, so each stream is made on that device explicitly.
    """

    def __init__(self, workers: int, recorder: Recorder, *, priority: int) -> None:
        super().__init__(workers, recorder, snapshot_device=None)
        self._priority = priority
        self._device = torch.cuda.current_device()
        self._consumer = torch.cuda.current_stream(self._device)
        self._streams: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _stream(self) -> Any:
        ident = threading.get_ident()
        with self._lock:
            if ident not in self._streams:
                self._streams[ident] = torch.cuda.Stream(self._device, priority=self._priority)
            return self._streams[ident]

    def _compute(self, job: RefreshJob, ready: Any) -> Any:
        stream = self._stream()
        if ready is not None:
            stream.wait_event(ready)
        with torch.cuda.stream(stream):
            result = job.compute(job.inputs)
        stream.synchronize()
        used_on(result, self._consumer)
        return result


def used_on(result: Any, stream: Any) -> None:
    """Tell the allocator that the result's CUDA tensors are used on ``stream`` too.

    They were allocated on a worker's stream, so once the training thread
    drops one (an install replaces a basis right after enqueuing the kernels
    that read it) its memory would go back to that worker's stream at once,
    and a job running there could write into it before those kernels ran.
    ``record_stream`` holds the memory until ``stream``'s work queued by then is done.
    A batched job's result is a list of per-block results.
    """
    if isinstance(result, (list, tuple)):
        for item in result:
            used_on(item, stream)
    elif isinstance(result, torch.Tensor):
        if result.is_cuda:
            result.record_stream(stream)
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        for f in dataclasses.fields(result):
            used_on(getattr(result, f.name), stream)


def _copies_done_event(snapshot: Any) -> Any:
    """A CUDA event after the snapshot's copies, when any tensor of it is on a GPU."""
    if not torch.cuda.is_available():
        return None
    if not any(isinstance(v, torch.Tensor) and v.is_cuda for v in vars(snapshot).values()):
        return None
    event = torch.cuda.Event()
    event.record()
    return event
