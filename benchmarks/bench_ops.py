"""Operators per optimizer step: a hardware-independent measure of launch overhead.

On a GPU at LLM scale an optimizer step of small per-block kernels is bound by
how many kernels it launches, not by their FLOPs. Counting the operators one
step dispatches, with ``torch.profiler`` on the CPU, measures that without a
GPU, and the count is deterministic: it depends on the model's shapes, the
optimizer and its configuration, never on the machine or its load.

For each optimizer the script builds it on the model (``bench_step``'s
presets, refresh pushed out of the window: ``precondition_frequency = 10**9``),
makes the first (init) call and one hot step, then profiles one more hot step
and one step in which a refresh falls due (a second warm-up step changes no
count: checked for every row on the default GPT). It counts:

- **ops**: aten operators called from Python (the top of the profiler's
  tree: an operator inside another operator is part of it), the dispatch count;
- **kernel ops**: the same without view and metadata operators (``view``,
  ``slice``, ``select``, ``t``, ``unbind``, ...) and without a ``to`` that
  returns its input unchanged: those launch no kernel.

Rows: ours per block and batched (``ExecutionConfig(batched=True)``), and where
installed heavyball (eager) and pytorch_optimizer, on the default GPT and with
``--large`` on a 12-layer, 768-wide GPT. The goal is batched <= 1/5 of per
block. ``--placement host`` (or ``lifecycle``, ``pressure``) counts ours with
their state tiered: the store fetches and writes back each block's slots, and
the batched path stacks them every step and copies back the ones it wrote. Run ``python benchmarks/bench_ops.py --help``; ``--quick`` is a tiny model.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.profiler import ProfilerActivity, profile

from asteria_bench.muon import muon_available
from asteria_bench.optimizers import build_optimizer, optimizer_parameter_groups, parameter_groups
from asteria_bench.workload.model import GPT, GPTConfig
from benchmarks._common import environment_line, format_table, set_threads
from benchmarks.bench_step import NEVER, QUICK_MODEL, hyperparameters
from runtime.execution import ExecutionConfig
from runtime.policies.placement import parse_placement

LARGE_MODEL = GPTConfig(n_layer=12, n_head=12, n_embd=768, context=64)
OURS = (("SOAP", "soap"), ("Shampoo", "shampoo"), ("KL-Shampoo", "kl-shampoo"))
VIEW_OPS = frozenset(
    "aten::" + name
    for name in (
        "view",
        "reshape",
        "_reshape_alias",
        "_unsafe_view",
        "slice",
        "select",
        "t",
        "transpose",
        "numpy_T",
        "mT",
        "as_strided",
        "unsqueeze",
        "squeeze",
        "expand",
        "expand_as",
        "alias",
        "detach",
        "permute",
        "diagonal",
        "unbind",
        "split",
        "split_with_sizes",
        "chunk",
        "narrow",
        "lift_fresh",
        "view_as",
        "unflatten",
        "result_type",
        "is_nonzero",
        "is_same_size",
        "size",
        "stride",
        "dim",
    )
)
"""Operators that only make a new view or read metadata: no kernel is launched."""


@dataclass
class Counted:
    """One optimizer's operator counts on a hot step and on a refresh step."""

    label: str
    family: str
    hot_ops: int
    hot_kernel_ops: int
    refresh_ops: int | None
    refresh_kernel_ops: int | None


@dataclass
class Subject:
    """An optimizer under count and how to make its next step a refresh step."""

    label: str
    family: str
    model: GPT
    optimizer: torch.optim.Optimizer
    set_refresh: Callable[[bool], None] | None


Make = Callable[[], Subject]
"""Builds a subject when its turn comes: one model and optimizer state in memory at a time
(at the large size one optimizer's state is gigabytes; all of them at once do not fit)."""


