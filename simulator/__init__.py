"""The discrete-event simulator (SimPy). Never imports torch; of ``runtime`` it
imports only ``runtime.policies``, so one policy object drives both."""

from simulator.costmodel import CostConfig, Optimizer, roofline_time_s
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
