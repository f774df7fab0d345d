"""One rank of data-parallel training runs, launched by torchrun from tests/test_distributed.py.

Each run (``OPTIMIZER:MODE:STALENESS[+interK][+local][+fail]``) trains a small MLP
under DDP with one of our optimizers (``+interK``: an inter-node staleness
bound of K; ``+local``: link rates under which the plan keeps every block's
refresh inside its node; ``+fail``: each rank's second refresh raises), on a global batch drawn from one seeded generator and split
across ranks, so a single process with the whole batch sees the same data.
After every step it hashes the parameters; rank r writes ``OUT/<i>-rank<r>.pt``
per run i (tensors and ints only: hashes, final parameters, collective bytes,
owned blocks). Without torchrun (``WORLD_SIZE`` unset) it is the
single-process reference, with ``--global-ranks`` times the batch.

The layers are square and the global batch is wider than them, so every
factor is full rank (under FSDP2, where a rank's block is its rows of a
weight, the layers widen so that every row slice is square or tall): the eigenbasis of a rank-deficient factor is arbitrary in
its null space, and float-level differences (two half-batch gradients averaged
vs one whole-batch gradient) would pick another basis there for reasons that
have nothing to do with distribution.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal

import torch
from torch.nn.parallel import DistributedDataParallel

from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.distributed import DistContext, ParallelConfig, init_distributed
from runtime.distributed.fsdp import attach, local, local_groups, shard_model
from runtime.distributed.gradients import trace_gradient_allreduce
from runtime.plan import LinkCosts
from runtime.policies.staleness import parse_staleness
from traces.recorder import Recorder

OPTIMIZERS = {"soap": SOAP, "shampoo": Shampoo, "kl-shampoo": KLShampoo}
DIM = 12


def params_hash(model: torch.nn.Module) -> int:
    h = hashlib.sha256()
    for p in model.parameters():  # under FSDP2, this rank's rows
        h.update(local(p).detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:7], "big")


class RowSplitLinear(torch.nn.Module):
    """A Linear whose weight and bias are ``parts`` row slices: FSDP2's shards, in one process."""

    def __init__(self, linear: torch.nn.Linear, parts: int) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(linear.weight.detach().chunk(parts))
        self.biases = torch.nn.ParameterList(linear.bias.detach().chunk(parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(
            x, torch.cat(list(self.weights)), torch.cat(list(self.biases))
        )


def row_split(model: torch.nn.Sequential, parts: int) -> torch.nn.Sequential:
    layers = [RowSplitLinear(m, parts) if isinstance(m, torch.nn.Linear) else m for m in model]
    return torch.nn.Sequential(*layers)


def full_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter whole (FSDP2's gathered, a row-split reference's concatenated)."""
    out = []
    for module in model:
        if isinstance(module, RowSplitLinear):
            out += [torch.cat([p.detach() for p in module.weights])]
            out += [torch.cat([p.detach() for p in module.biases])]
        else:
            out += [
                p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
                for p in module.parameters()
            ]
    return [p.detach().clone() for p in out]


def failing(cls: type) -> object:
    """``cls``'s refresh, raising on its second call in this process (``+fail``)."""
    real = cls.compute_refresh
    calls = [0]

    def compute(inputs: object) -> object:
        calls[0] += 1
        if calls[0] == 2:
            raise FloatingPointError("injected")
        return real(inputs)

    return compute


def train_one(spec: str, index: int, args: argparse.Namespace, ctx: DistContext | None) -> None:
    name, mode, staleness = spec.split(":", 2)
    staleness, *options = staleness.split("+")
    inter = next((int(o[5:]) for o in options if o.startswith("inter")), None)
    # a slow inter-node link: every block's result is dearer to send than to recompute
    links = LinkCosts(1e15, 1.0) if "local" in options else None
    rank = ctx.rank if ctx else 0
    world = ctx.world_size if ctx else 1
    torch.manual_seed(0)
    fsdp = mode == "fsdp2"
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, DIM),
        torch.nn.Tanh(),
        torch.nn.Linear(DIM, DIM),
        torch.nn.Linear(DIM, DIM),
    )
    if fsdp:  # widening layers: each rank's row slice of a weight is square or tall
        model = torch.nn.Sequential(
            torch.nn.Linear(DIM, 2 * DIM), torch.nn.Tanh(), torch.nn.Linear(2 * DIM, 4 * DIM)
        )
    out_dim = model[-1].out_features
    recorder = Recorder()
    execution = ExecutionConfig(
        staleness=parse_staleness(staleness),
        workers=2,
        recorder=recorder,
        parallel=ParallelConfig(ctx, mode, inter, links) if ctx and not fsdp else None,
    )
    params: object = model.parameters()
    pairs: list = []
    if fsdp and ctx:  # every rank updates its rows of every parameter
        shard_model(model, [m for m in model if isinstance(m, torch.nn.Linear)], "cpu")
        groups, pairs = local_groups([{"params": list(model.parameters())}])
        params = groups
    elif fsdp:  # the reference: the same row slices, in one process
        model = row_split(model, args.global_ranks)
        params = model.parameters()
    cls = OPTIMIZERS[name]
    if "fail" in options:  # this rank's second refresh raises, wherever it is computed
        cls = type(cls.__name__, (cls,), {"compute_refresh": staticmethod(failing(cls))})
    opt = cls(params, lr=1e-2, precondition_frequency=2, execution=execution)
    if pairs:
        attach(opt, pairs)
    net: torch.nn.Module = model
    if ctx and not fsdp:
        net = DistributedDataParallel(model)
        trace_gradient_allreduce(net, recorder, lambda: opt.optimizer_step + 1)
    generator = torch.Generator().manual_seed(1)
    global_ranks = args.global_ranks or world
    batch = args.batch
    hashes = []
    for step in range(1, args.steps + 1):
        x = torch.randn(batch * global_ranks, DIM, generator=generator)
        y = torch.randn(batch * global_ranks, out_dim, generator=generator)
        if ctx:
            x, y = x[rank * batch : (rank + 1) * batch], y[rank * batch : (rank + 1) * batch]
        if rank == args.hang_rank and step == 3:
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen: no step, no heartbeat
        loss = torch.nn.functional.mse_loss(net(x), y)
        try:
            loss.backward()
            opt.step()
        except RuntimeError as exc:
            if ctx is None:
                raise
            print(ctx.explain_failure(exc), flush=True)
            os._exit(3)
        opt.zero_grad(set_to_none=True)
        hashes.append(params_hash(model))
        if ctx:
            ctx.heartbeat(step)
    opt.close()
    spans = [s for s in recorder.spans if s.category.value == "collective"]
    allreduce = [s for s in spans if s.name == "allreduce"]  # DDP's gradients
    collective = [s for s in spans if s.name != "allreduce"]  # the optimizer's
    group_bytes: dict[str, int] = {}
    for s in collective:
        group = (s.detail or "").rpartition("(group ")[2].rstrip(")")
        group_bytes[group] = group_bytes.get(group, 0) + s.bytes
    torch.save(
        {
            "hashes": torch.tensor(hashes, dtype=torch.int64),
            "params": full_parameters(model),
            "collective_bytes": sum(s.bytes for s in collective),
            "collectives": len(collective),
            "group_bytes": group_bytes,
            "inter_updates": sorted(
                {
                    int((s.detail or "").split(" in update ")[1].split()[0])
                    for s in collective
                    if (s.detail or "").endswith("(group inter)")
                }
            ),
            "allreduce_bytes": sum(s.bytes for s in allreduce),
            "allreduce_steps": len({s.step for s in allreduce}),
            "owned_blocks": len(opt.assignment.owned_by(rank)) if opt.assignment else -1,
            "state_blocks": len(opt.store),
            "rejected": opt.rejected_refreshes,
        },
        os.path.join(args.out, f"{index}-rank{rank}.pt"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", required=True, help="OPTIMIZER:MODE:STALENESS, comma-separated")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128, help="per rank")
    parser.add_argument("--ranks-per-node", type=int, default=None)
    parser.add_argument("--global-ranks", type=int, default=None, help="reference: batch x this")
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = init_distributed(
        device_type="cpu", timeout_s=args.timeout, ranks_per_node=args.ranks_per_node
    )
    for index, spec in enumerate(args.runs.split(",")):
        train_one(spec, index, args, ctx)
    if ctx:
        ctx.barrier()
        ctx.close()


if __name__ == "__main__":
    main()
