"""Everything this project wants to know from a GPU, as one command that fits ~8 minutes.

Time on a GPU machine is short and rare, so the GPU check is prepared here, on
the CPU, and runs there once: seven stages in order, each timed, each guarded (a
failing stage is one line with its error and log file, and the suite goes on),
each given a deadline out of one time budget so that the later stages still
run. Every stage writes under ``DIR/traces/measured/`` (run directories of
``asteria-bench run``, whose ``trace/metadata.json`` records the GPU, CPU,
memory and software; ``logs/`` with what every command printed), and the suite
ends with ``DIR/summary.md``, which it also prints.

1. ``cuda-tests``: the tests marked ``cuda`` (``pytest -m cuda``), on the GPU.
2. ``default-run``: the README's main job (SOAP, default GPT, 300 steps).
   ``nccl``: the data-parallel path under torchrun with one rank (NCCL), both
   update modes.
3. ``gpu-gpt``: an 85M-parameter GPT with AdamW and SOAP / KL-Shampoo, sync and
   ``bounded:4`` with refreshes on the host or on the device.
4. ``pressure``: ``bench_pressure.py`` under a capped CUDA allocator.
5. ``step``: ``bench_step.py`` on the GPU (ours, and heavyball where installed).
6. ``replay``: ``asteria-bench replay`` of every run of stages 2-3.
7. ``compile``: ``bench_step.py --compile`` on the default GPT: the batched hot
   path under ``torch.compile`` against eager. Last, because a cold compile's
   length is the least predictable; running out of time costs only its own rows.

``--dry-run`` runs the same stages on the CPU at tiny sizes (seconds each), so
that the suite is tested where it is written. ``benchmarks/gpu_suite.sh`` is the
device command that wraps this script and packs its results.

    python benchmarks/gpu_suite.py --out /tmp/suite                # on a GPU machine
    python benchmarks/gpu_suite.py --out /tmp/suite --dry-run      # anywhere
    python benchmarks/gpu_suite.py --out /tmp/suite --only default-run,replay
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import format_table
from benchmarks._suite import (
    ROOT,
    MeasuredRun,
    ReplayErrors,
    StageResult,
    Status,
    Suite,
    hardware_line,
    measured_run,
    pct,
    pipe_table,
    pytest_counts,
    replay_errors,
    replay_table,
    runs_table,
)
from benchmarks._suite_sizes import DRY_SIZES, GPT_RUNS, GPU_SIZES, Sizes


@dataclass
class Context:
    """What a stage sees: the suite, the sizes, its deadline, and the runs measured so far."""

    suite: Suite
    sizes: Sizes
    deadline: float = 0.0  # time.monotonic() by which the stage must have ended
    runs: dict[str, MeasuredRun] = field(default_factory=dict)
    replays: list[ReplayErrors] = field(default_factory=list)

    def timeout_s(self) -> float:
        return self.deadline - time.monotonic()

    def run_dirs(self) -> list[Path]:
        """The finished run directories of stages 2-3 under the measured folder, in stage order.

        Read from the folder rather than from this invocation, so that ``--only replay``
        replays what an earlier invocation measured.
        """
        names = ["default-soap", *(spec.name(self.sizes.gpt) for spec in GPT_RUNS)]
        paths = [self.suite.measured / n for n in names]
        return [p for p in paths if (p / "metrics.parquet").is_file()]

    def train_args(self) -> list[str]:
        """Options every training run of the suite shares."""
        args = ["--device", self.sizes.device, "--overwrite", "-q"]
        if self.sizes.torch_threads is not None:
            args += ["--torch-threads", str(self.sizes.torch_threads)]
        return args


# ---------------------------------------------------------------------- stages
def stage_cuda_tests(ctx: Context) -> StageResult:
    """The tests marked ``cuda``: on a GPU they check CUDA against the CPU and NVML readings."""
    if ctx.suite.dry_run:
        return StageResult("cuda-tests", Status.SKIPPED, detail="no CUDA (dry run on the CPU)")
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in p.read_text()
    )
    if not files:
        return StageResult("cuda-tests", Status.FAILED, detail="no test carries the cuda marker")
    args = ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    result = ctx.suite.run("cuda-tests", args, ctx.timeout_s())
    counts = pytest_counts(result.output())
    counted = ", ".join(f"{n} {kind}" for kind, n in counts.items() if kind != "deselected")
    failures = [
        ln for ln in result.output().splitlines() if ln.startswith(("FAILED", "ERROR"))
    ] or ["(none)"]
    section = "\n".join(
        [
            f"`python {' '.join(args)}`",
            "",
            f"- {counted or 'no pytest summary line'}",
            *[f"- {ln}" for ln in failures],
        ]
    )
    status = Status.PASSED if result.ok else Status.FAILED
    detail = counted if result.ok else f"{counted or 'no tests ran'}; {result.failure()}"
    return StageResult("cuda-tests", status, detail=detail, section=section)


def stage_default_run(ctx: Context) -> StageResult:
    """The README's main job on the GPU: does the default workload run, and how fast."""
    out = ctx.suite.measured / "default-soap"
    args = ["-m", "asteria_bench", "run", "--out", str(out), *ctx.train_args()]
    if ctx.sizes.default_steps is not None:
        args += ["--steps", str(ctx.sizes.default_steps)]
    result = ctx.suite.run("default-run", args, ctx.timeout_s())
    if not result.ok:
        return StageResult("default-run", Status.FAILED, detail=result.failure())
    run = ctx.runs[out.name] = measured_run(out)
    section = f"`python {' '.join(args)}`\n\n{runs_table([run], None)}"
    f = run.figures
    detail = f"median {f.median_step_ms:.2f} ms, p99 {f.p99_step_ms:.2f} ms over {f.steps} steps"
    return StageResult("default-run", Status.PASSED, detail=detail, section=section)


