"""The refresh pipeline's three parts: executors, the local publisher, the install queue."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch

from runtime.execution import ExecutionConfig
from runtime.policies.staleness import Bounded, Sync, parse_staleness
from runtime.refresh import (
    InlineExecutor,
    InstallQueue,
    LocalPublisher,
    RefreshError,
    RefreshJob,
    RefreshPipeline,
    StalenessViolation,
    ThreadExecutor,
    build_pipeline,
)
from traces.recorder import Recorder

CPU = torch.device("cpu")


@dataclass
class Result:
    value: torch.Tensor | None = None


def inline_pipeline(policy: object = None, recorder: Recorder | None = None) -> RefreshPipeline:
    rec = recorder if recorder is not None else Recorder(enabled=False)
    staleness = Sync() if policy is None else policy
    return RefreshPipeline(InstallQueue(staleness, rec), InlineExecutor(rec), LocalPublisher())  # type: ignore[arg-type]


def test_sync_installs_at_reference_staleness() -> None:
    policy = Sync()
    assert policy.install_step("p0.r0.c0", 10, 0) == 10
    assert policy.install_step("p0.r0.c0", 10, 1) == 11
    assert parse_staleness(" SYNC ") == policy
    with pytest.raises(ValueError, match="unknown staleness"):
        parse_staleness("eventually")


def test_results_are_installed_exactly_at_their_step() -> None:
    recorder = Recorder()
    pipeline = inline_pipeline(recorder=recorder)
    pipeline.submit("b", 4, 1, lambda x: Result(x * 2), torch.tensor(3.0), step=4)
    assert pipeline.take_due("b", 4, CPU) == []
    (item,) = pipeline.take_due("b", 5, CPU)
    assert item.version == 4 and float(item.result.value) == 6.0
    assert pipeline.pending_count() == 0
    (span,) = [s for s in recorder.spans if s.name == "refresh"]
    assert span.block == "b" and span.detail == "v4" and span.step == 4


def test_a_missed_install_is_an_error() -> None:
    pipeline = inline_pipeline()
    pipeline.submit("b", 2, 1, lambda x: Result(x), torch.zeros(1), step=2)
    with pytest.raises(StalenessViolation, match="due at step 3"):
        pipeline.take_due("b", 5, CPU)


def test_a_policy_installing_before_its_version_is_refused_before_any_work() -> None:
    @dataclass(frozen=True)
    class Broken:
        name: str = "broken"
        asynchronous: bool = False

        def install_step(self, block: str, version: int, reference_tau: int) -> int:
            return version - 1

    calls = []
    pipeline = inline_pipeline(Broken())
    with pytest.raises(StalenessViolation, match="before it was computed"):
        pipeline.submit("b", 2, 1, lambda x: calls.append(x), torch.zeros(1), step=2)
    assert calls == []


def test_pending_results_round_trip_through_state_dict() -> None:
    pipeline = inline_pipeline()
    pipeline.submit("b", 7, 1, lambda x: Result(x + 1), torch.ones(2), step=7)
    saved = pipeline.state_dict()
    restored = inline_pipeline()
    restored.load_state_dict(saved, Result, {"b": CPU})
    (item,) = restored.take_due("b", 8, CPU)
    assert torch.equal(item.result.value, torch.full((2,), 2.0))


def test_thread_executor_computes_a_snapshot_not_the_live_tensor() -> None:
    release = threading.Event()
    executor = ThreadExecutor(1, Recorder(enabled=False), snapshot_device=CPU)
    live = torch.ones(3)

    def compute(x: Result) -> Result:
        release.wait(5)
        assert x.value is not None
        return Result(x.value.clone())

    try:
        handle = executor.run(RefreshJob("b", 1, 1, compute, Result(live)))
        live.add_(10)  # the training thread goes on writing its state
        release.set()
        assert torch.equal(handle.outcome().result.value, torch.ones(3))
    finally:
        executor.close()


def test_a_worker_exception_names_block_and_version() -> None:
    executor = ThreadExecutor(1, Recorder(enabled=False))

    def boom(_: object) -> Result:
        raise FloatingPointError("nan in factor")

    try:
        handle = executor.run(RefreshJob("p3.r0.c1", 12, 12, boom, Result(torch.zeros(1))))
        with pytest.raises(RefreshError, match=r"p3\.r0\.c1 version 12 .*nan in factor"):
            handle.outcome()
    finally:
        executor.close()


def test_late_result_is_waited_for_and_the_wait_recorded() -> None:
    recorder = Recorder()
    release = threading.Event()
    executor = ThreadExecutor(1, recorder)
    pipeline = RefreshPipeline(InstallQueue(Bounded(2), recorder), executor, LocalPublisher())

    def slow(x: Result) -> Result:
        release.wait(5)
        return Result(x.value)

    try:
        pipeline.submit("b", 3, 1, slow, Result(torch.ones(1)), step=3)
        assert pipeline.take_due("b", 4, CPU) == []
        threading.Timer(0.05, release.set).start()
        (item,) = pipeline.take_due("b", 5, CPU)
    finally:
        pipeline.close()
    assert item.version == 3
    waits = [s for s in recorder.spans if s.name == "wait_refresh"]
    assert len(waits) == 1 and waits[0].step == 5 and waits[0].block == "b"


def test_an_asynchronous_policy_needs_an_asynchronous_executor() -> None:
    rec = Recorder(enabled=False)
    with pytest.raises(ValueError, match="asynchronous executor"):
        RefreshPipeline(InstallQueue(Bounded(2), rec), InlineExecutor(rec), LocalPublisher())


def test_build_pipeline_picks_the_executor_the_config_names() -> None:
    rec = Recorder(enabled=False)
    sync = build_pipeline(ExecutionConfig(), rec, [CPU])
    assert isinstance(sync.executor, InlineExecutor)
    threads = build_pipeline(ExecutionConfig(staleness=Bounded(2), workers=3), rec, [CPU])
    try:
        assert isinstance(threads.executor, ThreadExecutor) and threads.executor.workers == 3
    finally:
        threads.close()
    with pytest.raises(ValueError, match="CUDA"):
        build_pipeline(ExecutionConfig(staleness=Bounded(2), root_device="device"), rec, [CPU])


class MarkedTensor(torch.Tensor):
    """Stands in for a CUDA tensor here: notes the streams it is recorded as used on."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    def record_stream(self, stream: object) -> None:  # type: ignore[override]
        self.__dict__.setdefault("streams", []).append(stream)


