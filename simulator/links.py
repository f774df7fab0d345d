"""The paths optimizer state and gradients move over, and their cost (time unit: integer ns).

``LinkRates`` is data: the bandwidth (bytes per ns) and fixed cost of each
path, from a hardware profile or calibrated on a measured run. ``Links`` puts
the paths in a SimPy model as resources named after the physical thing: a
copy engine per direction of the CPU-GPU link (``h2d``, ``d2h``), the NVMe
queue, and the intra-node and inter-node network links. A transfer holds its
resource for ``latency + bytes / bandwidth``; transfers on one resource queue
in the order they were issued.

A move between tiers takes one or two *legs*: device <-> host crosses the
CPU-GPU link (no leg on unified memory: it is one memory), host <-> NVMe
crosses the NVMe queue, device <-> NVMe both, through a host buffer, as the
runtime's spill path does.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import simpy

from runtime.policies.placement import LinkKind
from simulator.profiles import HardwareProfile
from traces.recorder import Recorder
from traces.schema import Category, Tier


class Leg(str, Enum):
    """One physical hop of a transfer."""

    H2D = "h2d"
    D2H = "d2h"
    NVME_READ = "nvme_read"
    NVME_WRITE = "nvme_write"


def _routes(unified: bool) -> dict[tuple[Tier, Tier], tuple[Leg, ...]]:
    up: tuple[Leg, ...] = () if unified else (Leg.H2D,)
    down: tuple[Leg, ...] = () if unified else (Leg.D2H,)
    return {
        (Tier.HOST, Tier.DEVICE): up,
        (Tier.DEVICE, Tier.HOST): down,
        (Tier.NVME, Tier.HOST): (Leg.NVME_READ,),
        (Tier.HOST, Tier.NVME): (Leg.NVME_WRITE,),
        (Tier.NVME, Tier.DEVICE): (Leg.NVME_READ, *up),
        (Tier.DEVICE, Tier.NVME): (*down, Leg.NVME_WRITE),
    }


_ROUTES = {unified: _routes(unified) for unified in (False, True)}
"""Legs per (source, destination) tier, on separate memories and on unified memory."""


@dataclass(frozen=True)
class LinkRates:
    """Bandwidths in bytes per ns (= GB/s) and fixed costs in ns of each path."""

    kind: LinkKind
    h2d_bytes_per_ns: float
    d2h_bytes_per_ns: float
    nvme_read_bytes_per_ns: float
    nvme_write_bytes_per_ns: float
    copy_latency_ns: int = 0
    nvme_latency_ns: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LinkKind(self.kind))
        for name in ("h2d", "d2h", "nvme_read", "nvme_write"):
            rate = getattr(self, f"{name}_bytes_per_ns")
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"{name} bandwidth must be a positive number, got {rate}")

    @staticmethod
    def from_profile(profile: HardwareProfile, copy_efficiency: float = 1.0) -> LinkRates:
        """The profile's link and NVMe figures, bulk copies at ``copy_efficiency`` of the link."""
        link, nvme = profile.link, profile.nvme
        return LinkRates(
            kind=LinkKind(profile.link.kind.value),
            h2d_bytes_per_ns=link.h2d_bandwidth.value * copy_efficiency / 1e9,
            d2h_bytes_per_ns=link.d2h_bandwidth.value * copy_efficiency / 1e9,
            nvme_read_bytes_per_ns=nvme.read_bandwidth.value / 1e9,
            nvme_write_bytes_per_ns=nvme.write_bandwidth.value / 1e9,
            copy_latency_ns=round(link.latency.value * 1e9),
            nvme_latency_ns=round(nvme.latency.value * 1e9),
        )

    def legs(self, src: Tier, dst: Tier) -> tuple[Leg, ...]:
        """The hops from ``src`` to ``dst``, in order."""
        return _ROUTES[self.kind is LinkKind.UNIFIED].get((src, dst), ())

    def leg_ns(self, leg: Leg, nbytes: int) -> int:
        """Time one copy of ``nbytes`` holds the leg's resource."""
        if leg is Leg.H2D:
            return self.copy_latency_ns + math.ceil(nbytes / self.h2d_bytes_per_ns)
        if leg is Leg.D2H:
            return self.copy_latency_ns + math.ceil(nbytes / self.d2h_bytes_per_ns)
        rate = self.nvme_read_bytes_per_ns if leg is Leg.NVME_READ else self.nvme_write_bytes_per_ns
        return self.nvme_latency_ns + math.ceil(nbytes / rate)

    def route_ns(self, src: Tier, dst: Tier, nbytes: int) -> int:
        """Time of a whole move, its legs one after the other."""
        return sum(self.leg_ns(leg, nbytes) for leg in self.legs(src, dst))

    def in_place_ns(self, read_bytes: int, written_bytes: int) -> int:
        """Time to stream bytes across a coherent link in place, both directions at once."""
        if self.kind is not LinkKind.NVLINK_C2C:
            return 0
        return max(
            math.ceil(read_bytes / self.h2d_bytes_per_ns),
            math.ceil(written_bytes / self.d2h_bytes_per_ns),
        )


