"""``ExecutionConfig``: how an optimizer's work is executed, not what it computes.

It is the one keyword-only constructor argument through which the runtime's
features plug into ``Shampoo``, ``SOAP`` and ``KLShampoo``: when refreshes are
installed (staleness policy) and where their spans go (recorder). The default
is the synchronous reference with all state on the compute device, so
``SOAP(params)`` behaves like the published SOAP. None of these settings
changes the math beyond what the staleness policy defines (ALGORITHMS.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.policies.staleness import StalenessPolicy, Sync
from traces.recorder import NULL_RECORDER, Recorder


@dataclass(frozen=True)
class ExecutionConfig:
    """Runtime-only options; not part of an optimizer's checkpointed hyperparameters.

    ``trace_blocks`` adds a span per block for the factor update and the
    preconditioning; it costs a few microseconds per block and step when the
    recorder is enabled, and nothing when it is disabled.
    """

    staleness: StalenessPolicy = field(default_factory=Sync)
    recorder: Recorder = field(default=NULL_RECORDER, compare=False, repr=False)
    trace_blocks: bool = True

    def describe(self) -> dict[str, str]:
        """Policies as plain strings, for run metadata."""
        return {"staleness": self.staleness.name, "placement": "device"}
