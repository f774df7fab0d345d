"""Optimizer step time of our SOAP, Shampoo and KL-Shampoo against AdamW, Muon and heavyball.

Every optimizer updates its own copy of the default GPT, seeded alike, from the
same fixed random gradients (one seeded draw, copied into ``.grad`` before every
step, outside the timed region). Each step's cost is split in two:

- **hot path**: a step in which no amortized refresh happens. The optimizers
  are built with ``precondition_frequency = 10**9``, so no refresh falls due.
- **refresh**: the extra cost of one refresh cycle. For one step the frequency
  is set to 1 (step A) and then back (step B); A computes the refresh and B
  installs it where the optimizer installs one step later (SOAP and KL-Shampoo
  have staleness 1; Shampoo and heavyball install in step A, so B is a plain
  hot step). ``refresh = median(A + B) - 2 * median(hot)``: the work that a
  refresh adds to the steps it lands in, install included, which is also what
  heavyball's in-step refresh costs.

The amortized cost per step at frequency f is ``refresh / f``. All optimizers
run in interleaved rounds (each round: a few hot steps and one A/B pair per
optimizer, round-robin, starting one further along each round), so a change in
machine load hits all of them alike; every figure is a median over rounds.
Only the ratios are the result; absolute ms depend on the machine and its load.

Run ``python benchmarks/bench_step.py --help``; ``--quick`` is a seconds-long
smoke run on a tiny model. ``--device cuda`` times the same steps on a GPU: models
and gradients live there, and every timed step is bracketed by
``torch.cuda.synchronize()`` so that the clock sees the kernels, not their launch.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from asteria_bench.config import OptimSection, resolved_optimizer
from asteria_bench.muon import muon_available
from asteria_bench.optimizers import build_optimizer, optimizer_parameter_groups, parameter_groups
from asteria_bench.workload.model import GPT, GPTConfig
from benchmarks._common import (
    DEFAULT_THREADS,
    environment_line,
    fmt,
    format_table,
    load_average,
    median,
    quartiles,
    set_threads,
)
from runtime.execution import ExecutionConfig
from runtime.optim.base import BlockedOptimizer

NEVER = 10**9
"""A precondition frequency at which no refresh falls due inside the timed window."""

OURS = (("SOAP", "soap"), ("Shampoo", "shampoo"), ("KL-Shampoo", "kl-shampoo"))
HEAVYBALL_PEERS = {"SOAP": ("SOAP", "ForeachSOAP"), "KL-Shampoo": ("KLShampoo",)}
"""Our optimizer -> heavyball class names to try, newest API first."""

QUICK_MODEL = GPTConfig(n_layer=1, n_head=2, n_embd=32, context=16)


@dataclass
class Candidate:
    """One optimizer on its own model copy, with the samples timed so far."""

    label: str  # the row name, e.g. "SOAP" or "heavyball SOAP"
    model: GPT
    optimizer: torch.optim.Optimizer
    set_refresh: Callable[[bool], None] | None  # None: no amortized work (AdamW)
    bases: Callable[[], list[torch.Tensor]] | None = None  # what a refresh replaces
    hot_ms: list[float] = field(default_factory=list)
    a_ms: list[float] = field(default_factory=list)  # step A (refresh due) per round
    b_ms: list[float] = field(default_factory=list)  # step B (the step after) per round

    @property
    def hot(self) -> float:
        return median(self.hot_ms)

    @property
    def refresh(self) -> float:
        """Median extra ms of one refresh cycle over two hot steps; 0 for AdamW."""
        if self.set_refresh is None:
            return 0.0
        return median(a + b for a, b in zip(self.a_ms, self.b_ms, strict=True)) - 2.0 * self.hot

    def refresh_split(self) -> tuple[float, float]:
        """Median extra ms of step A (compute) and of step B (install at staleness 1)."""
        return median(self.a_ms) - self.hot, median(self.b_ms) - self.hot


class Bench:
    """Builds the candidates on one set of fixed gradients and times their steps."""

    def __init__(
        self,
        model_config: GPTConfig,
        seed: int,
        grad_scale: float,
        device: torch.device | None = None,
    ) -> None:
        self.model_config = model_config
        self.seed = seed
        self.device = device or torch.device("cpu")
        # Drawn on the CPU whatever the device, so every device sees the same gradients.
        generator = torch.Generator().manual_seed(seed)
        shapes = [p.shape for p in self.new_model().parameters()]
        self.grads = [
            torch.randn(s, generator=generator).mul_(grad_scale).to(self.device) for s in shapes
        ]
        on_cuda = self.device.type == "cuda"
        self._sync: Callable[[], None] = torch.cuda.synchronize if on_cuda else lambda: None

    def new_model(self) -> GPT:
        torch.manual_seed(self.seed)  # initial weights drawn on the CPU, then moved
        return GPT(self.model_config).to(self.device)

    def step_ms(self, c: Candidate) -> float:
        """One timed ``optimizer.step()``; the gradient copy is outside the timing."""
        for p, g in zip(c.model.parameters(), self.grads, strict=True):
            p.grad = g.clone()  # heavyball sets .grad to None after a step
        self._sync()  # the copies finish before the clock starts
        start = time.perf_counter_ns()
        c.optimizer.step()
        self._sync()
        return (time.perf_counter_ns() - start) / 1e6


# ------------------------------------------------------------------ candidates
def hyperparameters(name: str) -> dict:
    """The training preset with the refresh pushed out of the timed window."""
    optim = OptimSection(name=name)
    if name not in ("adamw", "muon"):
        optim.precondition_frequency = NEVER
    if name == "shampoo":
        optim.start_preconditioning_step = 1  # roots once at step 1, then never
    return resolved_optimizer(optim)


def our_candidate(
    bench: Bench, label: str, name: str, *, batched: bool = False, compile: bool = False
) -> Candidate:
    model = bench.new_model()
    hp = hyperparameters(name)
    groups = optimizer_parameter_groups(name, model, hp["weight_decay"])
    execution = ExecutionConfig(batched=batched or compile, compile=compile)
    optimizer = build_optimizer(name, groups, hp, execution)
    if name in ("adamw", "muon"):
        return Candidate(label, model, optimizer, set_refresh=None)

    def set_refresh(on: bool) -> None:
        for group in optimizer.param_groups:
            group["precondition_frequency"] = 1 if on else NEVER

    def bases() -> list[torch.Tensor]:
        assert isinstance(optimizer, BlockedOptimizer)
        out = []
        for block in optimizer.blocks:
            if block.is_matrix:
                state = optimizer.block_state(block.id)
                for slot in ("QL", "QR", "L_root", "R_root"):
                    value = getattr(state, slot, None)
                    if value is not None:
                        out.append(value)
        return out

    return Candidate(label, model, optimizer, set_refresh, bases)


def heavyball_candidates(bench: Bench, frequency: int) -> tuple[list[Candidate], list[str]]:
    """heavyball's SOAP and KL-Shampoo configured like ours, eager; and a settings note."""
    try:
        import heavyball
        import heavyball.utils
    except Exception as exc:  # not installed, or broken against this torch
        print(f"heavyball: cannot import ({type(exc).__name__}: {exc}); skipping that comparison.")
        return [], []
    # heavyball compiles its fused kernels with torch.compile unless compile_mode is
    # None; ours run eagerly, so does heavyball here.
    heavyball.utils.compile_mode = None
    version = getattr(heavyball, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("heavyball")
    notes = [
        f"heavyball {version}, eager (heavyball.utils.compile_mode = None, compile_step=False)"
    ]
    out = []
    for ours, class_names in HEAVYBALL_PEERS.items():
        cls_name = next((n for n in class_names if hasattr(heavyball, n)), None)
        if cls_name is None:
            print(f"heavyball: no class among {class_names}; skipping {ours}.")
            continue
        name = dict(OURS)[ours]
        hp = hyperparameters(name)
        kwargs = dict(
            lr=hp["lr"],
            betas=(hp["beta1"], hp["beta2"]),
            shampoo_beta=hp.get("shampoo_beta") or hp["beta2"],
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            precondition_frequency=NEVER,
            # ours: SOAP rotates sides <= max_precond_dim, KL-Shampoo (None) every side
            max_precond_dim=hp.get("max_precond_dim") or 10000,
            precondition_1d=False,  # 1-D parameters get Adam, as ours do
            warmup_steps=0,
            compile_step=False,
        )
        if name == "kl-shampoo" and hp["eigenvalue_init"] is not None:
            kwargs["init_factor"] = hp["eigenvalue_init"]
        model = bench.new_model()
        try:
            optimizer = getattr(heavyball, cls_name)(
                parameter_groups(model, hp["weight_decay"]), **kwargs
            )
        except TypeError as exc:
            print(f"heavyball.{cls_name}: cannot configure ({exc}); skipping {ours}.")
            continue
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        notes.append(f"heavyball.{cls_name}({shown}) [multi_tensor default]")
        out.append(_heavyball_candidate(f"heavyball {ours}", model, optimizer))
    return out, notes


def _heavyball_candidate(label: str, model: GPT, optimizer: torch.optim.Optimizer) -> Candidate:
    # heavyball refreshes inside step() when its cumulative schedule (1/f per step)
    # crosses an integer: 1.0 makes the next step a refresh step.
    def set_refresh(on: bool) -> None:
        optimizer.precond_schedule = 1.0 if on else 1.0 / NEVER  # type: ignore[attr-defined]

    def bases() -> list[torch.Tensor]:
        # heavyball keeps each parameter's eigenbases in a state list under a key
        # such as "scale_by_soap_Q_3" and refreshes them in place.
        out: list[torch.Tensor] = []
        for pstate in optimizer.state.values():
            for inner in pstate.values():
                if not isinstance(inner, dict):
                    continue
                for key, value in inner.items():
                    if isinstance(key, str) and "Q" in key.split("_") and isinstance(value, list):
                        out.extend(v for v in value if torch.is_tensor(v))
        return out

    return Candidate(label, model, optimizer, set_refresh, bases)


# ---------------------------------------------------------------------- timing
def warm_up(bench: Bench, c: Candidate, steps: int) -> None:
    """The first (init) call and hot steps, checking that the split is what it claims.

    A hot step must leave the bases (or roots) as they are and an A/B cycle must
    change them; otherwise the table would time something else than it says.
    """
    for _ in range(1 + steps):
        bench.step_ms(c)
    if c.set_refresh is None:
        return
    assert c.bases is not None
    before = [t.clone() for t in c.bases()]
    if not before:
        raise RuntimeError(f"{c.label}: found no preconditioner bases to check")
    bench.step_ms(c)
    if not _same(before, c.bases()):
        raise RuntimeError(f"{c.label}: a hot step changed the preconditioner (refresh leaked)")
    c.set_refresh(True)
    bench.step_ms(c)
    c.set_refresh(False)
    bench.step_ms(c)
    if _same(before, c.bases()):
        raise RuntimeError(f"{c.label}: the A/B refresh cycle did not refresh")
    bench.step_ms(c)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def run_rounds(bench: Bench, candidates: list[Candidate], rounds: int, hot_per_round: int) -> None:
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            k = r % len(candidates)
            for c in candidates[k:] + candidates[:k]:
                for _ in range(hot_per_round):
                    c.hot_ms.append(bench.step_ms(c))
                if c.set_refresh is not None:
                    c.set_refresh(True)
                    c.a_ms.append(bench.step_ms(c))
                    c.set_refresh(False)
                    c.b_ms.append(bench.step_ms(c))
    finally:
        gc.enable()


# --------------------------------------------------------------------- reports
def vs_adamw_table(candidates: list[Candidate], adamw: Candidate, frequency: int) -> str:
    headers = [
        "optimizer",
        "hot-path median ms",
        "ratio vs AdamW",
        "refresh ms",
        f"amortized per step at f={frequency} ms",
        "total ratio vs AdamW",
        "hot p25-p75 ms",
    ]
    rows = []
    for c in candidates:
        amortized = c.refresh / frequency
        p25, p75 = quartiles(c.hot_ms)
        rows.append(
            [
                c.label,
                fmt(c.hot, 3),
                fmt(c.hot / adamw.hot),
                fmt(c.refresh, 2) if c.set_refresh else "-",
                fmt(amortized, 3) if c.set_refresh else "-",
                fmt((c.hot + amortized) / adamw.hot),
                f"{p25:.3f}-{p75:.3f}",
            ]
        )
    return format_table(headers, rows)


def vs_heavyball_table(pairs: list[tuple[Candidate, Candidate]], frequency: int) -> str:
    headers = [
        "optimizer",
        "ours hot ms",
        "heavyball hot ms",
        "hot ratio ours/heavyball",
        f"ours hot+refresh/{frequency} ms",
        f"heavyball hot+refresh/{frequency} ms",
        "total ratio ours/heavyball",
    ]
    rows = []
    for ours, peer in pairs:
        ours_total = ours.hot + ours.refresh / frequency
        peer_total = peer.hot + peer.refresh / frequency
        rows.append(
            [
                ours.label,
                fmt(ours.hot, 3),
                fmt(peer.hot, 3),
                fmt(ours.hot / peer.hot),
                fmt(ours_total, 3),
                fmt(peer_total, 3),
                fmt(ours_total / peer_total),
            ]
        )
    return format_table(headers, rows)


def batched_table(pairs: list[tuple[Candidate, Candidate]], frequency: int) -> str:
    headers = [
        "optimizer",
        "per-block hot ms",
        "batched hot ms",
        "hot ratio batched/per-block",
        f"total ratio at f={frequency}",
    ]
    rows = []
    for per_block, batched in pairs:
        total_a = per_block.hot + per_block.refresh / frequency
        total_b = batched.hot + batched.refresh / frequency
        rows.append(
            [
                batched.label.replace(" batched", "", 1)
                if "compile" not in batched.label
                else batched.label,
                fmt(per_block.hot, 3),
                fmt(batched.hot, 3),
                fmt(batched.hot / per_block.hot),
                fmt(total_b / total_a),
            ]
        )
    return format_table(headers, rows)


def refresh_split_table(candidates: list[Candidate]) -> str:
    headers = ["optimizer", "refresh ms", "step A extra ms", "step B extra ms", "cycles"]
    rows = []
    for c in candidates:
        if c.set_refresh is not None:
            a, b = c.refresh_split()
            rows.append([c.label, fmt(c.refresh), fmt(a), fmt(b), str(len(c.a_ms))])
    return format_table(headers, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Optimizer step time (hot path and amortized refresh) vs AdamW and heavyball.",
    )
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument(
        "--hot-per-round", type=int, default=3, help="hot steps per optimizer and round (default 3)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="hot steps after the init call (default 5)"
    )
    parser.add_argument(
        "--frequency",
        type=int,
        default=10,
        help="precondition frequency f for the amortized cost refresh/f (default 10)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch intra-op threads (default {DEFAULT_THREADS}; 0 keeps torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model and gradient seed (default 0)")
    parser.add_argument(
        "--grad-scale", type=float, default=1e-2, help="std of the fixed gradients (default 1e-2)"
    )
    parser.add_argument("--n-layer", type=int, default=GPTConfig.n_layer)
    parser.add_argument("--n-head", type=int, default=GPTConfig.n_head)
    parser.add_argument("--n-embd", type=int, default=GPTConfig.n_embd)
    parser.add_argument("--context", type=int, default=GPTConfig.context)
    parser.add_argument("--no-heavyball", action="store_true", help="skip the heavyball table")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the batched path under torch.compile (ExecutionConfig(compile=True))",
    )
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to step (default cpu)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, 3 rounds: a smoke run of a few seconds"
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "hot_per_round", "frequency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.warmup < 0:
        parser.error("--warmup must be a non-negative integer")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)
    if args.quick:
        model_config = QUICK_MODEL
        args.rounds, args.hot_per_round, args.warmup = 3, 2, 2
    else:
        model_config = GPTConfig(
            n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, context=args.context
        )
    print(environment_line())
    bench = Bench(model_config, args.seed, args.grad_scale, torch.device(args.device))
    n_params = sum(g.numel() for g in bench.grads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device {where}; model {model_config} ({n_params:,} parameters); "
        f"fixed gradients: seed {args.seed}, "
        f"std {args.grad_scale:g}; {args.rounds} rounds x ({args.hot_per_round} hot + 1 A/B "
        f"refresh cycle) per optimizer; presets from asteria_bench.config.OPTIMIZER_PRESETS"
    )

    adamw = our_candidate(bench, "AdamW (torch)", "adamw")
    baselines = [adamw]
    if muon_available():  # torch's Muon on hidden matrices, AdamW on the rest
        baselines.append(our_candidate(bench, "Muon (torch)", "muon"))
    else:
        print(f"Muon: torch {torch.__version__} has no torch.optim.Muon; skipping it.")
    ours = [our_candidate(bench, label, name) for label, name in OURS]
    batched = [our_candidate(bench, f"{label} batched", name, batched=True) for label, name in OURS]
    if args.compile:  # compiled during warm-up, outside the timed rounds
        batched += [
            our_candidate(bench, f"{label} batched+compile", name, compile=True)
            for label, name in OURS
        ]
    peers: list[Candidate] = []
    notes: list[str] = []
    if not args.no_heavyball:
        peers, notes = heavyball_candidates(bench, args.frequency)
    print(f"ours: ExecutionConfig() defaults {ExecutionConfig().describe()}")
    for note in notes:
        print(note)
    candidates = [*baselines, *ours, *batched, *peers]

    started = time.perf_counter()
    for c in candidates:
        warm_up(bench, c, args.warmup)
    run_rounds(bench, candidates, args.rounds, args.hot_per_round)
    elapsed = time.perf_counter() - started
    for c in candidates:
        close = getattr(c.optimizer, "close", None)  # ours may own refresh workers
        if callable(close):
            close()

    print()
    print(f"Step time vs torch.optim.AdamW (medians of interleaved runs, f={args.frequency})")
    print(vs_adamw_table([*baselines, *ours, *batched, *peers], adamw, args.frequency))
    print()
    print("Batched execution (ExecutionConfig(batched=True)) vs per block (goal: ratio <= 1.00)")
    pairs = [(o, b) for b in batched for o in ours if b.label.split(" batched")[0] == o.label]
    print(batched_table(pairs, args.frequency))
    if peers:
        by_label = {c.label: c for c in ours}
        pairs = [(by_label[p.label.removeprefix("heavyball ")], p) for p in peers]
        print()
        print("Ours vs heavyball, same configuration (goal: ratio <= 1.00)")
        print(vs_heavyball_table(pairs, args.frequency))
    elif not args.no_heavyball:
        print("\nheavyball comparison skipped (see above).")
    print()
    print(
        "Where the refresh lands (extra ms over a hot step; A computes it, B installs it "
        "for staleness-1 SOAP / KL-Shampoo)"
    )
    print(refresh_split_table([*ours, *batched, *peers]))
    print(f"\ntimed in {elapsed:.1f} s; load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