def count_ops(step: Callable[[], None]) -> tuple[int, int]:
    """(ops, kernel ops) dispatched by one call of ``step``, counted by the CPU profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = kernels = 0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is not None:
            continue  # inside another aten operator: part of it
        ops += 1
        kernels += launches_kernel(event)
    return ops, kernels


def launches_kernel(event: Any) -> bool:
    """Not a view or metadata operator, nor a ``to`` that returns its input as it is."""
    if event.name in VIEW_OPS:
        return False
    if event.name == "aten::to":  # a conversion copies in its child aten::_to_copy
        return any(child.name == "aten::_to_copy" for child in event.cpu_children)
    return True


class Counter:
    """Fixed random gradients for one model shape, and the count of each subject's steps."""

    def __init__(self, config: GPTConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        shapes = [p.shape for p in self.new_model().parameters()]
        self.grads = [torch.randn(s, generator=generator).mul_(1e-2) for s in shapes]

    def new_model(self) -> GPT:
        torch.manual_seed(self.seed)
        return GPT(self.config)

    def set_grads(self, s: Subject) -> None:
        for p, g in zip(s.model.parameters(), self.grads, strict=True):
            p.grad = g.clone()

    def count(self, s: Subject) -> Counted:
        """Ops of ``optimizer.step()`` alone (gradients set outside the profiled region)."""
        for _ in range(2):  # the init call and one hot step (batched groups link on the first)
            self.set_grads(s)
            s.optimizer.step()
        self.set_grads(s)
        hot = count_ops(s.optimizer.step)
        refresh: tuple[int | None, int | None] = (None, None)
        if s.set_refresh is not None:
            s.set_refresh(True)
            self.set_grads(s)
            refresh = count_ops(s.optimizer.step)
            s.set_refresh(False)
        close = getattr(s.optimizer, "close", None)
        if callable(close):
            close()
        return Counted(s.label, s.family, *hot, *refresh)


# ------------------------------------------------------------------ subjects
def ours(counter: Counter, label: str, name: str, batched: bool, placement: str = "device") -> Make:
    return lambda: our_subject(counter, label, name, batched, placement)


def our_subject(
    counter: Counter, label: str, name: str, batched: bool, placement: str = "device"
) -> Subject:
    model = counter.new_model()
    hp = hyperparameters(name)
    groups = optimizer_parameter_groups(name, model, hp["weight_decay"])
    tiered = placement != "device" and name not in ("adamw", "muon")
    execution = ExecutionConfig(
        batched=batched, placement=parse_placement(placement) if tiered else None
    )
    optimizer = build_optimizer(name, groups, hp, execution)
    if name in ("adamw", "muon"):
        return Subject(label, label, model, optimizer, None)

    def set_refresh(on: bool) -> None:
        for group in optimizer.param_groups:
            group["precondition_frequency"] = 1 if on else NEVER

    path = "batched" if batched else "per block"
    return Subject(f"{label} ours {path}", label, model, optimizer, set_refresh)


def heavyball_subjects(counter: Counter) -> list[Make]:
    try:
        import heavyball
        import heavyball.utils
    except Exception as exc:
        print(f"heavyball: cannot import ({type(exc).__name__}: {exc}); skipping it.")
        return []
    heavyball.utils.compile_mode = None  # eager, as ours
    out: list[Make] = []
    for family, cls_name in (("SOAP", "SOAP"), ("KL-Shampoo", "KLShampoo")):
        cls = getattr(heavyball, cls_name, None)
        if cls is not None:
            out.append(lambda family=family, cls=cls: heavyball_subject(counter, family, cls))
    return out


def heavyball_subject(counter: Counter, family: str, cls: Any) -> Subject:
    hp = hyperparameters("soap" if family == "SOAP" else "kl-shampoo")
    model = counter.new_model()
    optimizer = cls(
        parameter_groups(model, hp["weight_decay"]),
        lr=hp["lr"],
        betas=(hp["beta1"], hp["beta2"]),
        weight_decay=hp["weight_decay"],
        precondition_frequency=NEVER,
        max_precond_dim=10000,
        precondition_1d=False,
        warmup_steps=0,
        compile_step=False,
    )

    def set_refresh(on: bool) -> None:
        optimizer.precond_schedule = 1.0 if on else 1.0 / NEVER

    return Subject(f"{family} heavyball", family, model, optimizer, set_refresh)


def pytorch_optimizer_subjects(counter: Counter) -> list[Make]:
    """SOAP and ScalableShampoo; their refresh steps are not counted (None): changing the
    frequency between steps is not something they read back, so no step here refreshes."""
    try:
        import pytorch_optimizer
    except Exception as exc:
        print(f"pytorch_optimizer: cannot import ({type(exc).__name__}: {exc}); skipping it.")
        return []

    def soap() -> Subject:
        hp = hyperparameters("soap")
        model = counter.new_model()
        optimizer = pytorch_optimizer.SOAP(
            parameter_groups(model, hp["weight_decay"]),
            lr=hp["lr"],
            betas=(hp["beta1"], hp["beta2"]),
            weight_decay=hp["weight_decay"],
            precondition_frequency=NEVER,
        )
        return Subject("SOAP pytorch_optimizer", "SOAP", model, optimizer, None)

    def shampoo() -> Subject:
        hp = hyperparameters("shampoo")
        model = counter.new_model()
        optimizer = pytorch_optimizer.ScalableShampoo(
            parameter_groups(model, hp["weight_decay"]),
            lr=hp["lr"],
            betas=(hp["beta1"], hp["beta2"]),
            weight_decay=hp["weight_decay"],
            block_size=hp["block_size"],
            start_preconditioning_step=1,
            preconditioning_compute_steps=NEVER,
        )
        label = "Shampoo pytorch_optimizer (Scalable)"
        return Subject(label, "Shampoo", model, optimizer, None)

    return [soap, shampoo]


# -------------------------------------------------------------------- report
def table(rows: list[Counted]) -> str:
    per_block = {r.family: r for r in rows if r.label.endswith("ours per block")}
    headers = ["optimizer", "hot ops", "hot kernel ops", "vs ours per block", "refresh-step ops"]
    body = []
    for r in rows:
        base = per_block.get(r.family)
        ratio = f"{r.hot_kernel_ops / base.hot_kernel_ops:.3f}" if base else "-"
        body.append(
            [
                r.label,
                str(r.hot_ops),
                str(r.hot_kernel_ops),
                ratio,
                "-" if r.refresh_ops is None else str(r.refresh_ops),
            ]
        )
    return format_table(headers, body)


def run(config: GPTConfig, peers: bool, placement: str = "device") -> list[Counted]:
    counter = Counter(config)
    n_params = sum(g.numel() for g in counter.grads)
    print(f"model {config} ({n_params:,} parameters)", flush=True)
    makes = [ours(counter, "AdamW (torch)", "adamw", False)]
    if muon_available():
        makes.append(ours(counter, "Muon (torch)", "muon", False))
    for label, name in OURS:
        makes += [ours(counter, label, name, b, placement) for b in (False, True)]
    if peers:
        makes += heavyball_subjects(counter) + pytorch_optimizer_subjects(counter)
    rows = []
    for make in makes:
        row = counter.count(make())
        gc.collect()  # the subject (its hooks make cycles) is freed before the next is built
        rows.append(row)
        print(f"  counted {row.label}", flush=True)
    rows.sort(key=lambda r: (r.family, r.label))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Operators per optimizer step (torch.profiler, CPU): ours per block, "
        "ours batched, heavyball, pytorch_optimizer."
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="also a 12-layer, 768-wide GPT (~40 min on one thread: eigh and QR of its "
        "3072-wide SOAP and KL-Shampoo factors)",
    )
    parser.add_argument("--no-peers", action="store_true", help="only ours, AdamW and Muon")
    parser.add_argument("--quick", action="store_true", help="a tiny model: a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--placement",
        default="device",
        help="where our optimizers keep their state: device (default), host, lifecycle,"
        " pressure[:LOW_MiB:HIGH_MiB]",
    )
    args = parser.parse_args(argv)
    try:
        parse_placement(args.placement)
    except ValueError as exc:
        parser.error(f"--placement: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads or None)
    print(environment_line())
    configs = [QUICK_MODEL] if args.quick else [GPTConfig()]
    if args.large and not args.quick:
        configs.append(LARGE_MODEL)
    for config in configs:
        rows = run(config, peers=not args.no_peers, placement=args.placement)
        print()
        print(
            f"Operators per optimizer step, n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"ours with placement {args.placement}"
        )
        print(table(rows))
        for family in ("SOAP", "Shampoo", "KL-Shampoo"):
            pair = {r.label: r for r in rows if r.family == family}
            a, b = pair.get(f"{family} ours per block"), pair.get(f"{family} ours batched")
            if a and b:
                ratio = b.hot_kernel_ops / a.hot_kernel_ops
                verdict = "met" if ratio <= 0.2 else "not met"
                print(f"{family}: batched / per block = {ratio:.3f} (goal <= 0.2: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
