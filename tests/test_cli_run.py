"""``asteria-bench run``: end to end on a tiny model, and every bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_runner import run_cli

from tests.samples import TINY_RUN
from traces.io import read_trace

TINY = [*TINY_RUN, "--eval-every", "3", "--eval-batches", "2", "--corpus-bytes", "20000"]


@pytest.mark.parametrize("optimizer", ["adamw", "soap", "shampoo", "kl-shampoo"])
def test_run_writes_a_complete_run_directory(tmp_path: Path, optimizer: str) -> None:
    out = tmp_path / "run"
    rc = run_cli(["run", "--optimizer", optimizer, "--steps", "6", "--out", str(out), *TINY])
    assert rc == 0
    assert not (out / "INCOMPLETE").exists()
    assert not out.with_name("run.incomplete").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["optim"]["name"] == optimizer and config["train"]["steps"] == 6
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert list(metrics["step"]) == [1, 2, 3, 4, 5, 6]
    assert metrics["val_loss"].notna().sum() == 2  # steps 3 and 6
    assert (metrics["step_time_ns"] >= metrics["forward_ns"] + metrics["backward_ns"]).all()
    trace = read_trace(out)
    assert trace.metadata.optimizer == optimizer
    names = set(trace.spans["name"])
    assert {"step", "forward", "backward", "optimizer_step", "eval"} <= names
    if optimizer != "adamw":
        assert {"factor_update", "precondition"} <= names
        assert trace.spans.loc[trace.spans["name"] == "precondition", "block"].notna().all()
    events = json.loads((out / "trace" / "trace.perfetto.json").read_text())
    assert any(
        e.get("ph") == "X" and e.get("name") == "optimizer_step" for e in events["traceEvents"]
    )
    summary = (out / "summary.md").read_text()
    for figure in (
        "final validation loss",
        "median step time",
        "p99 step time",
        "visible optimizer overhead",
    ):
        assert figure in summary


def test_refresh_spans_follow_the_frequency(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = run_cli(
        [
            "run",
            "--optimizer",
            "soap",
            "--steps",
            "7",
            "--precondition-frequency",
            "3",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert rc == 0
    spans = read_trace(out).spans
    refresh_steps = sorted(set(spans.loc[spans["name"] == "refresh", "step"]))
    # SOAP skips its first call, so optimizer call s is update t = s - 1: refresh at t = 3, 6.
    assert refresh_steps == [4, 7]
    installs = sorted(set(spans.loc[spans["name"] == "install", "step"]))
    assert installs == [5]  # the t = 6 refresh is installed at t = 7, after the run ends


def test_config_file_and_cli_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nsteps = 4\nseed = 3\n[optim]\nname = "adamw"\nlr = 0.01\n')
    out = tmp_path / "run"
    assert run_cli(["run", "--config", str(cfg), "--seed", "5", "--out", str(out), *TINY]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 4 and config["train"]["seed"] == 5
    assert config["optim"]["lr"] == 0.01


def test_yaml_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  steps: 3\noptim:\n  name: soap\n")
    out = tmp_path / "run"
    assert run_cli(["run", "--config", str(cfg), "--out", str(out), *TINY]) == 0
    assert len(pd.read_parquet(out / "metrics.parquet")) == 3


def test_runs_are_deterministic(tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            run_cli(["run", "--optimizer", "soap", "--steps", "5", "--out", str(out), *TINY]) == 0
        )
        losses.append(pd.read_parquet(out / "metrics.parquet")["loss"].tolist())
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--optimizer", "lion"], "--optimizer"),
        (["--steps", "-1"], "--steps"),
        (["--steps", "abc"], "--steps"),
        (["--data", "/definitely/not/here"], "--data"),
        (["--config", "/definitely/not/here.toml"], "--config"),
        (["--device", "tpu"], "--device"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--beta1", "1.5"], "--beta1"),
        (["--bogus-option"], "--bogus-option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    rc = run_cli(["run", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not out.exists() and not out.with_name("run.incomplete").exists()


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.toml", "[train\nsteps = 3", "invalid TOML"),
        ("bad.yaml", "train: [1, 2", "invalid YAML"),
        ("unknown.toml", "[train]\nstepz = 3\n", "train.stepz"),
        ("section.toml", "[trian]\nsteps = 3\n", "trian"),
        ("type.yaml", "train:\n  steps: many\n", "train.steps"),
        ("bad.ini", "{}", ".toml, .yaml, .yml or .json"),
        ("bad.json", "{", "invalid JSON"),
        ("null.json", '{"optim": {"lr": "fast"}}', "optim.lr"),
    ],
)
def test_bad_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, needle: str
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    rc = run_cli(["run", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err and str(cfg) in err


def test_unreadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"\xff\xfe\x00garbage")
    assert run_cli(["run", "--config", str(cfg)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_existing_run_is_not_clobbered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run_cli(["run", "--optimizer", "adamw", "--steps", "2", "--out", str(out), *TINY]) == 0
    before = (out / "metrics.parquet").read_bytes()
    assert run_cli(["run", "--optimizer", "adamw", "--steps", "3", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.parquet").read_bytes() == before
    assert (
        run_cli(
            ["run", "--optimizer", "adamw", "--steps", "3", "--out", str(out), "--overwrite", *TINY]
        )
        == 0
    )
    assert len(pd.read_parquet(out / "metrics.parquet")) == 3


def test_interrupted_run_is_marked_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asteria_bench.train as train_module

    real_evaluate = train_module.evaluate

    def interrupt(*args: object, **kwargs: object) -> float:
        real_evaluate(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupt)
    out = tmp_path / "run"
    rc = run_cli(["run", "--optimizer", "soap", "--steps", "6", "--out", str(out), *TINY])
    assert rc == 130
    assert not out.exists()
    staging = out.with_name("run.incomplete")
    assert "interrupted after" in (staging / "INCOMPLETE").read_text()


def test_out_of_device_memory_keeps_the_trace_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A placement that overflows the device budget stops with one line; pressure trains."""
    out = tmp_path / "device"
    budget = ["--device-budget", "1MiB"]
    rc = run_cli(["run", "--optimizer", "soap", "--steps", "3", "--out", str(out), *budget, *TINY])
    assert rc == 1
    err = capsys.readouterr().err
    assert "out of device memory before step 2: placement device needs" in err
    assert "Traceback" not in err
    staging = out.with_name("device.incomplete")
    assert "out of device memory" in (staging / "INCOMPLETE").read_text()
    events = read_trace(staging).spans
    assert "device_out_of_memory" in set(events["name"])
    pressure = tmp_path / "pressure"
    args = ["run", "--optimizer", "soap", "--steps", "3", "--placement", "pressure"]
    assert run_cli([*args, "--out", str(pressure), *budget, *TINY]) == 0
    assert len(pd.read_parquet(pressure / "metrics.parquet")) == 3