def stage_nccl(ctx: Context) -> StageResult:
    """The data-parallel path through NCCL on one GPU: torchrun, one rank, both update modes.

    One rank still joins a process group, wraps the model in DDP, broadcasts
    every refresh result (replicated) or all-gathers every update (sharded);
    on the dry run the same path runs on gloo.
    """
    runs, lines = [], []
    for mode in ("replicated", "sharded"):
        out = ctx.suite.measured / f"torchrun-1rank-{mode}"
        args = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=1",
            "-m",
            "asteria_bench",
            "run",
            "--out",
            str(out),
            "--update-mode",
            mode,
            "--staleness",
            "bounded:4",
            "--steps",
            str(ctx.sizes.default_steps or 100),
            *ctx.train_args(),
        ]
        result = ctx.suite.run(f"nccl-{mode}", args, ctx.timeout_s() / 2)
        if not result.ok:
            return StageResult("nccl", Status.FAILED, detail=f"{mode}: {result.failure()}")
        runs.append(ctx.runs.setdefault(out.name, measured_run(out)))
        lines.append(f"`python {' '.join(args)}`")
    section = "\n\n".join([*lines, runs_table(runs, None)])
    detail = ", ".join(
        f"{mode} median {r.figures.median_step_ms:.2f} ms"
        for mode, r in zip(("replicated", "sharded"), runs, strict=True)
    )
    return StageResult("nccl", Status.PASSED, detail=detail, section=section)


