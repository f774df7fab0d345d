"""Placement and staleness policies: plain objects, standard library only.

The runtime executes their decisions on real tensors and the simulator executes
the same decisions on simulated resources; a policy is written once. Nothing
here may import torch (a test checks it).
"""

from runtime.policies.placement import (
    Access,
    DevicePlacement,
    HostPlacement,
    LifecyclePlacement,
    LinkKind,
    MemoryView,
    Move,
    PlacementPolicy,
    PressurePlacement,
    SlotInfo,
    SlotKind,
    Traffic,
    apply_moves,
    check_budget,
    parse_placement,
    peak_device_bytes,
    step_traffic,
    tier_bytes,
)
from runtime.policies.staleness import (
    Adaptive,
    Bounded,
    Replay,
    StalenessPolicy,
    Sync,
    parse_staleness,
)

__all__ = [
    "Access",
    "Adaptive",
    "Bounded",
    "DevicePlacement",
    "HostPlacement",
    "LifecyclePlacement",
    "LinkKind",
    "MemoryView",
    "Move",
    "PlacementPolicy",
    "PressurePlacement",
    "Replay",
    "SlotInfo",
    "SlotKind",
    "StalenessPolicy",
    "Sync",
    "Traffic",
    "apply_moves",
    "check_budget",
    "parse_placement",
    "parse_staleness",
    "peak_device_bytes",
    "step_traffic",
    "tier_bytes",
]
