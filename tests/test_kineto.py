"""``import-kineto``: PyTorch profiler traces, recorded here on the CPU and public GPU ones."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import SOAP
from traces.io import read_trace
from traces.kineto import KinetoError, read_kineto, refresh_frequency
from traces.schema import Category, Tier

DATA = Path(__file__).parent / "data" / "kineto"
ACTIVE = 6
FREQUENCY = 2


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained with SOAP under torch.profiler on the CPU, exported as Chrome JSON."""
    path = tmp_path_factory.mktemp("kineto") / "rank0.pt.trace.json"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = SOAP(model.parameters(), lr=1e-3, precondition_frequency=FREQUENCY)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=ACTIVE)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=schedule,
        record_shapes=True,
        on_trace_ready=lambda p: p.export_chrome_trace(str(path)),
    ) as prof:
        for _ in range(2 + ACTIVE):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            prof.step()
    return path


def raw_events(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["traceEvents"]


def steps_of(events: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """ProfilerStep#N -> (ts, dur) in µs, read independently of the importer."""
    return {
        int(e["name"].split("#")[1]): (e["ts"], e["dur"])
        for e in events
        if e.get("ph") == "X" and e["name"].startswith("ProfilerStep#")
    }


def test_steps_phases_and_refreshes_of_a_recorded_trace(recorded: Path) -> None:
    rank = read_kineto(recorded)
    events = raw_events(recorded)
    profiled = steps_of(events)
    assert rank.steps == list(range(1, ACTIVE + 1))  # the profiled window, numbered from 1
    assert rank.profiler_steps == sorted(profiled)
    number = {n: k for k, n in enumerate(sorted(profiled), start=1)}
    assert rank.optimizer_class == "SOAP"
    spans = {(s.name, s.step): s for s in rank.spans if s.track == "training"}
    for n, (ts, dur) in profiled.items():
        step = spans[("step", number[n])]
        assert step.detail == f"ProfilerStep#{n}"
        assert (step.start_ns, step.end_ns) == (
            round(ts * 1000),
            round(ts * 1000) + round(dur * 1000),
        )
        forward, backward = spans[("forward", number[n])], spans[("backward", number[n])]
        optimizer = spans[("optimizer_step", number[n])]
        assert step.start_ns <= forward.start_ns < forward.end_ns <= backward.start_ns
        assert backward.end_ns <= optimizer.start_ns < optimizer.end_ns <= step.end_ns
    # the refresh: SOAP's QR iterations, every FREQUENCY steps, inside the optimizer step
    assert refresh_frequency(rank.refresh_steps) == FREQUENCY
    qr = [
        e
        for e in events
        if e.get("name") == "aten::linalg_qr"
        and any(ts <= e["ts"] <= ts + dur for ts, dur in profiled.values())
    ]
    refresh = [s for s in rank.spans if s.name == "refresh"]
    assert len(refresh) == len(qr) > 0
    assert {s.step for s in refresh} == set(rank.refresh_steps)
    for s in refresh:
        optimizer = spans[("optimizer_step", s.step)]
        assert optimizer.start_ns <= s.start_ns and s.end_ns <= optimizer.end_ns
    assert rank.block_dims  # factor sides from the recorded shapes
    assert set(rank.block_dims.values()) <= {4, 16, 32}


def test_import_writes_a_run_that_replay_and_the_what_if_read(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "imported"
    assert run_cli(["import-kineto", str(recorded), "--out", str(out)]) == 0
    assert "6 step(s) of 1 rank(s)" in capsys.readouterr().out
    trace = read_trace(out)
    assert trace.metadata.kind == "imported" and trace.metadata.optimizer == "soap"
    assert trace.metadata.config["import"]["optimizer_class"] == "SOAP"
    assert trace.metadata.hyperparameters["precondition_frequency"] == FREQUENCY
    metrics = pd.read_parquet(out / "metrics.parquet")
    profiled = steps_of(raw_events(recorded))
    expected = [round(dur * 1000) for _, (_, dur) in sorted(profiled.items())]
    assert metrics["step_time_ns"].tolist() == expected
    assert (out / "summary.md").is_file() and (out / "trace" / "trace.perfetto.json").is_file()
    assert run_cli(["replay", str(out), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["measured"] == pytest.approx(np.median(expected) / 1e6)
    argv = ["replay", str(out), "--staleness", "bounded:2", "--workers", "2", "--format", "json"]
    assert run_cli(argv) == 0
    projected = {r["field"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    p99 = projected["p99_ms"]
    assert p99["change"] == pytest.approx(
        (p99["projected"] - p99["simulated_as_run"]) / p99["simulated_as_run"]
    )
    # the synchronous refresh steps are the spikes; taken off the critical path they shrink
    assert p99["projected"] < p99["simulated_as_run"]
    assert run_cli(["compare", str(out), "--format", "json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert "imported" in json.dumps(compared)
    assert run_cli(["import-kineto", str(recorded), "--out", str(out)]) == 2  # never over it
    assert "exists and is not empty" in capsys.readouterr().err


def test_gzip_and_several_ranks(recorded: Path, tmp_path: Path) -> None:
    document = json.loads(recorded.read_text())
    paths = []
    for rank in (1, 0):  # given out of order: distributedInfo decides
        doc = copy.deepcopy(document)
        doc["distributedInfo"] = {"backend": "gloo", "rank": rank, "world_size": 2}
        path = tmp_path / f"rank{rank}.pt.trace.json.gz"
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))
        paths.append(path)
    out = tmp_path / "two"
    assert run_cli(["import-kineto", *map(str, paths), "--out", str(out)]) == 0
    zero, one = read_trace(out), read_trace(out / "ranks" / "1")
    assert (zero.metadata.rank, zero.metadata.world_size) == (0, 2)
    assert (one.metadata.rank, one.metadata.world_size) == (1, 2)
    assert zero.metadata.config["import"]["source"] == "rank0.pt.trace.json.gz"
    assert len(zero.spans) == len(read_kineto(recorded).spans)


def test_a_public_gpu_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HTA's excerpt of an A100 training trace: one step, a backward thread, a cutlass kernel."""
    source = DATA / "hta_backward_thread.json"
    rank = read_kineto(source)
    assert rank.steps == [1] and rank.profiler_steps == [552] and rank.rank == 0 and rank.on_gpu
    by_name = {s.name: s for s in rank.spans}
    backward = by_name["backward"]  # the loop's own "## backward ##" annotation
    assert (backward.start_ns, backward.end_ns) == (1666149715287655000, 1666149715395643000)
    kernel = next(s for s in rank.spans if s.track.startswith("cuda:"))
    assert kernel.track == "cuda:0 stream 7" and kernel.category is Category.COMPUTE
    assert kernel.step == 1 and kernel.end_ns - kernel.start_ns == 45_000
    out = tmp_path / "hta"
    assert run_cli(["import-kineto", str(source), "--out", str(out)]) == 0
    assert read_trace(out).metadata.device == "cuda:0"
    capsys.readouterr()
    assert run_cli(["replay", str(out)]) == 2  # one step is too few to model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need at least 3 steps" in err[0]


def gpu_trace(**step_args: Any) -> dict[str, Any]:
    """Two steps of a synthetic GPU trace: a kernel launched in step 1 that runs in step 2."""
    ms = 1000.0
    return {
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
        "deviceProperties": [{"id": 0, "name": "NVIDIA H100", "totalGlobalMem": 85 * 10**9}],
        "traceEvents": [
            {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "ts": 0, "dur": ms, "tid": 1},
            {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "ts": ms, "dur": ms, "tid": 1},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 10, "dur": 1, "tid": 1,
             "args": {"correlation": 7}},
            {"ph": "X", "cat": "kernel", "name": "ampere_sgemm", "ts": 1500, "dur": 40, "tid": 7,
             "args": {"correlation": 7, "device": 0, "stream": 7}},
            {"ph": "X", "cat": "cpu_op", "name": "record_param_comms", "ts": 20, "dur": 5, "tid": 1,
             "args": {"External id": 99, "Collective name": "allreduce", "In msg nelems": 1000,
                      "Out msg nelems": 1000, "dtype": "BFloat16"}},
            {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_bf16_RING_LL",
             "ts": 30, "dur": 100, "tid": 20,
             "args": {"External id": 99, "device": 0, "stream": 20, **step_args}},
            {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 1200,
             "dur": 10, "tid": 7, "args": {"device": 0, "stream": 7, "bytes": 4096}},
            {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "ts": 1300, "tid": 1,
             "args": {"Device Type": 1, "Device Id": 0, "Total Allocated": 123456, "Bytes": 512}},
        ],
    }  # fmt: skip


def test_kernels_collectives_and_copies_of_a_gpu_trace(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(gpu_trace()))
    rank = read_kineto(path)
    kernel = next(s for s in rank.spans if s.name == "ampere_sgemm")
    assert kernel.step == 1  # launched in step 1, run in step 2: counted where it was launched
    nccl = next(s for s in rank.spans if s.name.startswith("nccl"))
    assert nccl.category is Category.COLLECTIVE and nccl.track == "cuda:0 stream 20"
    assert nccl.bytes == 1000 * 2 and nccl.detail == "allreduce"  # from record_param_comms
    copy_ = next(s for s in rank.spans if s.category is Category.TRANSFER)
    assert (copy_.bytes, copy_.tier_from, copy_.tier_to) == (4096, Tier.HOST, Tier.DEVICE)
    assert [(c.name, c.value, c.step) for c in rank.counters] == [
        ("device_memory_bytes", 123456.0, 2)
    ]
    assert rank.devices[0].name == "NVIDIA H100"
    # the kernel's own message sizes win where it records them
    path.write_text(json.dumps(gpu_trace(**{"In msg nelems": 8, "dtype": "Float"})))
    assert next(s for s in read_kineto(path).spans if s.name.startswith("nccl")).bytes == 32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"schemaVersion": 1}', "no traceEvents list"),
        (b'{"traceEvents": [{"ph": "X", "name": "aten::mm", "ts": 0, "dur": 1}]}', "no ProfilerStep"),
        (b'{"traceEvents": [{"ph": "X", "name": "ProfilerStep#1", "ts": "0", "dur": 1}]}', "ts: expected a finite number"),
        (b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
        (b"\xff\xfe", "not JSON"),
    ],
)  # fmt: skip
def test_a_malformed_trace_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    out = tmp_path / "run"
    assert run_cli(["import-kineto", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("asteria-bench: error: TRACE: ") and message in err[0]
    )
    assert not out.exists() and not (tmp_path / "run.partial").exists()


def test_bad_arguments_are_one_line(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(recorded.read_text())
    document["distributedInfo"] = {"rank": 0, "world_size": 2}
    twin = tmp_path / "twin.json"
    twin.write_text(json.dumps(document))
    three = []
    for r in range(3):  # ranks 0..2 of a job that says it has 2
        document["distributedInfo"] = {"rank": r, "world_size": 2}
        three.append(tmp_path / f"r{r}.json")
        three[-1].write_text(json.dumps(document))
    out = str(tmp_path / "x")
    cases = [
        (["import-kineto", str(tmp_path / "missing.json"), "--out", out], "TRACE: "),
        (["import-kineto", str(twin), str(twin), "--out", out], "ranks [0, 0]"),
        (["import-kineto", *map(str, three), "--out", out], "world_size [2]"),
        (["import-kineto", str(twin), str(recorded), "--out", out], "has no distributedInfo"),
        (["import-kineto", str(recorded), "--out", out, "--refresh-ops", ","], "--refresh-ops"),
        (["import-kineto", str(recorded), "--out", out, "--precondition-frequency", "0"], "--precondition-frequency"),
        (["import-kineto", str(recorded)], "--out"),
        (["replay", str(tmp_path), "--staleness", "bounded:2"], "RUN_DIR"),
    ]  # fmt: skip
    for argv, needle in cases:
        assert run_cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
    assert not (tmp_path / "x").exists()


def test_what_if_options_are_checked(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run_cli(["import-kineto", str(recorded), "--out", str(out)]) == 0
    cases = [
        (["--staleness", "later"], "--staleness"),
        (["--staleness", "bounded:2", "--workers", "0"], "--workers"),
        (["--staleness", "bounded:2", "--root-device", "tpu"], "--root-device"),
        (["--staleness", "bounded:2", "--worker-speed", "0"], "--worker-speed"),
        (["--staleness", "bounded:2", "--out", str(tmp_path / "o")], "--staleness"),
    ]
    capsys.readouterr()
    for extra, needle in cases:
        assert run_cli(["replay", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (extra, err)


EVENT = st.fixed_dictionaries(
    {
        "ph": st.sampled_from(["X", "i", "M", "s"]),
        "name": st.one_of(
            st.sampled_from(
                [
                    "ProfilerStep#0",
                    "ProfilerStep#1",
                    "ProfilerStep#1",
                    "Optimizer.step#SOAP.step",
                    "aten::linalg_eigh",
                    "autograd::engine::evaluate_function: X",
                    "[memory]",
                    "## forward ##",
                    "ncclKernel",
                ]
            ),
            st.integers(),
            st.none(),
        ),
        "cat": st.sampled_from(
            ["user_annotation", "cpu_op", "kernel", "gpu_memcpy", "cuda_runtime"]
        ),
        "ts": st.one_of(
            st.floats(allow_nan=True), st.integers(-(2**70), 2**70), st.text(max_size=3)
        ),
        "dur": st.one_of(st.floats(-10, 1e6), st.integers(-5, 10**6), st.none()),
        "tid": st.one_of(st.integers(0, 3), st.text(max_size=2)),
        "args": st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(
                    [
                        "correlation",
                        "External id",
                        "In msg nelems",
                        "dtype",
                        "bytes",
                        "stream",
                        "device",
                        "Device Type",
                        "Total Allocated",
                        "Input Dims",
                    ]
                ),
                st.one_of(
                    st.integers(-3, 10**12),
                    st.text(max_size=4),
                    st.lists(st.integers(), max_size=2),
                ),
                max_size=4,
            ),
        ),
    }
)
DOCUMENTS = st.one_of(
    st.fixed_dictionaries({"traceEvents": st.lists(EVENT, max_size=12)}),
    st.fixed_dictionaries(
        {
            "traceEvents": st.lists(EVENT, max_size=6),
            "distributedInfo": st.one_of(st.none(), st.dictionaries(st.sampled_from(["rank", "world_size"]), st.integers(-2, 4))),
            "deviceProperties": st.one_of(st.none(), st.lists(st.dictionaries(st.sampled_from(["id", "name", "totalGlobalMem"]), st.integers(-1, 9)), max_size=2)),
        }
    ),
    st.recursive(st.none() | st.integers() | st.text(max_size=4), lambda c: st.lists(c, max_size=3), max_leaves=5),
)  # fmt: skip


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=DOCUMENTS, gz=st.booleans())
def test_fuzz_the_reader_ends_in_a_rank_or_one_line(
    tmp_path: Path, document: Any, gz: bool
) -> None:
    path = tmp_path / "fuzz.json"
    data = json.dumps(document, allow_nan=True).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        rank = read_kineto(path)
    except KinetoError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        return
    assert rank.steps and all(s.end_ns >= s.start_ns for s in rank.spans)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200))
def test_fuzz_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bytes.json"
    path.write_bytes(data)
    with pytest.raises(KinetoError):
        read_kineto(path)
