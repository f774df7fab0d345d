"""The plan: facts about an optimizer's blocks that do not depend on torch.

What a block holds (slots, their kinds and shapes), when its refresh is due,
the synchronous reference's staleness, the order of a block's work within a
step, what it costs (ALGORITHMS.md §8) and which rank computes its refresh.
The runtime executes the plan on tensors and the simulator on simulated
resources; both import it, so neither keeps a copy. Standard library only
(a test imports it with torch blocked).

- ``runtime.plan.kinds``: ``SlotKind`` and ``LinkKind``, the shared vocabularies.
- ``runtime.plan.spec``: ``OptimizerSpec`` per optimizer (``SPECS``), ``BlockConfig``,
  ``Phase``, ``RefreshSchedule``.
- ``runtime.plan.costmodel``: state, FLOPs and bytes per block and per model.
- ``runtime.plan.ownership``: ``assign_owners`` (greedy LPT, memory-aware, node-local where
  ``LinkCosts`` say it pays) over a ``Topology``.
- ``runtime.plan.work``: ``ownership_work``, what owning each block costs per update mode.
"""

from runtime.plan.kinds import LinkKind, SlotKind
from runtime.plan.ownership import (
    Assignment,
    AssignmentError,
    BlockWork,
    LinkCosts,
    Topology,
    assign_owners,
    keeps_in_node,
)
from runtime.plan.spec import (
    SPECS,
    WORD_BYTES,
    BlockConfig,
    OptimizerSpec,
    Phase,
    RefreshSchedule,
    SlotSpec,
    spec_of,
)

__all__ = [
    "SPECS",
    "WORD_BYTES",
    "Assignment",
    "AssignmentError",
    "BlockConfig",
    "BlockWork",
    "LinkCosts",
    "LinkKind",
    "OptimizerSpec",
    "Phase",
    "RefreshSchedule",
    "SlotKind",
    "SlotSpec",
    "Topology",
    "assign_owners",
    "keeps_in_node",
    "spec_of",
]
