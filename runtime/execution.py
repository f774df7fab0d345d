"""``ExecutionConfig``: how an optimizer's work is executed, not what it computes.

It is the one keyword-only constructor argument through which the runtime's
features plug into ``Shampoo``, ``SOAP`` and ``KLShampoo``: when refreshes are
installed (staleness policy), who computes them (inline, host worker threads,
or a low-priority CUDA stream), whether blocks' refreshes are staggered, and
where spans go (recorder). The default is the synchronous reference with all
state on the compute device, so ``SOAP(params)`` behaves like the published
SOAP. Only the staleness policy (and staggering) may change the numbers, and
only in the way ALGORITHMS.md §6 defines: a refresh applied later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.policies.placement import PlacementPolicy
from runtime.policies.staleness import StalenessPolicy, Sync
from traces.recorder import NULL_RECORDER, Recorder

if TYPE_CHECKING:
    from runtime.distributed import ParallelConfig
    from runtime.spill import SpillStore

ROOT_DEVICES = ("host", "device")


@dataclass(frozen=True)
class ExecutionConfig:
    """Runtime-only options; not part of an optimizer's checkpointed hyperparameters.

    - ``workers``: refresh threads for asynchronous policies (ignored by ``Sync``).
    - ``root_device``: ``host`` computes refreshes on CPU threads (copying the
      snapshot to host memory when training on a GPU); ``device`` runs them on
      a low-priority CUDA stream of the training device.
    - ``stagger``: give block k its refresh at steps where t ≡ k (mod f), so
      that not every block comes due on the same step. Off by default, which
      is the references' schedule.
    - ``hooks``: with an asynchronous policy, register post-accumulate-grad
      hooks that move each parameter's finished refresh results to its device
      as soon as its gradient is ready, overlapping the rest of the backward.
    - ``trace_blocks``: a span per block for the factor update and the
      preconditioning (a few µs per block and step when the recorder is on).
    - ``parallel``: data parallelism (``runtime.distributed``): each block's
      refresh computed by its owner and published (``replicated``), or each
      rank updating its own blocks and gathering the rest (``sharded``).
    - ``batched``: step same-shape blocks together as stacked tensors: matmuls
      once per group instead of per block, elementwise work once for all
      groups of a param group (``torch._foreach_*``; ``runtime.optim.batched``);
      same math, fewer launches. Off by default until measured at least as
      fast on the hardware at hand.
    - ``compile``: run the batched hot path (statistics and preconditioning of
      every group) through ``torch.compile``, which fuses each phase's
      elementwise kernels; needs ``batched``. Same math to round-off; whether it
      is faster is measured (``bench_step.py``), not assumed.
    """

    staleness: StalenessPolicy = field(default_factory=Sync)
    workers: int = 1
    root_device: str = "host"
    stagger: bool = False
    hooks: bool = True
    placement: PlacementPolicy | None = None  # None: all state on the device, nothing tiered
    device_budget_bytes: int | None = None  # None: no limit (GPU: its free memory)
    host_budget_bytes: int | None = None
    spill: SpillStore | None = None  # the NVMe tier; None: no NVMe tier
    parallel: ParallelConfig | None = None  # data-parallel ranks and update mode; None: one process
    recorder: Recorder = field(default=NULL_RECORDER, compare=False, repr=False)
    trace_blocks: bool = True
    batched: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.root_device not in ROOT_DEVICES:
            raise ValueError(f"root_device must be one of {ROOT_DEVICES}, got {self.root_device!r}")
        if self.batched and self.parallel is not None:
            raise ValueError("batched=True does not support parallel yet (owners are per block)")
        if self.compile and not self.batched:
            raise ValueError("compile=True compiles the batched hot path: it needs batched=True")

    def describe(self) -> dict[str, str]:
        """Policies as plain strings, for run metadata."""
        placement = "device" if self.placement is None else self.placement.name
        out = {"staleness": self.staleness.name, "placement": placement}
        if self.staleness.asynchronous:
            out["workers"] = str(self.workers)
            out["root_device"] = self.root_device
        out["stagger"] = "on" if self.stagger else "off"
        if self.batched:
            out["batched"] = "on"
        if self.compile:
            out["compile"] = "on"
        if self.parallel is not None:
            out["parallel"] = self.parallel.update_mode
            out["world_size"] = str(self.parallel.context.world_size)
            out["ranks_per_node"] = str(self.parallel.context.topology.local_size)
            out["ranks_per_host"] = str(self.parallel.context.ranks_per_host)
            if self.parallel.inter_node_staleness is not None:
                out["inter_node_staleness"] = str(self.parallel.inter_node_staleness)
            links = self.parallel.links
            if links is not None:  # the simulator's replay assigns owners with the same rates
                out["owner_links_flops_per_s"] = repr(links.flops_per_s)
                out["owner_links_inter_node_bytes_per_s"] = repr(links.inter_node_bytes_per_s)
        return out
