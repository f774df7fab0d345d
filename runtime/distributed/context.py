"""The process group a run trains in: ranks, nodes, the side groups of publication, liveness.

``DistContext`` is made once per process, from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) or from an
explicit ``ranks_per_node`` (so that 2 emulated nodes x 2 ranks run on one
machine). It holds:

- the default group (DDP's gradient all-reduce, the sharded all-gather);
- a *publication* group with the same ranks, so that refresh results move on
  connections of their own and overlap the gradient traffic;
- per node an intra-node group, and per local rank an inter-node group (the
  ranks with that local rank on every node): the two levels of hierarchical
  publication;
- a liveness board in the rendezvous store: every rank writes the last step it
  finished, and a daemon thread writes the time every second, so that a rank
  whose collective times out can name the rank that died, froze, or lags.

gloo on CPU, NCCL on CUDA; nothing here is home-made transport.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from runtime.plan.ownership import Topology


class DistError(RuntimeError):
    """A distributed run cannot go on (a rank died, hung or refused); one line naming it."""


@dataclass
class DistContext:
    """This process's place in the run, and the groups it talks over."""

    rank: int
    world_size: int
    topology: Topology
    backend: str
    timeout_s: float
    publish_group: Any = None
    intra_group: Any = None
    inter_group: Any = None
    ranks_per_host: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE): they
    # share its cores, whatever nodes ``topology`` emulates
    _store: Any = field(default=None, repr=False)
    _alive: threading.Event = field(default_factory=threading.Event, repr=False)
    _beat: threading.Thread | None = field(default=None, repr=False)

    HEARTBEAT_S = 1.0
    """How often a rank's liveness thread writes the time to the store."""

    @property
    def local_rank(self) -> int:
        return self.rank % self.topology.local_size

    @property
    def is_leader(self) -> bool:
        """Rank 0 writes the run directory's shared files."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """This rank's device: its machine's GPU under NCCL, else the requested one.

        Indexed by the rank on its machine, not in its (possibly emulated) node:
        with ``--ranks-per-node`` below the machine's ranks, two ranks of one
        machine are in different nodes and must still not share a GPU.
        """
        if requested.type == "cuda":
            return torch.device("cuda", host_gpu(self.rank, self.ranks_per_host))
        return requested

    # ------------------------------------------------------------- liveness
    def heartbeat(self, step: int) -> None:
        """Record that this rank finished ``step`` (one small write to the store)."""
        if self._store is not None:
            self._store.set(f"asteria/step/{self.rank}", str(step))

    def start_liveness(self) -> None:
        """A daemon thread writing this rank's wall time to the store every ``HEARTBEAT_S``.

        A frozen process (stopped, deadlocked with the GIL held) stops writing;
        a dead one too. The thread ends with ``close``.
        """
        if self._store is None:
            return
        store, key = self._store, f"asteria/alive/{self.rank}"

        def beat() -> None:
            while not self._alive.is_set():
                try:
                    store.set(key, repr(time.time()))
                except Exception:
                    return
                self._alive.wait(self.HEARTBEAT_S)

        self._beat = threading.Thread(target=beat, name="liveness", daemon=True)
        self._beat.start()

    def silent(self) -> list[tuple[int, float]]:
        """Ranks with no sign of life for over three heartbeats: (rank, seconds), longest first."""
        if self._store is None:
            return []
        now, out = time.time(), []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            try:
                seen = float(self._store.get(f"asteria/alive/{rank}").decode())
            except Exception:
                continue
            if now - seen > 3 * self.HEARTBEAT_S:
                out.append((rank, now - seen))
        return sorted(out, key=lambda rs: (-rs[1], rs[0]))

    def laggards(self) -> list[tuple[int, int]]:
        """Ranks behind the most advanced one, as (rank, last finished step), slowest first."""
        if self._store is None:
            return []
        steps = {}
        for rank in range(self.world_size):
            try:
                steps[rank] = int(self._store.get(f"asteria/step/{rank}").decode())
            except Exception:
                steps[rank] = 0
        top = max(steps.values(), default=0)
        return sorted(((r, s) for r, s in steps.items() if s < top), key=lambda rs: (rs[1], rs[0]))

    def explain_failure(self, exc: BaseException) -> DistError:
        """One line: which rank this is, what failed, and which rank looks dead or stuck."""
        silent = self.silent()
        behind = [(r, s) for r, s in self.laggards() if r not in {q for q, _ in silent}]
        parts = [f"rank {r} (no sign of life for {age:.0f} s)" for r, age in silent]
        parts += [f"rank {r} (last finished step {s})" for r, s in behind]
        culprit = f"; suspect: {', '.join(parts)}" if parts else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DistError(
            f"rank {self.rank}: a collective failed or timed out after up to {self.timeout_s:g} s"
            f" ({first[:160]}){culprit}; a rank died or hangs"
        )

    def share(self, key: str, value: str) -> str:
        """Rank 0's ``value`` for ``key``, on every rank (through the rendezvous store).

        For small strings such as the run directory's path: no pickle, and
        every rank waits (up to the timeout) for rank 0 to have set it.
        """
        if self._store is None:
            raise DistError("the rendezvous store is not reachable; cannot share " + key)
        name = f"asteria/share/{key}"
        if self.rank == 0:
            self._store.set(name, value)
            return value
        self._store.wait([name], dt.timedelta(seconds=self.timeout_s))
        return str(self._store.get(name).decode())

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Stop the liveness thread (before the store goes away), then leave the group."""
        self._alive.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if dist.is_initialized():
            dist.destroy_process_group()


