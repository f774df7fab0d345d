"""Placement and staleness policies: plain objects, standard library only.

The runtime executes their decisions on real tensors and the simulator executes
the same decisions on simulated resources; a policy is written once. Nothing
here may import torch (a test checks it).
"""

from runtime.policies.staleness import (
    Adaptive,
    Bounded,
    Replay,
    StalenessPolicy,
    Sync,
    parse_staleness,
)

__all__ = ["Adaptive", "Bounded", "Replay", "StalenessPolicy", "Sync", "parse_staleness"]