def test_cuda_out_of_memory_in_a_step_stops_the_run_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The allocator's OOM (a RuntimeError) stops the run like the budget does, not as a crash."""
    import torch

    import asteria_bench.train as train_module

    real_build = train_module.build_optimizer

    def build(*args: object, **kwargs: object) -> torch.optim.Optimizer:
        optimizer = real_build(*args, **kwargs)  # type: ignore[arg-type]
        real_step, calls = optimizer.step, [0]

        def step() -> None:
            calls[0] += 1
            if calls[0] == 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            real_step()

        optimizer.step = step  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr(train_module, "build_optimizer", build)
    out = tmp_path / "run"
    rc = run_cli(["run", "--optimizer", "soap", "--steps", "3", "--out", str(out), *TINY])
    assert rc == 1
    err = capsys.readouterr().err
    assert "out of device memory in step 2 (placement device): CUDA out of memory." in err
    assert "Traceback" not in err
    staging = out.with_name("run.incomplete")
    assert "out of device memory in step 2" in (staging / "INCOMPLETE").read_text()
    assert 3 not in set(pd.read_parquet(staging / "metrics.parquet")["step"])  # stopped


def test_console_script_entry_point(tmp_path: Path) -> None:
    """The installed ``asteria-bench`` entry point (through ``python -m``) exits 2 on bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "asteria_bench.cli", "run", "--optimizer", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("asteria-bench: error: --optimizer")


def test_adaptive_run_replays_bitwise_from_its_schedule(tmp_path: Path) -> None:
    first, second = tmp_path / "adaptive", tmp_path / "replayed"
    common = ["--optimizer", "soap", "--steps", "12", "--precondition-frequency", "3", *TINY]
    assert run_cli(["run", "--out", str(first), "--staleness", "adaptive:4", *common]) == 0
    schedule = first / "staleness_schedule.json"
    assert schedule.is_file()
    assert (
        run_cli(
            [
                "run",
                "--out",
                str(second),
                "--staleness",
                f"replay:{schedule}",
                "--workers",
                "2",
                *common,
            ]
        )
        == 0
    )
    a = pd.read_parquet(first / "metrics.parquet")["loss"].tolist()
    b = pd.read_parquet(second / "metrics.parquet")["loss"].tolist()
    assert a == b


def test_replay_of_a_missing_schedule_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run_cli(
        ["run", "--out", str(tmp_path / "r"), "--staleness", "replay:/no/such.json", *TINY]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "/no/such.json" in err


@pytest.mark.parametrize("optimizer", ["soap", "shampoo", "kl-shampoo", "adamw"])
def test_config_json_is_complete_and_reproduces_the_run(tmp_path: Path, optimizer: str) -> None:
    """config.json holds every value used (no "use the default" nulls), and fed back, the same run."""
    import pandas as pd

    first = tmp_path / "first"
    args = ["--steps", "5", "--optimizer", optimizer, "--staleness", "bounded:2"]
    if optimizer == "adamw":
        args = ["--steps", "5", "--optimizer", optimizer]
    assert run_cli(["run", *args, "--out", str(first), *TINY]) == 0
    config = json.loads((first / "config.json").read_text())
    optim = config["optim"]
    # None where it is itself the value used: unblocked, KL-Shampoo's c0 from the gradient
    null_values = ("block_size", "eigenvalue_init")
    assert all(v is not None for k, v in optim.items() if k not in null_values), optim
    assert {"lr", "beta1", "beta2", "eps", "weight_decay"} <= set(optim)
    if optimizer in ("soap", "kl-shampoo"):
        assert optim["shampoo_beta"] == optim["beta2"]
    assert config["train"]["device"] == "cpu" and config["train"]["torch_threads"] >= 1
    assert config["runtime"]["stagger"] is (optimizer != "adamw")
    second = tmp_path / "second"
    assert run_cli(["run", "--config", str(first / "config.json"), "--out", str(second)]) == 0
    assert json.loads((second / "config.json").read_text()) == config
    a = pd.read_parquet(first / "metrics.parquet")
    b = pd.read_parquet(second / "metrics.parquet")
    assert a["loss"].tolist() == b["loss"].tolist()


def test_overwrite_replaces_only_a_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    rc = run_cli(["run", "--steps", "2", "--out", str(precious), "--overwrite", *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a run directory" in err
    assert (precious / "chapter1.tex").read_text() == "years of work"
    stray = tmp_path / "run.incomplete"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    rc = run_cli(["run", "--steps", "2", "--out", str(tmp_path / "run"), *TINY])
    assert rc == 2 and "not an unfinished run" in capsys.readouterr().err
    assert (stray / "notes.txt").read_text() == "mine"
    run = tmp_path / "ok"
    assert run_cli(["run", "--steps", "2", "--out", str(run), *TINY]) == 0
    assert run_cli(["run", "--steps", "3", "--out", str(run), "--overwrite", *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 3


@pytest.mark.parametrize(
    ("args", "config", "needle"),
    [
        (["--lr", "inf"], None, "--lr: expected a finite number, got inf"),
        (["--grad-clip", "nan"], None, "--grad-clip: expected a finite number"),
        ([], "[optim]\nlr = inf\n", "--lr: expected a finite number, got inf"),
        (["--n-embd", "262144", "--n-head", "1"], None, "does not fit in cpu memory"),
        (["--eps", "0"], None, "--eps: expected a positive number, got 0.0"),
        (["--optimizer", "shampoo", "--root-exponent", "0"], None, "--root-exponent: expected a"),
        (["--optimizer", "kl-shampoo", "--eigenvalue-init", "0"], None, "--eigenvalue-init:"),
    ],
)
def test_bad_values_are_one_line_and_leave_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    config: str | None,
    needle: str,
) -> None:
    out = tmp_path / "run"
    extra = []
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        extra = ["--config", str(tmp_path / "c.toml")]
    rc = run_cli(["run", "--steps", "2", "--out", str(out), *extra, *args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() and not out.with_name("run.incomplete").exists()


def test_a_symlinked_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "run"
    link.symlink_to(target)
    assert run_cli(["run", "--steps", "2", "--out", str(link), "--overwrite", *TINY]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert list(target.iterdir()) == []
