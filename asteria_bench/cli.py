"""The ``asteria-bench`` command line.

Every failure caused by input (an option, a config file, a data path) is one
line on stderr naming what was wrong and what was expected, with exit status 2
and no traceback; ``main`` enforces that for typer/click's own errors too.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from asteria_bench.errors import UserError

if TYPE_CHECKING:
    from asteria_bench.config import RunConfig

app = typer.Typer(
    name="asteria-bench",
    help="Train with Shampoo / SOAP / KL-Shampoo, record what it costs, and compare.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)

MODEL = "Model"
TRAIN = "Training"
OPTIM = "Optimizer hyperparameters (unset: the optimizer's preset for this workload)"
DATA = "Data"
RUNTIME = "Runtime: asynchronous refreshes"
TIERS = "Runtime: optimizer-state tiers"
PARALLEL = "Runtime: data parallelism (under torchrun)"
CHECKPOINTS = "Checkpoints"


FormatOption = Annotated[
    str,
    typer.Option("--format", help="table (fits 100 columns) | csv | json | md, on stdout"),
]
WideOption = Annotated[bool, typer.Option("--wide", help="every column, not the compact set")]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"asteria-bench {version('asteria-bench')}")
        except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
            from asteria_bench import __version__

            print(f"asteria-bench {__version__} (not installed)")
        raise typer.Exit()


ROOT_EXAMPLES = """Examples (each command's --help has more):

\b
  asteria-bench run --optimizer soap --steps 300 --out runs/soap
  asteria-bench replay runs/soap --staleness bounded:4 --workers 2
  asteria-bench simulate --scenario gh200-7b
  asteria-bench simulate --tune --hardware gh200 --model 1b --memory-budget 40
  asteria-bench import-kineto rank0.pt.trace.json --out runs/profiled
  asteria-bench compare runs/soap runs/profiled
  asteria-bench report runs/soap --out report/
  asteria-bench profile --out local.toml --quick
  asteria-bench hardware list
"""


@app.callback(epilog=ROOT_EXAMPLES)
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Train with Shampoo / SOAP / KL-Shampoo, record what it costs, and compare.

    Example: asteria-bench run --optimizer soap --steps 300 --out runs/soap
    """


hardware_app = typer.Typer(
    help="The hardware profiles the simulator knows, every number with its source.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(hardware_app, name="hardware")


@hardware_app.command("list")
def hardware_list(fmt: FormatOption = "table", wide: WideOption = False) -> None:
    """List the hardware profiles (packaged, and local.toml once measured).

    Example: asteria-bench hardware list --wide
    """
    from asteria_bench.hardware_cmd import hardware_list as run_list
    from asteria_bench.tables import parse_format

    run_list(parse_format(fmt), wide)


@hardware_app.command("show")
def hardware_show(
    name: Annotated[str, typer.Argument(help="a profile name (gh200, ...) or a .toml file")],
    fmt: FormatOption = "table",
    wide: WideOption = False,
) -> None:
    """Print every number of one hardware profile with its basis and source.

    Example: asteria-bench hardware show gh200
    """
    from asteria_bench.hardware_cmd import hardware_show as run_show
    from asteria_bench.tables import parse_format

    run_show(name, parse_format(fmt), wide)


@app.command()
def run(
    optimizer: Annotated[
        str | None,
        typer.Option(
            help="adamw | muon | shampoo | soap | kl-shampoo (default soap)", rich_help_panel=TRAIN
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="training steps (default 300)", rich_help_panel=TRAIN)
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="seed of the model init and batch order", rich_help_panel=TRAIN),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="run directory (default runs/<optimizer>-<time>)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing run directory at --out")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda", rich_help_panel=TRAIN)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML or YAML file with [model] [data] [train] [optim] sections"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue an unfinished run (its folder) from its newest checkpoint, with the"
            " configuration it saved",
            rich_help_panel=CHECKPOINTS,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="checkpoint every N steps (default 0: only on SIGTERM / Ctrl-C)",
            rich_help_panel=CHECKPOINTS,
        ),
    ] = None,
    keep_checkpoints: Annotated[
        int | None,
        typer.Option(help="checkpoints kept (default 2)", rich_help_panel=CHECKPOINTS),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(rich_help_panel=TRAIN)] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="held-out loss every N steps", rich_help_panel=TRAIN)
    ] = None,
    eval_batches: Annotated[int | None, typer.Option(rich_help_panel=TRAIN)] = None,
    warmup_steps: Annotated[int | None, typer.Option(rich_help_panel=TRAIN)] = None,
    lr_schedule: Annotated[
        str | None, typer.Option(help="cosine | constant", rich_help_panel=TRAIN)
    ] = None,
    min_lr_ratio: Annotated[float | None, typer.Option(rich_help_panel=TRAIN)] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help="max grad norm; 0 disables", rich_help_panel=TRAIN)
    ] = None,
    torch_threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads", rich_help_panel=TRAIN)
    ] = None,
    telemetry_every: Annotated[
        int | None, typer.Option(help="host/GPU counters every N steps", rich_help_panel=TRAIN)
    ] = None,
    n_layer: Annotated[int | None, typer.Option(rich_help_panel=MODEL)] = None,
    n_head: Annotated[int | None, typer.Option(rich_help_panel=MODEL)] = None,
    n_embd: Annotated[int | None, typer.Option(rich_help_panel=MODEL)] = None,
    context: Annotated[
        int | None, typer.Option(help="context length in bytes", rich_help_panel=MODEL)
    ] = None,
    dropout: Annotated[float | None, typer.Option(rich_help_panel=MODEL)] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="a text file or folder (default: the embedded corpus)", rich_help_panel=DATA
        ),
    ] = None,
    corpus_seed: Annotated[int | None, typer.Option(rich_help_panel=DATA)] = None,
    corpus_bytes: Annotated[int | None, typer.Option(rich_help_panel=DATA)] = None,
    val_fraction: Annotated[float | None, typer.Option(rich_help_panel=DATA)] = None,
    lr: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    beta1: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    beta2: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    eps: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    weight_decay: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    precondition_frequency: Annotated[
        int | None, typer.Option(help="refresh every f steps", rich_help_panel=OPTIM)
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="preconditioner block size", rich_help_panel=OPTIM)
    ] = None,
    shampoo_beta: Annotated[
        float | None, typer.Option(help="factor EMA (SOAP, KL-Shampoo)", rich_help_panel=OPTIM)
    ] = None,
    max_precond_dim: Annotated[
        int | None, typer.Option(help="longer sides are not rotated", rich_help_panel=OPTIM)
    ] = None,
    start_preconditioning_step: Annotated[
        int | None, typer.Option(help="Shampoo t0", rich_help_panel=OPTIM)
    ] = None,
    root_exponent: Annotated[
        float | None, typer.Option(help="Shampoo inverse root", rich_help_panel=OPTIM)
    ] = None,
    grafting: Annotated[
        str | None, typer.Option(help="Shampoo grafting: adam | none", rich_help_panel=OPTIM)
    ] = None,
    grafting_beta2: Annotated[float | None, typer.Option(rich_help_panel=OPTIM)] = None,
    eigenvalue_init: Annotated[
        float | None, typer.Option(help="KL-Shampoo c0", rich_help_panel=OPTIM)
    ] = None,
    staleness: Annotated[
        str | None,
        typer.Option(help="sync | bounded:TAU | adaptive:TAU_MAX", rich_help_panel=RUNTIME),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="refresh worker threads (asynchronous policies)", rich_help_panel=RUNTIME
        ),
    ] = None,
    root_device: Annotated[
        str | None,
        typer.Option(
            help="host | device: where asynchronous refreshes compute", rich_help_panel=RUNTIME
        ),
    ] = None,
    stagger: Annotated[
        bool | None,
        typer.Option(
            "--stagger/--no-stagger",
            help="spread blocks' refreshes over steps (default: on when asynchronous)",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    batched: Annotated[
        bool | None,
        typer.Option(
            "--batched/--no-batched",
            help="step same-shape blocks as stacks: the same math, a fraction of the"
            " operators (for GPUs, where launches dominate)",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="run the batched hot path through torch.compile (with --batched)",
            rich_help_panel=RUNTIME,
        ),
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(
            help="device | host | lifecycle | pressure[:LOW_MiB:HIGH_MiB]: where optimizer state rests",
            rich_help_panel=TIERS,
        ),
    ] = None,
    device_budget: Annotated[
        str | None,
        typer.Option(
            help="device bytes for optimizer state, e.g. 2GiB (emulated without a GPU)",
            rich_help_panel=TIERS,
        ),
    ] = None,
    host_budget: Annotated[
        str | None,
        typer.Option(help="host bytes for optimizer state, e.g. 16GiB", rich_help_panel=TIERS),
    ] = None,
    spill_dir: Annotated[
        Path | None, typer.Option(help="a folder on NVMe for the spill tier", rich_help_panel=TIERS)
    ] = None,
    normalize_grads: Annotated[
        bool | None,
        typer.Option("--normalize-grads/--no-normalize-grads", rich_help_panel=OPTIM),
    ] = None,
    update_mode: Annotated[
        str | None,
        typer.Option(
            help="under torchrun: replicated (owners compute refreshes, results broadcast)"
            " | sharded (owners update their blocks, parameters all-gathered)",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
    ranks_per_node: Annotated[
        int | None,
        typer.Option(
            help="ranks per node (default: torchrun's LOCAL_WORLD_SIZE); less emulates nodes",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
    dist_timeout: Annotated[
        float | None,
        typer.Option(
            help="seconds a collective waits for a dead or stuck rank (default 60)",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
    inter_node_staleness: Annotated[
        int | None,
        typer.Option(
            help="replicated, several nodes: τ of refresh results that cross nodes"
            " (default: --staleness's)",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
    parallel: Annotated[
        str | None,
        typer.Option(
            help="under torchrun: ddp (default) | fsdp2 (fully_shard; each rank updates its"
            " rows of every parameter)",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
    owner_links: Annotated[
        str | None,
        typer.Option(
            help="replicated, several nodes: a hardware profile (name or .toml) whose refresh"
            " rate and inter-node link decide which blocks each node refreshes itself",
            rich_help_panel=PARALLEL,
        ),
    ] = None,
) -> None:
    """Train the GPT with one optimizer and write a run directory.

    The run directory holds config.json, trace/ (Parquet spans and counters plus
    trace.perfetto.json for ui.perfetto.dev), metrics.parquet and summary.md.
    With no options: SOAP on the embedded corpus, 300 steps, on the CPU unless
    a GPU is present.

    Example: asteria-bench run --optimizer kl-shampoo --steps 500 --lr 3e-3

    Data parallel: torchrun --nproc-per-node 4 -m asteria_bench run --update-mode sharded

    Checkpoints: asteria-bench run --checkpoint-every 100 --out runs/long; after a kill,
    asteria-bench run --resume runs/long.incomplete
    """
    from asteria_bench.config import RunConfig, apply_mapping, load_config_file, validate
    from asteria_bench.job import run_job

    cfg = RunConfig()
    if config is not None:
        apply_mapping(cfg, load_config_file(config), f"--config: {config}")
    overrides: dict[str, dict[str, object]] = {
        "model": dict(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, context=context, dropout=dropout
        ),
        "data": dict(
            path=None if data is None else str(data),
            corpus_seed=corpus_seed,
            corpus_bytes=corpus_bytes,
            val_fraction=val_fraction,
        ),
        "train": dict(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            device=device,
            eval_every=eval_every,
            eval_batches=eval_batches,
            warmup_steps=warmup_steps,
            lr_schedule=lr_schedule,
            min_lr_ratio=min_lr_ratio,
            grad_clip=grad_clip,
            torch_threads=torch_threads,
            telemetry_every=telemetry_every,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
        ),
        "optim": dict(
            name=optimizer,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            block_size=block_size,
            shampoo_beta=shampoo_beta,
            max_precond_dim=max_precond_dim,
            start_preconditioning_step=start_preconditioning_step,
            root_exponent=root_exponent,
            grafting=grafting,
            grafting_beta2=grafting_beta2,
            eigenvalue_init=eigenvalue_init,
            normalize_grads=normalize_grads,
        ),
    }
    overrides["runtime"] = dict(
        staleness=staleness,
        workers=workers,
        root_device=root_device,
        stagger=stagger,
        batched=batched,
        compile=compile_,
        placement=placement,
        device_budget=device_budget,
        host_budget=host_budget,
        spill_dir=None if spill_dir is None else str(spill_dir),
        update_mode=update_mode,
        ranks_per_node=ranks_per_node,
        dist_timeout=dist_timeout,
        inter_node_staleness=inter_node_staleness,
        parallel=parallel,
        owner_links=owner_links,
    )
    if resume is not None:
        given = [k for values in overrides.values() for k, v in values.items() if v is not None]
        given += [k for k, v in (("config", config), ("out", out)) if v is not None]
        given += ["overwrite"] if overwrite else []
        if given:
            option = "--" + given[0].replace("_", "-")
            raise UserError(
                f"--resume: continues the run with the configuration it saved; drop {option}"
            )
        cfg = _resumed_config(resume)
    for section, values in overrides.items():
        target = getattr(cfg, section)
        for key, value in values.items():
            if value is not None:
                setattr(target, key, value)
    validate(cfg)
    run_job(cfg, out=out, overwrite=overwrite, quiet=quiet, resume=resume)


def _resumed_config(resume: Path) -> RunConfig:
    """The configuration an unfinished run saved in its ``config.json``."""
    from asteria_bench.config import RunConfig, apply_mapping, load_config_file
    from asteria_bench.rundir import RunDirectory

    run = RunDirectory.unfinished(resume)
    saved = run.staging / "config.json"
    if not saved.is_file():
        raise UserError(f"--resume: {saved} is missing; the run stopped before its first step")
    from runtime.checkpoint import CHECKPOINTS_DIRNAME, CheckpointManager

    folder = run.staging / CHECKPOINTS_DIRNAME
    if not CheckpointManager(folder).checkpoints():
        raise UserError(f"--resume: {folder} holds no checkpoint to resume from")
    cfg = RunConfig()
    apply_mapping(cfg, load_config_file(saved), f"--resume: {saved}")
    return cfg


@app.command()
def replay(
    run_dir: Annotated[
        Path, typer.Argument(help="a run directory: measured, simulated or imported")
    ],
    calibrate_on: Annotated[
        Path | None,
        typer.Option(help="calibrate the model on this other run instead (held-out prediction)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="also write the simulated run's trace here")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace an --out folder that asteria-bench wrote"),
    ] = False,
    fmt: FormatOption = "table",
    wide: WideOption = False,
    staleness: Annotated[
        str | None,
        typer.Option(
            help="what if: simulate the run's workload under this refresh policy instead"
            " (sync | bounded:TAU | adaptive:TAU_MAX)",
            rich_help_panel="What if",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="with --staleness: refresh workers", rich_help_panel="What if")
    ] = 1,
    root_device: Annotated[
        str,
        typer.Option(
            help="with --staleness: host | device, where refresh jobs compute",
            rich_help_panel="What if",
        ),
    ] = "host",
    worker_speed: Annotated[
        float,
        typer.Option(
            help="with --staleness: refresh jobs run this many times as fast as in the trace"
            " (0.25: a host 4x slower than the GPU measured)",
            rich_help_panel="What if",
        ),
    ] = 1.0,
) -> None:
    """Simulate a run on its own measured costs; print measured vs simulated.

    Example: asteria-bench replay runs/soap-sync --calibrate-on runs/soap-sync

    What if its refreshes ran asynchronously on the host:
    asteria-bench replay runs/imported --staleness bounded:4 --workers 2
    """
    from asteria_bench.tables import parse_format

    if staleness is not None:
        from asteria_bench.policy_cmd import policy_command
        from simulator.policy_whatif import PolicyChange

        if calibrate_on is not None or out is not None:
            raise UserError("--staleness: not with --calibrate-on or --out")
        change = PolicyChange(staleness, workers, root_device, worker_speed)
        policy_command(run_dir, change, parse_format(fmt), wide)
        return
    from asteria_bench.simulate_cmd import replay_command

    replay_command(
        run_dir,
        calibrate_on=calibrate_on,
        out=out,
        overwrite=overwrite,
        fmt=parse_format(fmt),
        wide=wide,
    )


@app.command("import-kineto")
def import_kineto(
    traces: Annotated[
        list[Path],
        typer.Argument(help="PyTorch profiler traces (.json or .json.gz), one per rank"),
    ],
    out: Annotated[Path, typer.Option(help="the run directory to write")],
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace an --out folder that asteria-bench wrote"),
    ] = False,
    refresh_ops: Annotated[
        str | None,
        typer.Option(
            help="comma-separated parts of the op names that are the optimizer's refresh"
            " (default: eigh, linalg_eig, linalg_qr, cholesky, svd, inverse_root)"
        ),
    ] = None,
    precondition_frequency: Annotated[
        int | None,
        typer.Option(help="refresh every f steps (default: the gap between refreshing steps)"),
    ] = None,
) -> None:
    """Import PyTorch profiler (Kineto) traces as a run directory (kind "imported").

    Steps from ProfilerStep#N, forward / backward / optimizer spans, GPU kernels
    per stream, NCCL collectives with bytes, rank and world size from
    distributedInfo. replay, compare and report read the result.

    Example: asteria-bench import-kineto rank0.pt.trace.json.gz rank1.pt.trace.json.gz --out runs/profiled
    """
    from asteria_bench.import_cmd import import_kineto_command

    import_kineto_command(
        traces,
        out=out,
        overwrite=overwrite,
        refresh_ops=refresh_ops,
        precondition_frequency=precondition_frequency,
    )


@app.command()
def simulate(
    hardware: Annotated[
        str,
        typer.Option(
            help="profile name(s): gb10, gh200, h100-sxm, h100-pcie, h200; comma-separated to sweep"
        ),
    ] = "gh200",
    model: Annotated[
        str,
        typer.Option(
            help="a preset (gpt-default, gpt-small, 125m, 350m, 1b, 7b, 13b, llama3-8b,"
            " llama3-70b, llama2-7b) or a Hugging Face-style config file (.json or .toml)"
        ),
    ] = "7b",
    optimizer: Annotated[str, typer.Option(help="adamw | shampoo | soap | kl-shampoo")] = "soap",
    staleness: Annotated[str, typer.Option(help="sync | bounded:TAU | adaptive:TAU_MAX")] = "sync",
    root_device: Annotated[
        str, typer.Option(help="host | device: where refreshes compute")
    ] = "device",
    nodes: Annotated[str, typer.Option(help="nodes")] = "1",
    gpus_per_node: Annotated[str, typer.Option(help="GPUs (ranks) per node")] = "1",
    steps: Annotated[str, typer.Option(help="simulated steps")] = "200",
    block_size: Annotated[str, typer.Option(help="preconditioner block size, or none")] = "1024",
    precondition_frequency: Annotated[str, typer.Option(help="refresh every f steps")] = "10",
    tokens_per_rank: Annotated[
        str, typer.Option(help="tokens per rank and step (unless --micro-batch is given)")
    ] = "16384",
    seq_len: Annotated[
        str | None, typer.Option(help="sequence length (default: the model's context)")
    ] = None,
    micro_batch: Annotated[
        str | None,
        typer.Option(
            help="sequences per micro-batch; tokens per rank = this x seq-len x grad-accum"
        ),
    ] = None,
    grad_accum: Annotated[str, typer.Option(help="micro-batches per optimizer step")] = "1",
    recompute: Annotated[
        str, typer.Option(help="activation recompute: none | selective | full")
    ] = "none",
    precision: Annotated[
        str, typer.Option(help="bf16 | fp8 (linear layers, where the profile states a rate)")
    ] = "bf16",
    data_parallel: Annotated[
        str,
        typer.Option(
            help="ddp | zero1 | zero2 | zero3 (fsdp): what ranks shard; every optimizer alike"
        ),
    ] = "zero1",
    workers: Annotated[str, typer.Option(help="refresh workers per rank")] = "4",
    placement: Annotated[
        str,
        typer.Option(
            help="where optimizer state rests: device | host | lifecycle | pressure[:LOW_MiB:HIGH_MiB]"
        ),
    ] = "device",
    device_budget: Annotated[
        str | None,
        typer.Option(help="device memory for optimizer state, e.g. 40GiB (default: the profile's)"),
    ] = None,
    host_budget: Annotated[
        str | None,
        typer.Option(help="host memory for optimizer state (default: the profile's)"),
    ] = None,
    update_mode: Annotated[
        str,
        typer.Option(
            help="sharded (owners update their blocks, updates all-gathered) | replicated"
            " (every rank updates every block, owners' refreshed bases published)"
        ),
    ] = "sharded",
    scenario: Annotated[
        str | None,
        typer.Option(help="a preset comparing AdamW, synchronous and asteria: gb10-1b, gh200-7b"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="write the table (simulate.csv) and each configuration's trace here"),
    ] = None,
    convergence: Annotated[
        Path | None,
        typer.Option(
            help="steps-to-target ratios: a summary.json of bench_convergence / bench_staleness"
        ),
    ] = None,
    calibrate_on: Annotated[
        Path | None,
        typer.Option(help="a measured run directory: its ops' fraction of the roofline is used"),
    ] = None,
    calibration_profile: Annotated[
        str | None,
        typer.Option(help="the profile (name or .toml) of the machine that run was measured on"),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace an --out folder that asteria-bench wrote"),
    ] = False,
    fmt: FormatOption = "table",
    wide: WideOption = False,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="search placement, staleness, block size, workers, roots (and update mode with"
            " several ranks) for the lowest projected time to target within --memory-budget",
            rich_help_panel="Tune",
        ),
    ] = False,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="with --tune: device memory per GPU, in GiB or a size (40, 40GiB)",
            rich_help_panel="Tune",
        ),
    ] = None,
    tune_steps: Annotated[
        int, typer.Option(help="with --tune: steps simulated per candidate", rich_help_panel="Tune")
    ] = 32,
    top: Annotated[
        int, typer.Option(help="with --tune: how many of the best to print", rich_help_panel="Tune")
    ] = 5,
) -> None:
    """Simulate training on other hardware and policies (comma-separated values sweep).

    Example: asteria-bench simulate --hardware gh200 --nodes 4 --gpus-per-node 4
    --model 7b --optimizer soap --staleness sync,bounded:4 --steps 1000
    --placement device,lifecycle

    Example: asteria-bench simulate --hardware h100-sxm --gpus-per-node 8
    --model llama3-8b --seq-len 8192 --micro-batch 2 --recompute selective
    --data-parallel zero3 --optimizer adamw,soap

    Tune: asteria-bench simulate --tune --hardware gh200 --model 1b --memory-budget 40
    """
    from asteria_bench.simulate_cmd import simulate_command
    from asteria_bench.tables import parse_format

    values = dict(
        hardware=hardware,
        model=model,
        optimizer=optimizer,
        staleness=staleness,
        root_device=root_device,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        steps=steps,
        block_size=block_size,
        precondition_frequency=precondition_frequency,
        tokens_per_rank=tokens_per_rank,
        workers=workers,
        placement=placement,
        update_mode=update_mode,
        grad_accum=grad_accum,
        recompute=recompute,
        precision=precision,
        data_parallel=data_parallel,
    )
    if seq_len is not None:
        values["seq_len"] = seq_len
    if micro_batch is not None:
        values["micro_batch"] = micro_batch
    if device_budget is not None:
        values["device_budget"] = device_budget
    if host_budget is not None:
        values["host_budget"] = host_budget
    if tune:
        from asteria_bench.tune_cmd import tune_command

        if scenario is not None or out is not None or calibrate_on is not None:
            raise UserError("--tune: not with --scenario, --out or --calibrate-on")
        tune_command(
            values,
            memory_budget=memory_budget,
            tune_steps=tune_steps,
            top=top,
            convergence=convergence,
            fmt=parse_format(fmt),
            wide=wide,
        )
        return
    simulate_command(
        values,
        scenario=scenario,
        out=out,
        convergence=convergence,
        calibrate_on=calibrate_on,
        calibration_profile=calibration_profile,
        overwrite=overwrite,
        fmt=parse_format(fmt),
        wide=wide,
    )


@app.command()
def profile(
    out: Annotated[Path, typer.Option(help="the profile file to write (.toml)")] = Path(
        "local.toml"
    ),
    name: Annotated[str, typer.Option(help="the profile's name")] = "local",
    disk_dir: Annotated[
        Path | None, typer.Option(help="folder on the disk to measure (default: the temp folder)")
    ] = None,
    no_disk: Annotated[bool, typer.Option("--no-disk", help="skip the disk measurement")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, a few seconds")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing profile file at --out")
    ] = False,
) -> None:
    """Measure this machine (GEMM, eigh, memory, pinned copies, disk) into a hardware profile.

    Example: asteria-bench profile --out profiles/local.toml --disk-dir /mnt/nvme
    then: asteria-bench simulate --hardware profiles/local.toml --model gpt-default
    """
    from asteria_bench.profile_cmd import profile_command

    profile_command(
        out, name=name, disk_dir=disk_dir, no_disk=no_disk, quick=quick, overwrite=overwrite
    )


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="run directories of any kind: measured, simulated, ...")
    ],
    target_loss: Annotated[
        float | None,
        typer.Option(help="validation loss to time (default: the worst run's best)"),
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="comma-separated columns, e.g. run,median_step_ms,wait_ms")
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="every column, not the 100-column set")
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json | md")] = "table",
) -> None:
    """Compare runs step-aligned: step times, overhead, spikes, bytes, staleness, waits, loss.

    Example: asteria-bench compare runs/sync runs/bounded --target-loss 2.5
    """
    from asteria_bench.compare_cmd import compare_command

    compare_command(runs, target_loss=target_loss, columns=columns, wide=wide, fmt=fmt)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories of any kind")],
    out: Annotated[Path, typer.Option(help="folder for report.html, report.md and the figures")],
    target_loss: Annotated[
        float | None,
        typer.Option(help="validation loss drawn and timed (default: the worst run's best)"),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="replace an --out folder that asteria-bench wrote"),
    ] = False,
) -> None:
    """Write an HTML report (figures embedded, opens offline) and its Markdown twin.

    Example: asteria-bench report runs/sync runs/bounded --out reports-out/
    """
    from asteria_bench.report_cmd import report_command

    report_command(runs, out=out, target_loss=target_loss, overwrite=overwrite)


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """The class ``name`` from click and from typer's vendored click (typer >= 0.20).

    Newer typer releases vendor click and no longer install it, older ones use it.
    """
    modules = []
    for module_name in ("click.exceptions", "typer._click.exceptions"):
        with contextlib.suppress(ImportError):
            modules.append(importlib.import_module(module_name))
    return tuple(getattr(m, name) for m in modules if hasattr(m, name))


_NO_ARGS_IS_HELP = _click_classes("NoArgsIsHelpError")
_USAGE_ERROR = _click_classes("UsageError")
_ABORT = _click_classes("Abort")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typer app with one-line errors and exit status 2."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="asteria-bench")
    except UserError as exc:
        print(f"asteria-bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except _NO_ARGS_IS_HELP as exc:
        ctx = getattr(exc, "ctx", None)
        print(ctx.get_help() if ctx else "", file=sys.stderr)
        sys.exit(2)
    except _USAGE_ERROR as exc:
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        if getattr(exc, "param", None) is not None and "--" not in message:
            message = f"{exc.param.opts[0]}: {message}"  # type: ignore[attr-defined]
        print(f"asteria-bench: error: {message}", file=sys.stderr)
        sys.exit(2)
    except _ABORT:
        print("asteria-bench: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("asteria-bench: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