def stage_gpu_gpt(ctx: Context) -> StageResult:
    """A GPT sized for the GPU under every runtime mode, each run against AdamW's median."""
    gpt = ctx.sizes.gpt
    done: list[MeasuredRun] = []
    failed: list[str] = []
    skipped: list[str] = []
    not_here: list[str] = []
    logs: list[str] = []
    wall_s: dict[str, float] = {}
    took_s: dict[str, float] = {}  # by mode: SOAP's run tells how long KL-Shampoo's will take
    for spec in GPT_RUNS:
        name = spec.name(gpt)
        if spec.needs_cuda and ctx.sizes.device != "cuda":
            not_here.append(name)
            continue
        # A run killed at the deadline leaves nothing: do not start one that cannot finish.
        needs_s = max(ctx.sizes.min_gpt_run_s, 0.9 * took_s.get(spec.mode, 0.0))
        if ctx.timeout_s() < needs_s:
            skipped.append(f"{name} (needs ~{needs_s:.0f} s, {ctx.timeout_s():.0f} s left)")
            continue
        out = ctx.suite.measured / name
        args = ["-m", "asteria_bench", "run", "--out", str(out), *ctx.train_args()]
        args += gpt.args() + spec.args(gpt)
        result = ctx.suite.run(name, args, ctx.timeout_s())
        wall_s[name] = result.seconds
        if result.ok:
            done.append(ctx.runs.setdefault(out.name, measured_run(out)))
            took_s.setdefault(spec.mode, result.seconds)
        else:
            failed.append(f"{name} ({result.failure()})")
            logs.append(result.log.name)
    adamw = next((r for r in done if r.optimizer == "adamw"), None)
    lines = [gpt.describe(), "", runs_table(done, adamw), ""]
    lines.append("Wall seconds per run (start-up and trace writing included): ")
    lines[-1] += ", ".join(f"{n} {s:.1f}" for n, s in wall_s.items()) + "."
    detail = f"{len(done)} of {len(GPT_RUNS)} runs"
    for label, names in (
        ("not run on the CPU (refreshes on the device need CUDA)", not_here),
        ("skipped for time", skipped),
    ):
        if names:
            lines += ["", f"{label[0].upper()}{label[1:]}: {', '.join(names)}."]
            detail += f"; {label}: {', '.join(names)}"
    if failed:
        lines += ["", *[f"- failed: {f}" for f in failed]]
        detail += f"; failed: {'; '.join(failed)}"
    status = Status.FAILED if failed or not done else Status.PASSED
    log = f"logs/{logs[0]}" if logs else "logs/gpt-*.log"
    return StageResult("gpu-gpt", status, detail=detail, log=log, section="\n".join(lines))


def stage_pressure(ctx: Context) -> StageResult:
    """SOAP out of memory under ``device`` and training under ``pressure`` on a capped GPU."""
    out = ctx.suite.measured / "pressure"
    args = ["benchmarks/bench_pressure.py", *ctx.sizes.pressure, "--out", str(out)]
    result = ctx.suite.run("pressure", args, ctx.timeout_s())
    if not result.ok:
        return StageResult("pressure", Status.FAILED, detail=result.failure())
    printed = result.output().splitlines()[1:]  # the command line
    verdict = next((ln for ln in printed if "shown:" in ln), "no verdict line printed")
    section = f"`python {' '.join(args)}`\n\n" + "\n".join(printed).strip()
    return StageResult("pressure", Status.PASSED, detail=verdict, section=section)


def run_bench_step(
    ctx: Context, stage: str, options: tuple[str, ...]
) -> tuple[str, str] | StageResult:
    """``bench_step.py`` as a stage: (what it printed, the section: command and output),
    or the failed stage."""
    args = ["benchmarks/bench_step.py", *options]
    result = ctx.suite.run(stage, args, ctx.timeout_s())
    if not result.ok:
        return StageResult(stage, Status.FAILED, detail=result.failure())
    printed = result.output().splitlines()[1:]  # the command line
    return result.output(), "\n".join([f"`python {' '.join(args)}`", "", *printed])


def stage_step(ctx: Context) -> StageResult:
    """Optimizer step time on the GPU: ours per block, heavyball where installed."""
    ran = run_bench_step(ctx, "step", ctx.sizes.step)
    if isinstance(ran, StageResult):
        return ran
    output, section = ran
    heavyball = (
        "heavyball: installed, its rows are in the tables above."
        if importlib.util.find_spec("heavyball") is not None
        else "heavyball not installed: no heavyball rows."
    )
    section += f"\n\n- {heavyball}"
    rows = pipe_table(output, "optimizer")
    ratios = ", ".join(
        f"{r['optimizer']} {r['total ratio vs AdamW']}"
        for r in rows
        if "total ratio vs AdamW" in r and not r["optimizer"].startswith("AdamW")
    )
    detail = f"total ratio vs AdamW: {ratios}" if ratios else "no vs-AdamW table printed"
    return StageResult("step", Status.PASSED, detail=detail, section=section)