@dataclass
class LinkBusy:
    """Nanoseconds each resource was held, over a whole simulated run."""

    h2d_ns: int = 0
    d2h_ns: int = 0
    nvme_ns: int = 0
    intra_node_ns: int = 0
    inter_node_ns: int = 0


@dataclass(frozen=True)
class Copy:
    """One slot's copy: what a transfer span records."""

    name: str  # fetch | write_back | move
    block: str
    slot: str
    nbytes: int
    src: Tier
    dst: Tier
    step: int


_TRACKS = {
    Leg.H2D: "h2d-copy-engine",
    Leg.D2H: "d2h-copy-engine",
    Leg.NVME_READ: "nvme-queue",
    Leg.NVME_WRITE: "nvme-queue",
}
_SPILL_NAMES = {Leg.NVME_READ: "spill_read", Leg.NVME_WRITE: "spill_write"}


class Links:
    """The link resources of one simulated rank, and the spans its transfers leave."""

    def __init__(self, env: simpy.Environment, rates: LinkRates | None, recorder: Recorder) -> None:
        self.env, self.rates, self.rec = env, rates, recorder
        self.h2d = simpy.Resource(env, capacity=1)
        self.d2h = simpy.Resource(env, capacity=1)
        self.nvme_queue = simpy.Resource(env, capacity=1)
        self.intra_node = simpy.Resource(env, capacity=1)
        self.inter_node = simpy.Resource(env, capacity=1)
        self.busy = LinkBusy()
        self._counted = LinkBusy()

    def record_busy(self, step: int) -> None:
        """Counter ``link_busy_ns`` per link: the time it was held since the previous call."""
        for f in fields(LinkBusy):
            total, before = getattr(self.busy, f.name), getattr(self._counted, f.name)
            if total > before:
                self.rec.counter(
                    "link_busy_ns", total - before, step=step, key=f.name[: -len("_ns")]
                )
                setattr(self._counted, f.name, total)

    def _resource(self, leg: Leg) -> simpy.Resource:
        return {Leg.H2D: self.h2d, Leg.D2H: self.d2h}.get(leg, self.nvme_queue)

    def _charge(self, leg: Leg, ns: int) -> None:
        if leg is Leg.H2D:
            self.busy.h2d_ns += ns
        elif leg is Leg.D2H:
            self.busy.d2h_ns += ns
        else:
            self.busy.nvme_ns += ns

    def copy(self, copies: Sequence[Copy]) -> Generator[Any, Any, None]:
        """Run copies that share a route, leg by leg; each leg holds its resource once for all.

        A copy's transfer span (``fetch``, ``write_back``, ``move``) runs from its
        first leg's start to its last leg's end; an NVMe leg also leaves the
        runtime spill store's ``spill_read`` / ``spill_write`` span.
        """
        if not copies or self.rates is None:
            return
        rates = self.rates
        legs = rates.legs(copies[0].src, copies[0].dst)
        if not legs:  # unified memory: nothing crosses a link
            return
        starts: list[int | None] = [None] * len(copies)
        ends = [int(self.env.now)] * len(copies)
        for leg in legs:
            durations = [rates.leg_ns(leg, c.nbytes) for c in copies]
            with self._resource(leg).request() as held:
                yield held
                begin = int(self.env.now)
                yield self.env.timeout(sum(durations))
            self._charge(leg, sum(durations))
            at = begin
            for i, (c, ns) in enumerate(zip(copies, durations, strict=True)):
                if starts[i] is None:
                    starts[i] = at
                ends[i] = at + ns
                if leg in _SPILL_NAMES:
                    src, dst = (
                        (Tier.NVME, Tier.HOST) if leg is Leg.NVME_READ else (Tier.HOST, Tier.NVME)
                    )
                    self.rec.add_span(
                        _SPILL_NAMES[leg],
                        Category.IO,
                        at,
                        at + ns,
                        step=c.step,
                        block=c.block,
                        nbytes=c.nbytes,
                        tier_from=src,
                        tier_to=dst,
                        track=_TRACKS[leg],
                        detail=c.slot,
                    )
                at += ns
        track = _TRACKS[legs[-1]]
        for c, start, end in zip(copies, starts, ends, strict=True):
            self.rec.add_span(
                c.name,
                Category.TRANSFER,
                end if start is None else start,
                end,
                step=c.step,
                block=c.block,
                nbytes=c.nbytes,
                tier_from=c.src,
                tier_to=c.dst,
                track=track,
                detail=c.slot,
            )

    def allreduce(self, intra_ns: int, inter_ns: int) -> Generator[Any, Any, None]:
        """The gradient all-reduce: intra-node ring, then inter-node ring, each on its link."""
        for resource, ns, intra in (
            (self.intra_node, intra_ns, True),
            (self.inter_node, inter_ns, False),
        ):
            if ns <= 0:
                continue
            with resource.request() as held:
                yield held
                yield self.env.timeout(ns)
            if intra:
                self.busy.intra_node_ns += ns
            else:
                self.busy.inter_node_ns += ns
