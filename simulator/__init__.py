"""The discrete-event simulator (SimPy). Never imports torch; of ``runtime`` it
imports only the torch-free ``runtime.plan`` (block specs, cost model, owner
assignment) and ``runtime.policies``, so one plan and one policy object drive
both (``tests/test_layering.py`` checks it)."""

from runtime.plan.costmodel import CostConfig, Optimizer, roofline_time_s
from simulator.profiles import (
    HardwareProfile,
    LinkKind,
    ProfileError,
    dump_profile,
    list_profiles,
    load_profile,
)
from simulator.shapes import ModelShape, ShapeError, get_shape, list_shapes

__all__ = [
    "CostConfig",
    "HardwareProfile",
    "LinkKind",
    "ModelShape",
    "Optimizer",
    "ProfileError",
    "ShapeError",
    "dump_profile",
    "get_shape",
    "list_profiles",
    "list_shapes",
    "load_profile",
    "roofline_time_s",
]