def stage_compile(ctx: Context) -> StageResult:
    """The batched hot path compiled with ``torch.compile`` against eager, per block and batched."""
    ran = run_bench_step(ctx, "compile", ctx.sizes.compile)
    if isinstance(ran, StageResult):
        return ran
    output, section = ran
    _, _, batched_part = output.partition("Batched execution")
    rows = pipe_table(batched_part, "optimizer")
    compiled = ", ".join(
        f"{r['optimizer']} {r['hot ratio batched/per-block']}"
        for r in rows
        if "compile" in r["optimizer"]
    )
    detail = f"hot step compiled / per block: {compiled}" if compiled else "no compiled row printed"
    return StageResult("compile", Status.PASSED, detail=detail, section=section)


def stage_replay(ctx: Context) -> StageResult:
    """The simulator on each measured run's own costs: how far off its median and p99 are."""
    runs = ctx.run_dirs()
    if not runs:
        return StageResult("replay", Status.FAILED, detail="no measured run to replay")
    timeout = ctx.timeout_s()

    def replay(run: Path) -> ReplayErrors | str:
        args = ["-m", "asteria_bench", "replay", str(run)]
        result = ctx.suite.run(f"replay-{run.name}", args, timeout)
        if not result.ok:
            return f"{run.name}: {result.failure()}"
        try:
            return replay_errors(run.name, result.output())
        except ValueError as exc:
            return f"{run.name}: {exc}; log {result.log.name}"

    parallel = max(1, min(len(runs), os.cpu_count() or 1, 8))  # replay is CPU-only
    with ThreadPoolExecutor(parallel) as pool:
        outcomes = list(pool.map(replay, runs))
    ctx.replays = [o for o in outcomes if isinstance(o, ReplayErrors)]
    failed = [o for o in outcomes if isinstance(o, str)]
    section = replay_table(ctx.replays)
    if failed:
        section += "\n\n" + "\n".join(f"- failed: {f}" for f in failed)
    worst = max((max(r.median_error, r.p99_error) for r in ctx.replays), default=math.nan)
    detail = f"{len(ctx.replays)} of {len(runs)} runs replayed; worst error {pct(worst)}"
    if failed:
        detail += f"; failed: {'; '.join(failed)}"
    status = Status.FAILED if failed else Status.PASSED
    return StageResult("replay", status, detail=detail, log="logs/replay-*.log", section=section)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], StageResult]
    cap_s: float  # the most of the budget this stage may take
    needs_s: float  # not started with less than this left; kept free for it by earlier stages


