"""One rank of data-parallel training runs, launched by torchrun from tests/test_distributed.py.

Each run (``OPTIMIZER:MODE:STALENESS[+interK][+local]``) trains a small MLP
under DDP with one of our optimizers (``+interK``: an inter-node staleness
bound of K; ``+local``: link rates under which the plan keeps every block's
refresh inside its node), on a global batch drawn from one seeded generator and split
across ranks, so a single process with the whole batch sees the same data.
After every step it hashes the parameters; rank r writes ``OUT/<i>-rank<r>.pt``
per run i (tensors and ints only: hashes, final parameters, collective bytes,
owned blocks). Without torchrun (``WORLD_SIZE`` unset) it is the
single-process reference, with ``--global-ranks`` times the batch.

The layers are square and the global batch is wider than them, so every
factor is full rank: the eigenbasis of a rank-deficient factor is arbitrary in
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
from runtime.distributed.gradients import trace_gradient_allreduce
from runtime.plan import LinkCosts
from runtime.policies.staleness import parse_staleness
from traces.recorder import Recorder

OPTIMIZERS = {"soap": SOAP, "shampoo": Shampoo, "kl-shampoo": KLShampoo}
DIM = 12


def params_hash(model: torch.nn.Module) -> int:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:7], "big")


def train_one(spec: str, index: int, args: argparse.Namespace, ctx: DistContext | None) -> None:
    name, mode, staleness = spec.split(":", 2)
    staleness, *options = staleness.split("+")
    inter = next((int(o[5:]) for o in options if o.startswith("inter")), None)
    # a slow inter-node link: every block's result is dearer to send than to recompute
    links = LinkCosts(1e15, 1.0) if "local" in options else None
    rank = ctx.rank if ctx else 0
    world = ctx.world_size if ctx else 1
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, DIM),
        torch.nn.Tanh(),
        torch.nn.Linear(DIM, DIM),
        torch.nn.Linear(DIM, DIM),
    )
    recorder = Recorder()
    execution = ExecutionConfig(
        staleness=parse_staleness(staleness),
        workers=2,
        recorder=recorder,
        parallel=ParallelConfig(ctx, mode, inter, links) if ctx else None,
    )
    opt = OPTIMIZERS[name](
        model.parameters(), lr=1e-2, precondition_frequency=2, execution=execution
    )
    net: torch.nn.Module = model
    if ctx:
        net = DistributedDataParallel(model)
        trace_gradient_allreduce(net, recorder, lambda: opt.optimizer_step + 1)
    generator = torch.Generator().manual_seed(1)
    global_ranks = args.global_ranks or world
    batch = args.batch
    hashes = []
    for step in range(1, args.steps + 1):
        x = torch.randn(batch * global_ranks, DIM, generator=generator)
        y = torch.randn(batch * global_ranks, DIM, generator=generator)
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
            "params": [p.detach().clone() for p in model.parameters()],
            "collective_bytes": sum(s.bytes for s in collective),
            "collectives": len(collective),
            "group_bytes": group_bytes,
            "allreduce_bytes": sum(s.bytes for s in allreduce),
            "allreduce_steps": len({s.step for s in allreduce}),
            "owned_blocks": len(opt.assignment.owned_by(rank)) if opt.assignment else -1,
            "state_blocks": len(opt.store),
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
