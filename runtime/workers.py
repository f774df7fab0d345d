"""Refresh workers: host threads (or a low-priority CUDA stream) for amortized jobs.

Jobs are pure functions of snapshotted tensors (``runtime.matrix_functions``
via the optimizers' ``compute_*`` functions), so a worker shares nothing with
the training thread but the inputs it was handed and the result it returns.
torch releases the GIL inside its kernels, so threads give real parallelism
for eigh / QR / matmul; a process pool would add a copy of every snapshot.

Each job leaves two spans on its worker's track: ``queued`` (from submission
to start) and ``refresh`` (the computation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from traces.recorder import Recorder
from traces.schema import Category


@dataclass(frozen=True)
class JobOutcome:
    result: Any
    compute_ns: int


class RefreshWorkers:
    """A fixed pool of refresh threads; ``close`` joins them (also on errors)."""

    def __init__(
        self,
        workers: int,
        recorder: Recorder,
        *,
        cuda_stream_priority: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._recorder = recorder
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="refresh-worker"
        )
        self._streams: dict[int, Any] = {}
        self._stream_priority = cuda_stream_priority
        self._lock = threading.Lock()
        self._closed = False

    def _stream(self) -> Any:
        """One low-priority CUDA stream per worker thread (device mode only)."""
        ident = threading.get_ident()
        with self._lock:
            if ident not in self._streams:
                self._streams[ident] = torch.cuda.Stream(priority=self._stream_priority or 0)
            return self._streams[ident]

    def submit(
        self,
        compute: Callable[[Any], Any],
        inputs: Any,
        *,
        block: str,
        version: int,
        step: int,
        ready_event: Any = None,
    ) -> Future[JobOutcome]:
        if self._closed:
            raise RuntimeError("refresh workers are closed")
        submitted = self._recorder.clock()

        def job() -> JobOutcome:
            recorder = self._recorder
            start = recorder.clock()
            track = threading.current_thread().name
            recorder.add_span(
                "queued",
                Category.REFRESH,
                submitted,
                start,
                step=step,
                block=block,
                detail=f"v{version}",
                track=track,
            )
            t0 = time.perf_counter_ns()
            if self._stream_priority is not None:
                stream = self._stream()
                if ready_event is not None:
                    stream.wait_event(ready_event)
                with torch.cuda.stream(stream):
                    result = compute(inputs)
                stream.synchronize()
            else:
                result = compute(inputs)
            compute_ns = time.perf_counter_ns() - t0
            recorder.add_span(
                "refresh",
                Category.REFRESH,
                start,
                recorder.clock(),
                step=step,
                block=block,
                detail=f"v{version}",
                track=track,
            )
            return JobOutcome(result, compute_ns)

        return self._executor.submit(job)

    def close(self) -> None:
        """Cancel queued jobs and join the threads; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True, cancel_futures=True)
