"""The two vocabularies every layer shares: how a slot is used, and how CPU and GPU are linked.

They are defined once, here, because the runtime's state classes, the
placement policies, the hardware profiles and the simulator all speak of
them; two copies of an enum drift as soon as one gains a member.
Standard library only.
"""

from __future__ import annotations

from enum import Enum


class SlotKind(str, Enum):
    """How a slot of a block's state is touched over its lifetime: what placement decides by."""

    FACTOR = "factor"  # read and written by the device every step (L, R, S_L, S_R)
    BASIS = "basis"  # read every step, written only when a refresh is installed (Q_L, Q_R)
    ROOT = "root"  # read every step, written only when a refresh is installed (L̃, R̃)
    MOMENT = "moment"  # read and written every step (M, V, d)
    SNAPSHOT = "snapshot"  # the factors of a version, read by a refresh worker only
    SHADOW = "shadow"  # a refresh result waiting for its install step


class LinkKind(str, Enum):
    """How the CPU and the GPU reach each other's memory."""

    PCIE = "pcie"  # separate memories, copies cross PCIe
    NVLINK_C2C = "nvlink-c2c"  # separate memories, coherent chip-to-chip link (GH200)
    UNIFIED = "unified"  # one physical memory shared by CPU and GPU (GB10)
