"""``asteria-bench hardware list | show NAME``: the machines the simulator knows, with sources.

Every number of a profile carries its basis (stated by a source, assumed, or
measured by ``asteria-bench profile``) and its source; ``show`` prints them so
a projection can be traced back to where its inputs came from, and ``list``
counts the assumed ones so the weaker profiles stand out. A profile that does
not load (a hand-edited ``local.toml``, say) is named under the list with its
error, and the others are still listed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from asteria_bench.errors import UserError
from asteria_bench.tables import Column, OutputFormat, ResultTable, Show, emit
from simulator.profiles import (
    PROFILES_DIR,
    HardwareProfile,
    ProfileError,
    Quantity,
    list_profiles,
    load_profile,
)

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, unit: str) -> str:
    """``989e12, "FLOP/s"`` -> ``989 TFLOP/s``; seconds in µs or ms; counts as integers."""
    if unit == "count":
        return f"{value:g}"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.3g} µs"
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _num(scale: float, digits: int = 0) -> Callable[[Any], str]:
    """A cell formatter: the raw base-unit value divided by ``scale``."""

    def text(value: Any) -> str:
        return "-" if value is None else f"{float(value) / scale:,.{digits}f}"

    return text


LIST_COLUMNS = (
    Column("name", "name", numeric=False),
    Column("gpu", "GPU", lambda model: str(model).split(" (")[0], numeric=False),
    Column("bf16_flops", "bf16 TFLOP/s", _num(1e12)),
    Column("gpu_memory_bytes", "GPU mem GB", _num(1e9)),
    Column("gpu_memory_bytes_per_s", "HBM TB/s", _num(1e12, 2), show=Show.WIDE),
    Column("link", "CPU-GPU link", numeric=False),
    Column("h2d_bytes_per_s", "H2D GB/s", _num(1e9)),
    Column("host_memory_bytes", "host mem GB", _num(1e9), show=Show.WIDE),
    Column("nvme_read_bytes_per_s", "NVMe read GB/s", _num(1e9, 1), show=Show.WIDE),
    Column("gpus_per_node", "GPUs/node"),
    Column("inter_node_bytes_per_s", "inter-node GB/s", _num(1e9, 1), show=Show.WIDE),
    Column("assumed", "assumed", numeric=True),
    Column("file", "file", numeric=False, show=Show.WIDE),
)


def _profile_path(name: str) -> Path:
    return PROFILES_DIR / f"{name}.toml"


def list_row(name: str, profile: HardwareProfile) -> dict[str, object]:
    network = profile.network
    inter = network.inter_node
    quantities = profile.quantities()
    return {
        "name": name,
        "gpu": profile.gpu.model,
        "bf16_flops": profile.gpu.bf16_dense_flops.value,
        "gpu_memory_bytes": profile.gpu.memory_bytes.value,
        "gpu_memory_bytes_per_s": profile.gpu.memory_bandwidth.value,
        "link": profile.link.kind.value,
        "h2d_bytes_per_s": profile.link.h2d_bandwidth.value,
        "host_memory_bytes": profile.host.memory_bytes.value,
        "nvme_read_bytes_per_s": profile.nvme.read_bandwidth.value,
        "gpus_per_node": int(network.gpus_per_node.value),
        "inter_node_bytes_per_s": None if inter is None else inter.bandwidth.value,
        "assumed": f"{len(profile.assumptions())}/{len(quantities)}",
        "file": str(_profile_path(name)),
    }


def profiles_table() -> ResultTable:
    rows: list[dict[str, object]] = []
    broken: list[str] = []
    for name in list_profiles():
        try:
            rows.append(list_row(name, load_profile(name)))
        except ProfileError as exc:
            broken.append(f"not loaded: {exc}")
    notes = (
        f"Profiles are the TOML files in {PROFILES_DIR}; 'assumed' counts numbers that no"
        " source states. `asteria-bench profile --out <that folder>/local.toml` adds this"
        " machine; `asteria-bench hardware show NAME` prints every number with its source.",
        *broken,
    )
    return ResultTable("hardware profiles", LIST_COLUMNS, rows, notes=notes)


SHOW_COLUMNS = (
    Column("field", "field", numeric=False),
    Column("text", "value", nowrap=True, data=False),
    Column("value", "raw value", show=Show.WIDE),
    Column("unit", "unit", numeric=False, show=Show.WIDE),
    Column("basis", "basis", numeric=False),
    Column("source", "source", numeric=False),
    Column("note", "note", numeric=False, show=Show.WIDE),
)


def quantity_row(path: str, q: Quantity) -> dict[str, object]:
    return {
        "field": path,
        "text": si(q.value, q.unit),
        "value": q.value,
        "unit": q.unit,
        "basis": q.basis.value,
        "source": q.source,
        "note": q.note or None,
    }


def profile_table(name: str) -> ResultTable:
    try:
        profile = load_profile(name)
    except ProfileError as exc:
        raise UserError(f"NAME: {exc}") from None
    rows = [quantity_row(path, q) for path, q in profile.quantities().items()]
    title = f"{profile.name}: {profile.description}"
    notes = (
        f"GPU: {profile.gpu.model}; host CPU: {profile.host.cpu_model};"
        f" CPU-GPU link: {profile.link.kind.value}.",
        "basis: stated = the source states it; assumed = an estimate (reports flag it);"
        " measured = `asteria-bench profile` on the machine. --wide adds units and notes.",
    )
    return ResultTable(title, SHOW_COLUMNS, rows, notes=notes)


def hardware_list(fmt: OutputFormat, wide: bool) -> None:
    emit([profiles_table()], fmt, wide=wide)


def hardware_show(name: str, fmt: OutputFormat, wide: bool) -> None:
    emit([profile_table(name)], fmt, wide=wide)
