"""The streamed trace: chunks as the run goes, nothing lost or doubled, a killed run readable."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asteria_bench.config import RunConfig
from asteria_bench.train import train
from tests.samples import METADATA, TINY_RUN
from traces.io import CHUNKS_DIRNAME, TRACE_DIRNAME, TraceError, read_trace
from traces.recorder import Recorder
from traces.schema import Category, CounterSample, RunMetadata
from traces.stream import TraceStream, discard_chunks

ROOT = Path(__file__).resolve().parents[1]


def metadata() -> RunMetadata:
    return METADATA


def test_flushes_while_threads_record_lose_and_double_nothing(tmp_path: Path) -> None:
    recorder = Recorder()
    stream = TraceStream(tmp_path, every_steps=1)
    stream.begin(metadata())
    per_thread, threads = 3000, 4
    stop = threading.Event()

    def record(index: int) -> None:
        for i in range(per_thread):
            recorder.add_span("job", Category.REFRESH, i, i + 1, step=i, detail=f"{index}")
            recorder.counter("c", i, step=i, key=str(index))

    workers = [threading.Thread(target=record, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()

    def flusher() -> None:
        while not stop.is_set():
            stream.flush(recorder)

    flushing = threading.Thread(target=flusher)
    flushing.start()
    for w in workers:
        w.join()
    stop.set()
    flushing.join()
    assert stream.flushed_spans > 0  # some went to disk while recording
    partial = read_trace(tmp_path)  # chunks only, as a killed run leaves them
    assert len(partial.spans) == stream.flushed_spans
    stream.finish(recorder, metadata())
    assert (tmp_path / TRACE_DIRNAME / CHUNKS_DIRNAME).is_dir()  # until the run is renamed
    discard_chunks(tmp_path)
    trace = read_trace(tmp_path)
    assert not (tmp_path / TRACE_DIRNAME / CHUNKS_DIRNAME).exists()
    assert len(trace.spans) == per_thread * threads
    assert len(trace.counters) == per_thread * threads
    pairs = set(zip(trace.spans["detail"], trace.spans["step"], strict=True))
    assert len(pairs) == per_thread * threads  # each exactly once


def test_a_run_killed_while_finishing_resumes_to_its_whole_trace(tmp_path: Path) -> None:
    """Killed after consolidating, before its folder got its final name: the resumed
    process has no step left, rewinds to the last checkpoint's chunk count and
    consolidates again, and every span and counter is still there."""
    recorder = Recorder()
    stream = TraceStream(tmp_path, every_steps=2)
    stream.begin(metadata())
    for step in range(1, 7):
        recorder.add_span("step", Category.COMPUTE, step, step + 1, step=step)
        recorder.counter("loss", 1.0 / step, step=step)
        stream.step_done(recorder, step)
    at_checkpoint = stream.chunks_written
    stream.finish(recorder, metadata())  # ... and the process dies here
    resumed = TraceStream(tmp_path, every_steps=2)
    resumed.rewind(at_checkpoint)
    resumed.finish(Recorder(), metadata())
    discard_chunks(tmp_path)
    trace = read_trace(tmp_path)
    assert list(trace.counters["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(trace.spans["step"]) == [1, 2, 3, 4, 5, 6]


def test_a_trace_with_metadata_and_no_chunk_yet_reads_as_empty(tmp_path: Path) -> None:
    stream = TraceStream(tmp_path)
    stream.begin(metadata())
    trace = read_trace(tmp_path)
    assert trace.spans.empty and trace.counters.empty
    (tmp_path / TRACE_DIRNAME / CHUNKS_DIRNAME).rmdir()  # not a streamed trace any more
    with pytest.raises(TraceError, match=r"spans\.parquet: missing file"):
        read_trace(tmp_path)


def test_a_damaged_chunk_names_its_file(tmp_path: Path) -> None:
    recorder = Recorder()
    stream = TraceStream(tmp_path)
    stream.begin(metadata())
    recorder.counters.append(CounterSample("loss", 1, 2.0, step=1))
    stream.flush(recorder)
    (chunk,) = (tmp_path / TRACE_DIRNAME / CHUNKS_DIRNAME).glob("counters-*.parquet")
    chunk.write_bytes(b"not parquet")
    with pytest.raises(TraceError, match=re.escape(chunk.name)):
        read_trace(tmp_path)


def test_training_with_a_stream_keeps_only_the_last_steps_in_memory(tmp_path: Path) -> None:
    config = RunConfig()
    config.train.steps, config.train.torch_threads = 30, 1
    config.model.n_layer, config.model.n_embd, config.model.n_head = 1, 32, 2
    config.model.context, config.train.batch_size, config.train.eval_every = 16, 4, 100
    recorder = Recorder()
    stream = TraceStream(tmp_path, every_steps=10)
    result = train(
        config, recorder=recorder, stream=stream, started=lambda i: stream.begin(metadata())
    )
    steps_in_memory = {s.step for s in result.recorder.spans if s.name == "step"}
    assert steps_in_memory == set()  # step 30 was flushed with the others
    stream.finish(result.recorder, metadata())
    steps = read_trace(tmp_path).spans
    assert sorted(steps.loc[steps["name"] == "step", "step"]) == list(range(1, 31))


@pytest.mark.slow
def test_a_killed_run_keeps_every_flushed_step(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "asteria_bench",
        "run",
        "--steps",
        "100000",
        "--eval-every",
        "100000",
        *TINY_RUN,
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    staging = out.with_name("run.incomplete")
    chunks = staging / TRACE_DIRNAME / CHUNKS_DIRNAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(chunks.glob("spans-*.parquet"))) < 2:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert not out.exists() and (staging / "INCOMPLETE").is_file()
    trace = read_trace(staging)
    steps = sorted(trace.spans.loc[trace.spans["name"] == "step", "step"])
    assert len(steps) >= 50 and steps == list(range(1, len(steps) + 1))
    losses = trace.counters[trace.counters["name"] == "loss"]
    assert len(losses) == len(steps)


def test_a_run_killed_before_its_folder_is_renamed_resumes_with_every_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the trace was consolidated and the last checkpoint written, then the
    process died before ``name.incomplete`` became ``name``; ``--resume`` has no step
    left to take and must still leave the trace of every step."""
    from cli_runner import run_cli

    from asteria_bench.rundir import RunDirectory

    def killed(self: RunDirectory) -> Path:
        raise SystemExit(137)

    args = ["run", *TINY_RUN, "--steps", "6", "--checkpoint-every", "3", "--eval-every", "100"]
    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "finish", killed)
        assert run_cli([*args, "--out", str(tmp_path / "run")]) == 137
    staging = tmp_path / "run.incomplete"
    assert (staging / "trace" / "spans.parquet").is_file()  # consolidated before the kill
    assert run_cli(["run", "--resume", str(staging), "-q"]) == 0
    trace = read_trace(tmp_path / "run")
    losses = trace.counters[trace.counters["name"] == "loss"]
    assert sorted(losses["step"]) == [1, 2, 3, 4, 5, 6]
    assert not (tmp_path / "run" / TRACE_DIRNAME / CHUNKS_DIRNAME).exists()
