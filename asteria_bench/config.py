"""The run configuration: typed, validated, loadable from TOML or YAML.

Precedence is defaults < ``--config FILE`` < command-line options. A config
file mirrors the sections below (``[model]``, ``[data]``, ``[train]``,
``[optim]``, ``[runtime]``); any unknown key or mistyped value is an error naming the file and
the key. Optimizer hyperparameters left unset take the per-optimizer preset for
this workload (``OPTIMIZER_PRESETS``), which ``resolved_optimizer`` makes
explicit so that ``config.json`` records every value actually used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asteria_bench.errors import UserError
from runtime.plan.ownership import LinkCosts

SECTIONS = ("model", "data", "train", "optim", "runtime")
OPTIMIZERS = ("adamw", "shampoo", "soap", "kl-shampoo", "muon")
BASELINES = ("adamw", "muon")
"""torch's optimizers: no blocks, no refreshes, no tiers; the runtime's options do not apply."""
SECOND_ORDER = ("soap", "shampoo", "kl-shampoo")
"""The preconditioned optimizers: they have blocks, refreshes and staleness."""
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelSection:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 64
    dropout: float = 0.0


@dataclass
class DataSection:
    path: str | None = None  # a text file or folder; None = the embedded corpus
    corpus_seed: int = 1234
    corpus_bytes: int = 1_000_000
    val_fraction: float = 0.1


@dataclass
class TrainSection:
    steps: int = 300
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    eval_every: int = 50
    eval_batches: int = 8
    warmup_steps: int = 20
    lr_schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    torch_threads: int | None = None
    telemetry_every: int = 10
    checkpoint_every: int = 0  # 0: checkpoint only when stopped by SIGTERM / Ctrl-C
    keep_checkpoints: int = 2


@dataclass
class RuntimeSection:
    """How refreshes execute (ALGORITHMS.md §6); the default is the sync reference."""

    staleness: str = "sync"  # sync | bounded:TAU | adaptive:TAU_MAX
    workers: int = 1
    root_device: str = "host"  # host | device
    stagger: bool | None = None  # None: on for asynchronous policies, off for sync
    placement: str = "device"  # device | host | lifecycle | pressure[:LOW_MiB:HIGH_MiB]
    device_budget: str | None = None  # e.g. "2GiB"; None: no limit
    host_budget: str | None = None
    spill_dir: str | None = None  # a folder for the NVMe tier; None: no NVMe tier
    update_mode: str = "replicated"  # under torchrun: replicated | sharded
    ranks_per_node: int | None = None  # None: torchrun's LOCAL_WORLD_SIZE
    dist_timeout: float = 60.0  # seconds a collective may wait for a dead or stuck rank
    inter_node_staleness: int | None = None  # τ of results crossing nodes; None: staleness's
    parallel: str = "ddp"  # under torchrun: ddp | fsdp2 (each rank updates its rows)
    owner_links: str | None = None  # a hardware profile pricing node-local owners; None: none
    batched: bool = False  # same-shape blocks stepped as stacks (ExecutionConfig(batched=True))
    compile: bool = False  # the batched hot path through torch.compile (needs batched)


@dataclass
class OptimSection:
    """Every optimizer hyperparameter; None means the preset for the chosen optimizer."""

    name: str = "soap"
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    precondition_frequency: int | None = None
    block_size: int | None = None
    shampoo_beta: float | None = None
    max_precond_dim: int | None = None
    start_preconditioning_step: int | None = None
    root_exponent: float | None = None
    grafting: str | None = None
    grafting_beta2: float | None = None
    eigenvalue_init: float | None = None
    normalize_grads: bool | None = None


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIMIZER_PRESETS: dict[str, dict[str, Any]] = {
    # Learning rates tuned by sweep on the default workload, 300 steps
    # (benchmarks/bench_convergence.py; grid 1e-3 ... 2e-2, results in
    # simulator/convergence/default-gpt.json): AdamW 6e-3, SOAP 1e-2.
    "adamw": dict(lr=6e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1),
    "soap": dict(
        lr=1e-2,
        beta1=0.95,
        beta2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        precondition_frequency=10,
        block_size=None,
        max_precond_dim=10000,
        normalize_grads=False,
    ),
    "shampoo": dict(
        lr=3e-3,
        beta1=0.9,
        beta2=0.999,
        eps=1e-12,
        weight_decay=0.1,
        precondition_frequency=10,
        block_size=1024,
        root_exponent=4,
        grafting="adam",
        grafting_beta2=0.999,
    ),
    # Muon (torch.optim.Muon) on the hidden matrices, AdamW on embeddings, head and
    # vectors; the RMS-matched Muon takes AdamW's learning rate.
    "muon": dict(lr=6e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, momentum=0.95),
    # KL-Shampoo: the constructor's defaults (c0 from each block's first gradient,
    # β2 = 0.95). The reference's c0 = 0.1 starts the eigenvalue estimates ~100x
    # above this workload's clipped gradients and β = 0.98 takes ~200 steps to
    # bring them down (val loss 2.15 at 300 steps at lr 3e-3); with the defaults,
    # lr 3e-3 ends at 1.490 against AdamW's 1.621. Not yet swept further.
    "kl-shampoo": dict(
        lr=3e-3,
        beta1=0.9,
        beta2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        precondition_frequency=10,
        block_size=None,
        eigenvalue_init=None,
    ),
}
"""Per-optimizer values for the hyperparameters a user left unset."""


def resolved_optimizer(optim: OptimSection) -> dict[str, Any]:
    """The preset for ``optim.name`` overlaid with every value the user set."""
    values = dict(OPTIMIZER_PRESETS[optim.name])
    for f in dataclasses.fields(optim):
        if f.name == "name":
            continue
        value = getattr(optim, f.name)
        if value is not None:
            values[f.name] = value
    return values


def resolved_config(
    config: RunConfig, *, device: str, torch_threads: int, stagger: bool
) -> dict[str, Any]:
    """``config`` with every value the run used in place of "use the default" (``config.json``).

    The optimizer section holds the resolved hyperparameters of the chosen
    optimizer (preset overlaid with what the user set; SOAP's and KL-Shampoo's
    factor β spelled out) and leaves out those it does not use; ``None``
    remains only where it is itself the value used (``block_size``: unblocked;
    ``eigenvalue_init``: KL-Shampoo's c0 taken from each block's first gradient).
    Fed back with ``run --config RUN/config.json`` it reproduces the run.
    """
    out = config.to_dict()
    optim = {"name": config.optim.name, **resolved_optimizer(config.optim)}
    if config.optim.name in ("soap", "kl-shampoo") and optim.get("shampoo_beta") is None:
        optim["shampoo_beta"] = optim["beta2"]
    out["optim"] = optim
    out["train"]["device"] = device
    out["train"]["torch_threads"] = torch_threads
    out["runtime"]["stagger"] = stagger
    return out


# ------------------------------------------------------------------ validation
def validate(config: RunConfig) -> None:
    """Raise UserError naming the option for the first invalid value."""
    m, d, t, o = config.model, config.data, config.train, config.optim

    def need(ok: bool, option: str, expected: str, value: Any) -> None:
        if not ok:
            raise UserError(f"{option}: expected {expected}, got {value!r}")

    for section in SECTIONS:  # inf and nan are no setting (and no JSON either)
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                need(False, f"--{f.name.replace('_', '-')}", "a finite number", value)
    need(o.name in OPTIMIZERS, "--optimizer", "one of " + ", ".join(OPTIMIZERS), o.name)
    need(t.device in DEVICES, "--device", "one of " + ", ".join(DEVICES), t.device)
    need(t.steps >= 1, "--steps", "a positive integer", t.steps)
    need(t.batch_size >= 1, "--batch-size", "a positive integer", t.batch_size)
    need(t.eval_every >= 1, "--eval-every", "a positive integer", t.eval_every)
    need(t.eval_batches >= 1, "--eval-batches", "a positive integer", t.eval_batches)
    need(t.warmup_steps >= 0, "--warmup-steps", "a non-negative integer", t.warmup_steps)
    need(
        t.lr_schedule in ("cosine", "constant"),
        "--lr-schedule",
        "cosine or constant",
        t.lr_schedule,
    )
    need(0.0 <= t.min_lr_ratio <= 1.0, "--min-lr-ratio", "a number in [0, 1]", t.min_lr_ratio)
    need(t.grad_clip >= 0.0, "--grad-clip", "a non-negative number", t.grad_clip)
    need(t.telemetry_every >= 1, "--telemetry-every", "a positive integer", t.telemetry_every)
    need(
        0 <= t.checkpoint_every <= 10**9,
        "--checkpoint-every",
        "a non-negative integer (0: only on SIGTERM / Ctrl-C)",
        t.checkpoint_every,
    )
    need(
        1 <= t.keep_checkpoints <= 1000,
        "--keep-checkpoints",
        "an integer in [1, 1000]",
        t.keep_checkpoints,
    )
    need(
        t.torch_threads is None or t.torch_threads >= 1,
        "--torch-threads",
        "a positive integer",
        t.torch_threads,
    )
    need(m.n_layer >= 1, "--n-layer", "a positive integer", m.n_layer)
    need(m.n_head >= 1, "--n-head", "a positive integer", m.n_head)
    need(m.n_embd >= 1, "--n-embd", "a positive integer", m.n_embd)
    need(m.n_embd % m.n_head == 0, "--n-embd", f"a multiple of --n-head ({m.n_head})", m.n_embd)
    need(m.context >= 2, "--context", "an integer >= 2", m.context)
    need(0.0 <= m.dropout < 1.0, "--dropout", "a number in [0, 1)", m.dropout)
    need(0.0 < d.val_fraction < 1.0, "--val-fraction", "a number in (0, 1)", d.val_fraction)
    need(d.corpus_bytes >= 10_000, "--corpus-bytes", "at least 10000", d.corpus_bytes)
    if d.path is not None:
        need(Path(d.path).exists(), "--data", "an existing text file or folder", d.path)
    for name in ("lr", "weight_decay"):
        value = getattr(o, name)
        need(
            value is None or value >= 0,
            f"--{name.replace('_', '-')}",
            "a non-negative number",
            value,
        )
    # ε divides (SOAP, Shampoo; KL-Shampoo may go without), c0 and the root exponent must be > 0
    zero_eps = o.name == "kl-shampoo"
    for name, allow_zero in (
        ("eps", zero_eps),
        ("eigenvalue_init", False),
        ("root_exponent", False),
    ):
        value = getattr(o, name)
        need(
            value is None or value > 0 or (allow_zero and value == 0),
            f"--{name.replace('_', '-')}",
            "a non-negative number" if allow_zero else "a positive number",
            value,
        )
    for name in ("beta1", "beta2", "shampoo_beta", "grafting_beta2"):
        value = getattr(o, name)
        need(
            value is None or 0.0 <= value <= 1.0,
            f"--{name.replace('_', '-')}",
            "a number in [0, 1]",
            value,
        )
    for name in ("precondition_frequency", "block_size", "start_preconditioning_step"):
        value = getattr(o, name)
        need(
            value is None or value >= 1, f"--{name.replace('_', '-')}", "a positive integer", value
        )
    need(o.grafting in (None, "adam", "none"), "--grafting", "adam or none", o.grafting)
    # Upper bounds where a typo would otherwise hang the run or exhaust memory before
    # its first step (a huge --steps is only a long run, and allowed).
    for option, value, most in (
        ("--seed", t.seed, 2**63 - 1),
        ("--corpus-seed", d.corpus_seed, 2**63 - 1),
        ("--batch-size", t.batch_size, 1 << 20),
        ("--eval-batches", t.eval_batches, 100_000),
        ("--torch-threads", t.torch_threads or 1, 4096),
        ("--n-layer", m.n_layer, 10_000),
        ("--context", m.context, 1 << 20),
        ("--corpus-bytes", d.corpus_bytes, 1 << 31),
        ("--workers", config.runtime.workers, 1024),
    ):
        need(0 <= value <= most, option, f"an integer in [0, {most}]", value)
    tokens = t.batch_size * m.context
    need(
        tokens <= 1 << 27,
        "--batch-size",
        f"at most {(1 << 27) // m.context} sequences of --context {m.context} (2^27 tokens a step)",
        t.batch_size,
    )
    r = config.runtime
    try:
        from runtime.policies.staleness import parse_staleness

        parse_staleness(r.staleness)
    except ValueError as exc:
        if r.staleness.strip().lower().startswith("replay:"):
            raise UserError(f"--staleness: {exc}") from None
        need(
            False,
            "--staleness",
            "sync, bounded:TAU, adaptive:TAU_MAX or replay:SCHEDULE.json",
            r.staleness,
        )
    need(r.workers >= 1, "--workers", "a positive integer", r.workers)
    need(isinstance(r.batched, bool), "--batched", "true or false", r.batched)
    need(isinstance(r.compile, bool), "--compile", "true or false", r.compile)
    if r.batched:
        need(o.name in SECOND_ORDER, "--batched", "--optimizer " + ", ".join(SECOND_ORDER), o.name)
    need(r.batched or not r.compile, "--compile", "--batched with it", r.compile)
    need(r.root_device in ("host", "device"), "--root-device", "host or device", r.root_device)
    try:
        from runtime.policies.placement import parse_placement

        parse_placement(r.placement)
    except ValueError:
        need(
            False,
            "--placement",
            "device, host, lifecycle or pressure[:LOW_MiB:HIGH_MiB]",
            r.placement,
        )
    for option, text in (("--device-budget", r.device_budget), ("--host-budget", r.host_budget)):
        if text is not None:
            parse_bytes(text, option)
    if r.spill_dir is not None:
        need(Path(r.spill_dir).is_dir(), "--spill-dir", "an existing folder", r.spill_dir)
    need(
        r.update_mode in ("replicated", "sharded"),
        "--update-mode",
        "replicated or sharded",
        r.update_mode,
    )
    need(
        r.ranks_per_node is None or r.ranks_per_node >= 1,
        "--ranks-per-node",
        "a positive integer",
        r.ranks_per_node,
    )
    need(
        math.isfinite(r.dist_timeout) and r.dist_timeout > 0,
        "--dist-timeout",
        "a positive number of seconds",
        r.dist_timeout,
    )
    need(r.parallel in ("ddp", "fsdp2"), "--parallel", "ddp or fsdp2", r.parallel)
    if r.parallel == "fsdp2":
        need(
            r.inter_node_staleness is None,
            "--inter-node-staleness",
            "--parallel ddp (under fsdp2 no refresh result moves)",
            r.inter_node_staleness,
        )
    if r.owner_links is not None:
        option = "--owner-links"
        need(r.update_mode == "replicated", option, "--update-mode replicated", r.update_mode)
        need(
            r.parallel == "ddp", option, "--parallel ddp (under fsdp2 no result moves)", r.parallel
        )
        owner_links_of(r)  # the profile loads and has an inter-node network
    if r.inter_node_staleness is not None:  # sync or bounded:TAU within nodes, TAU <= it
        from runtime.policies.staleness import Bounded, Sync

        inter, option = r.inter_node_staleness, "--inter-node-staleness"
        need(
            isinstance(inter, int) and not isinstance(inter, bool) and 0 <= inter <= 1_000_000,
            option,
            "an integer in [0, 1000000]",
            inter,
        )
        need(r.update_mode == "replicated", option, "--update-mode replicated", r.update_mode)
        policy = parse_staleness(r.staleness)
        need(
            isinstance(policy, Sync | Bounded),
            option,
            "--staleness sync or bounded:TAU",
            r.staleness,
        )
        floor = policy.tau if isinstance(policy, Bounded) else 0
        need(inter >= floor, option, f"at least --staleness's τ ({floor})", inter)


def parse_bytes(text: str, option: str) -> int:
    """``2GiB``, ``512MiB``, ``1.5GB`` or a plain number of bytes."""
    from traces.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


# ----------------------------------------------------------------- config files
def load_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a mapping; errors name the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"--config: {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"--config: {path}: cannot read ({exc.strerror})") from None
    suffix = path.suffix.lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--config: {path}: not UTF-8 text") from None
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"--config: {path}: invalid TOML ({exc})") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"--config: {path}: invalid JSON ({exc})") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(
                f"--config: {path}: invalid YAML ({str(exc).splitlines()[0]})"
            ) from None
        if data is None:
            data = {}
    else:
        raise UserError(f"--config: {path}: expected a .toml, .yaml, .yml or .json file")
    if not isinstance(data, dict):
        raise UserError(f"--config: {path}: expected a mapping of sections at the top level")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a config value against a field's annotation (int, float, str, bool, optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {annotation!r}")  # pragma: no cover


def apply_mapping(config: RunConfig, data: dict[str, Any], source: str) -> RunConfig:
    """Overlay a parsed config file on ``config``; unknown keys are errors."""
    hints = {name: typing.get_type_hints(type(getattr(config, name))) for name in SECTIONS}
    for section, values in data.items():
        if section not in hints:
            raise UserError(
                f"{source}: unknown section {section!r}; expected one of {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise UserError(f"{source}: [{section}] must be a table of keys")
        target = getattr(config, section)
        for key, value in values.items():
            if key not in hints[section]:
                raise UserError(f"{source}: unknown key {section}.{key}")
            setattr(target, key, _coerce(value, hints[section][key], f"{source}: {section}.{key}"))
    return config


def owner_links_of(r: RuntimeSection, ranks_per_node: int = 1) -> LinkCosts | None:
    """``--owner-links``: the rates by which the plan keeps blocks node-local, from the
    profile (``simulator.projection.owner_link_costs``, which projections use too)."""
    if r.owner_links is None:
        return None
    from simulator.profiles import ProfileError, load_profile
    from simulator.projection import owner_link_costs

    try:
        profile = load_profile(r.owner_links)
        return owner_link_costs(profile, r.root_device, ranks_per_node)
    except (ProfileError, OSError, ValueError) as exc:
        raise UserError(f"--owner-links: {exc}") from None