@dataclass
class TwoResults:
    on_gpu: torch.Tensor | None
    on_host: torch.Tensor | None
    count: int = 0


def test_cuda_stream_jobs_run_on_the_training_device_and_free_results_after_its_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker streams on the training thread's device; results recorded on its stream.

    No GPU here: ``torch.cuda``'s stream calls are replaced by ones that note
    what they were asked, and the result's device tensor by a ``MarkedTensor``.
    """
    import contextlib

    from runtime.refresh import CudaStreamExecutor

    made: list[tuple[object, int]] = []

    class FakeStream:
        def __init__(self, device: object = None, priority: int = 0) -> None:
            made.append((device, priority))

        def wait_event(self, event: object) -> None:
            raise AssertionError("no event: the snapshot is on the host")

        def synchronize(self) -> None:
            return None

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: f"stream of {device}")
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    on_gpu = torch.Tensor._make_subclass(MarkedTensor, torch.zeros(2))
    on_host = torch.zeros(2)
    executor = CudaStreamExecutor(1, Recorder(enabled=False), priority=0)
    try:
        job = RefreshJob("b", 1, 1, lambda x: TwoResults(on_gpu, on_host), Result(torch.ones(1)))
        result = executor.run(job).outcome().result
        batched = RefreshJob("g", 1, 1, lambda x: [TwoResults(on_gpu, None)], Result(None))
        assert executor.run(batched).outcome().result[0].on_gpu is on_gpu
    finally:
        executor.close()
    assert result.on_gpu is on_gpu and made == [(2, 0)]
    assert on_gpu.__dict__["streams"] == ["stream of 2"] * 2
    assert "streams" not in on_host.__dict__