STAGES = (
    Stage("cuda-tests", stage_cuda_tests, cap_s=60, needs_s=20),
    Stage("default-run", stage_default_run, cap_s=75, needs_s=30),
    Stage("nccl", stage_nccl, cap_s=50, needs_s=20),
    Stage("gpu-gpt", stage_gpu_gpt, cap_s=270, needs_s=60),
    Stage("pressure", stage_pressure, cap_s=60, needs_s=25),
    Stage("step", stage_step, cap_s=60, needs_s=25),
    Stage("replay", stage_replay, cap_s=60, needs_s=15),
    Stage("compile", stage_compile, cap_s=120, needs_s=45),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


# -------------------------------------------------------------------- driver
def run_stages(ctx: Context, selected: list[Stage]) -> list[StageResult]:
    """Each stage in order, under its deadline, its failure caught and reported."""
    suite = ctx.suite
    results = []
    for i, stage in enumerate(selected):
        later = sum(s.needs_s for s in selected[i + 1 :])
        now = time.monotonic()
        ctx.deadline = min(now + stage.cap_s, suite.started + suite.budget_s - later)
        if ctx.timeout_s() < stage.needs_s:
            why = f"time budget: {ctx.timeout_s():.0f} s left for it, needs ~{stage.needs_s:.0f} s"
            results.append(StageResult(stage.name, Status.SKIPPED, detail=why))
            suite.say(f"== {stage.name}: skipped ({why})")
            continue
        suite.say(f"== {stage.name} (up to {ctx.timeout_s():.0f} s)")
        try:
            result = stage.run(ctx)
        except Exception as exc:  # a broken stage must not cost the ones after it
            result = StageResult(stage.name, Status.FAILED, detail=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - now
        log = suite.logs / f"{stage.name}.log"
        result.log = result.log or (str(log.relative_to(suite.measured)) if log.exists() else "")
        suite.say(f"== {stage.name}: {result.status_text()} ({result.seconds:.1f} s)")
        results.append(result)
    return results


def summary_markdown(ctx: Context, results: list[StageResult], argv: list[str]) -> str:
    suite = ctx.suite
    mode = "dry run (CPU, tiny sizes)" if suite.dry_run else "GPU"
    first = next(iter(ctx.run_dirs()), None)
    lines = [
        f"# GPU suite: {mode}",
        "",
        f"- command: `python benchmarks/gpu_suite.py {' '.join(argv)}`",
        f"- finished {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; "
        f"wall time {suite.elapsed_s():.1f} s of a {suite.budget_s:.0f} s budget",
        f"- hardware: {hardware_line(first) if first else 'no run finished'}",
        "- every folder and log named here is under traces/measured/",
        "",
        "## Stages",
        "",
        format_table(
            ["stage", "status", "seconds", "log"],
            [[r.name, r.status_text(160), f"{r.seconds:.1f}", r.log or "-"] for r in results],
        ),
    ]
    for r in results:
        lines += ["", f"## {r.name}", "", r.section or r.status_text()]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every GPU check of the project as one command (see the module docstring)."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for traces/ and summary")
    parser.add_argument("--dry-run", action="store_true", help="the same stages, CPU, tiny sizes")
    parser.add_argument("--only", default=None, help=f"comma-separated: {','.join(STAGE_NAMES)}")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="time budget in seconds (default 480)"
    )
    parser.add_argument(
        "--gpt-steps",
        type=int,
        default=None,
        help="steps of each gpu-gpt run (default: the sizes')",
    )
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.gpt_steps is not None and args.gpt_steps < 1:
        parser.error("--gpt-steps must be a positive integer")
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in STAGE_NAMES]
        if unknown or not names:
            parser.error(f"--only: unknown stage {unknown}; expected some of {STAGE_NAMES}")
        args.only = names
    return args


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device; use --dry-run", file=sys.stderr)
            return 2
    suite = Suite(args.out.resolve(), args.budget_s, args.dry_run)
    suite.measured.mkdir(parents=True, exist_ok=True)
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    if args.gpt_steps is not None:
        sizes = replace(sizes, gpt=replace(sizes.gpt, steps=args.gpt_steps))
    ctx = Context(suite, sizes)
    selected = [s for s in STAGES if args.only is None or s.name in args.only]
    suite.say(
        f"gpu suite: {'dry run' if args.dry_run else 'GPU'}; stages {[s.name for s in selected]}"
    )
    results = run_stages(ctx, selected)
    text = summary_markdown(ctx, results, raw)
    (suite.out / "summary.md").write_text(text)
    (suite.measured / "gpu-suite-summary.md").write_text(text)
    record = {
        "dry_run": suite.dry_run,
        "budget_s": suite.budget_s,
        "wall_s": suite.elapsed_s(),
        "stages": [asdict(r) | {"status": r.status.value} for r in results],
        "runs": {name: asdict(run) for name, run in ctx.runs.items()},
        "replay": [asdict(r) for r in ctx.replays],
    }
    (suite.measured / "gpu-suite.json").write_text(json.dumps(record, indent=1, default=str))
    print()
    print(text)
    return 1 if any(r.status is Status.FAILED for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
