"""What a trace says about its run beyond step times: tokens, threads, load, tiers, staleness.

Read from the trace's metadata and counters only, so a measured, simulated,
replayed or imported run answers alike; a figure the trace does not hold is
``None`` and the reports leave it out rather than guess it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from traces.io import Trace
from traces.schema import Category, RunMetadata, Tier


@dataclass(frozen=True)
class Staleness:
    """τ (install step − version, in optimizer updates) over a run's installed refreshes."""

    mean: float
    max: float
    installs: int


@dataclass(frozen=True)
class TierBytes:
    """Optimizer state resident on one tier: at the last sample and at its peak."""

    last: int
    peak: int


@dataclass(frozen=True)
class HostLoad:
    """The machine while the run went (``host_cpu_percent`` and ``host_rss_bytes`` counters)."""

    cpu_percent_mean: float
    cpu_percent_max: float
    rss_peak_bytes: int | None


@dataclass(frozen=True)
class RunFacts:
    tokens_per_step: int | None
    torch_threads: int | None
    refresh_workers: int | None  # None: refreshes ran on the training thread
    logical_cores: int
    wall_s: float  # first to last event of the trace, on its clock (evaluation included)
    load: HostLoad | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def tokens_per_step(metadata: RunMetadata) -> int | None:
    """Tokens one step trains on, all ranks together, from the run's configuration.

    Understands a measured run's ``train.batch_size`` x ``model.context`` (per
    rank), a simulated one's ``whatif.tokens_per_rank``, and a top-level
    ``tokens_per_step`` that any other writer (an importer) may set.
    """
    config = metadata.config
    direct = _int(config.get("tokens_per_step"))
    if direct is not None:
        return direct
    whatif = _section(config, "whatif")
    per_rank = _int(whatif.get("tokens_per_rank"))
    if per_rank is not None:
        return (
            per_rank * (_int(whatif.get("nodes")) or 1) * (_int(whatif.get("gpus_per_node")) or 1)
        )
    batch = _int(_section(config, "train").get("batch_size"))
    context = _int(_section(config, "model").get("context"))
    if batch is None or context is None:
        return None
    return batch * context * metadata.world_size


def _threads(metadata: RunMetadata) -> tuple[int | None, int | None]:
    """(torch intra-op threads, refresh workers) as the run used them."""
    config = metadata.config
    torch_threads = _int(_section(config, "train").get("torch_threads"))
    workers = _int(_section(config, "runtime").get("workers")) or _int(
        _section(config, "whatif").get("workers")
    )
    if workers is None:
        workers = _int(_int_text(metadata.policies.get("workers")))
    staleness = metadata.policies.get("staleness", "sync")
    return torch_threads, (workers if staleness not in ("sync", "none") else None)


def _int_text(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def host_load(counters: pd.DataFrame) -> HostLoad | None:
    cpu = counters.loc[counters["name"] == "host_cpu_percent", "value"].dropna()
    if cpu.empty:
        return None
    rss = counters.loc[counters["name"] == "host_rss_bytes", "value"].dropna()
    return HostLoad(
        cpu_percent_mean=float(cpu.mean()),
        cpu_percent_max=float(cpu.max()),
        rss_peak_bytes=int(rss.max()) if len(rss) else None,
    )


def wall_seconds(trace: Trace) -> float:
    times = []
    if not trace.spans.empty:
        times += [int(trace.spans["start_ns"].min()), int(trace.spans["end_ns"].max())]
    if not trace.counters.empty:
        times += [int(trace.counters["time_ns"].min()), int(trace.counters["time_ns"].max())]
    return (max(times) - min(times)) / 1e9 if times else math.nan


def run_facts(trace: Trace) -> RunFacts:
    torch_threads, workers = _threads(trace.metadata)
    return RunFacts(
        tokens_per_step=tokens_per_step(trace.metadata),
        torch_threads=torch_threads,
        refresh_workers=workers,
        logical_cores=trace.metadata.hardware.cpu_cores_logical,
        wall_s=wall_seconds(trace),
        load=host_load(trace.counters),
    )


def staleness(counters: pd.DataFrame) -> Staleness | None:
    taus = counters.loc[counters["name"] == "staleness", "value"]
    if taus.empty:
        return None
    return Staleness(float(taus.mean()), float(taus.max()), len(taus))


def tier_bytes(counters: pd.DataFrame) -> dict[str, TierBytes]:
    """Each tier's ``state_bytes`` series, in the order the trace first names the tiers."""
    state = counters[(counters["name"] == "state_bytes") & counters["key"].notna()]
    return {
        str(key): TierBytes(int(group["value"].iloc[-1]), int(group["value"].max()))
        for key, group in state.sort_values("time_ns", kind="stable").groupby("key", sort=False)
    }


def peak_device_bytes(counters: pd.DataFrame) -> int | None:
    """Peak optimizer state resident on the device; None where the trace has no tier counters."""
    tiers = tier_bytes(counters)
    if not tiers:
        return None
    device = tiers.get(Tier.DEVICE.value)
    return device.peak if device is not None else 0


LINKS = ("h2d", "d2h", "nvme", "network")
"""The links ``link_bytes`` reports, in that order."""


def link_bytes(spans: pd.DataFrame) -> dict[str, int]:
    """Bytes each link carried over the run.

    ``h2d`` / ``d2h``: transfers between host and device; ``nvme``: spill
    reads and writes; ``network``: collectives (publications, all-gathers,
    all-reduces where their bytes were recorded).
    """
    moved = spans[spans["bytes"] > 0]
    transfer = moved[moved["category"] == Category.TRANSFER.value]
    pair = transfer["tier_from"].astype("string") + ">" + transfer["tier_to"].astype("string")
    nvme_io = moved[moved["name"].isin(("spill_read", "spill_write"))]
    nvme_moves = transfer[pair.str.contains(Tier.NVME.value, na=False)]
    return {
        "h2d": int(transfer.loc[pair == "host>device", "bytes"].sum()),
        "d2h": int(transfer.loc[pair == "device>host", "bytes"].sum()),
        # A move to or from NVMe is also a spill read or write where the trace has those.
        "nvme": int((nvme_io if len(nvme_io) else nvme_moves)["bytes"].sum()),
        "network": int(moved.loc[moved["category"] == Category.COLLECTIVE.value, "bytes"].sum()),
    }