_COLLECTIVE_SIGNS = ("gloo", "nccl", "connection closed", "timed out", "timeout", "peer")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because a peer died or hung."""
    if isinstance(exc, DistError):
        return False  # already explained
    base = getattr(dist, "DistError", None)
    if base is not None and isinstance(exc, base):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _COLLECTIVE_SIGNS)


def collective_device(backend: str) -> torch.device:
    """Where a tensor made for a collective must live: the current GPU under NCCL, which
    has no host transport (a CPU tensor fails there), the host under gloo."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def env_world() -> tuple[int, int, int | None]:
    """(rank, world size, local world size) from torchrun's environment; (0, 1, None) outside it."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return rank, world, int(local) if local else None


def host_gpu(rank: int, ranks_per_host: int) -> int:
    """The GPU index of ``rank`` on its machine (torchrun's ``LOCAL_RANK`` where it is set)."""
    local = int(os.environ.get("LOCAL_RANK", rank % max(1, ranks_per_host)))
    return local % max(1, torch.cuda.device_count())


def init_distributed(
    *, device_type: str, timeout_s: float = 60.0, ranks_per_node: int | None = None
) -> DistContext | None:
    """Join the process group torchrun set up; None when not launched by torchrun.

    One rank under torchrun still joins (a process group of one): the same
    collectives run, which is how a single GPU checks the NCCL path.

    ``ranks_per_node`` overrides ``LOCAL_WORLD_SIZE`` (emulated nodes on one machine).
    """
    if "RANK" not in os.environ:
        return None  # not launched by torchrun: one process, no process group
    rank, world, local = env_world()
    per_node = ranks_per_node or local or world
    topology = Topology(world, per_node)
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = dt.timedelta(seconds=timeout_s)
    if backend == "nccl":  # NCCL binds its communicators to the current device
        torch.cuda.set_device(host_gpu(rank, local or world))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    groups = _groups(topology, rank, backend, timeout)
    store = _store()
    ctx = DistContext(
        rank=rank,
        world_size=world,
        topology=topology,
        backend=backend,
        timeout_s=timeout_s,
        publish_group=groups[0],
        intra_group=groups[1],
        inter_group=groups[2],
        ranks_per_host=local or world,
        _store=store,
    )
    ctx.heartbeat(0)
    ctx.start_liveness()
    return ctx


def _groups(topology: Topology, rank: int, backend: str, timeout: dt.timedelta) -> tuple[Any, ...]:
    """(publication, intra-node, inter-node) groups of this rank.

    ``new_group`` must be called by every rank for every group, in the same
    order, even for groups it is not in.
    """
    world = topology.world_size
    per = topology.local_size
    publish = dist.new_group(list(range(world)), backend=backend, timeout=timeout)
    intra = inter = None
    for node in range(topology.nodes):
        members = list(range(node * per, (node + 1) * per))
        group = dist.new_group(members, backend=backend, timeout=timeout)
        if rank in members:
            intra = group
    for local in range(per):
        members = list(range(local, world, per))
        group = dist.new_group(members, backend=backend, timeout=timeout)
        if rank in members:
            inter = group
    return publish, intra, inter


def _store() -> Any:
    """The rendezvous store torchrun created (TCPStore), for the liveness board."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None
