"""Hardware profiles: one machine described as data, every number with its source.

A profile is a TOML file (``simulator/profiles/<name>.toml`` for the packaged
ones). It describes what **one GPU's rank** has at hand: the GPU, its share of
the host (the whole Grace on a superchip, 1/``gpus_per_node`` of a shared x86
host), the CPU-GPU link, local NVMe, and the networks inside and between
nodes. Values are in base SI units (FLOP/s, B, B/s, s), so nothing is
converted on load; "GB" in a source is read as 10⁹ bytes.

Every number is a table::

    [link.h2d_bandwidth]
    value = 450e9
    unit = "B/s"                # must be the field's unit (checked)
    basis = "stated"            # stated | assumed | measured
    source = "https://..."      # a URL, or the rationale of an assumption
    note = "..."                # optional

``basis = "stated"`` is a number the source states ([S] in HARDWARE.md);
``"assumed"`` is an inference or estimate ([I]), which a report must show as
an assumption; ``"measured"`` comes from ``asteria-bench profile``.

``gpu.fp8_dense_flops`` is optional (a profile states it where a source
does). The optional ``[training]`` section holds the fraction of each roof
LLM training reaches (``simulator.llm_step``; unit ``"fraction"``, in (0, 1]),
and optionally ``collective_interference``: what of the intra-node collective
time hidden behind compute still costs a step (``simulator.data_parallel``).

The sections and their fields are the dataclasses below (``GpuSpec`` is
``[gpu]``, ``HostSpec`` is ``[host]`` and so on); top-level keys are
``format_version`` (= 1), ``name`` and ``description``. ``[network.intra_node]``
is omitted exactly when ``gpus_per_node`` is 1, ``[network.inter_node]`` when
the machine has no inter-node network. With ``link.kind = "unified"`` the GPU
and host memory are one physical pool: ``gpu.memory_bytes`` and
``host.memory_bytes`` describe the same bytes and must not be added.

Any problem in a file raises ``ProfileError`` with one line naming the file,
the field and what was expected.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from runtime.plan.kinds import LinkKind

__all__ = [
    "PROFILES_DIR",
    "PROFILE_FORMAT_VERSION",
    "Basis",
    "GpuSpec",
    "HardwareProfile",
    "HostSpec",
    "LinkKind",
    "LinkSpec",
    "NetworkLink",
    "NetworkSpec",
    "NvmeSpec",
    "ProfileError",
    "Quantity",
    "TrainingSpec",
    "dump_profile",
    "list_profiles",
    "load_profile",
    "loads_profile",
]

PROFILE_FORMAT_VERSION = 1
PROFILES_DIR = Path(__file__).with_name("profiles")

FLOPS = "FLOP/s"
BYTES = "B"
BYTES_PER_S = "B/s"
SECONDS = "s"
COUNT = "count"
FRACTION = "fraction"


class ProfileError(ValueError):
    """A profile that cannot be used: ``<file>: <field>: expected ..., got ...`` (one line)."""


class Basis(str, Enum):
    """Where a number comes from."""

    STATED = "stated"  # stated by the cited source ([S])
    ASSUMED = "assumed"  # inferred or estimated ([I]); reports show it as an assumption
    MEASURED = "measured"  # measured on the machine by ``asteria-bench profile``


@dataclass(frozen=True)
class Quantity:
    """One number with its unit, source and basis. Counts hold an ``int``."""

    value: float
    unit: str
    source: str
    basis: Basis
    note: str = ""

    @property
    def assumed(self) -> bool:
        return self.basis is Basis.ASSUMED


def _quantity(unit: str, *, optional: bool = False) -> Any:
    if optional:
        return field(default=None, metadata={"kind": "quantity", "unit": unit, "optional": True})
    return field(metadata={"kind": "quantity", "unit": unit})


def _text() -> Any:
    return field(metadata={"kind": "text"})


def _section(cls: type, *, optional: bool = False) -> Any:
    if optional:
        return field(default=None, metadata={"kind": "section", "cls": cls, "optional": True})
    return field(metadata={"kind": "section", "cls": cls, "optional": False})


@dataclass(frozen=True)
class GpuSpec:
    """``[gpu]``: peak dense rates (no sparsity) and device memory; fp8 where stated."""

    model: str = _text()
    bf16_dense_flops: Quantity = _quantity(FLOPS)
    fp32_flops: Quantity = _quantity(FLOPS)  # non-tensor FP32
    memory_bytes: Quantity = _quantity(BYTES)
    memory_bandwidth: Quantity = _quantity(BYTES_PER_S)
    fp8_dense_flops: Quantity | None = _quantity(FLOPS, optional=True)


@dataclass(frozen=True)
class HostSpec:
    """``[host]``: the CPU cores and host memory one GPU's rank can use."""

    cpu_model: str = _text()
    cpu_cores: Quantity = _quantity(COUNT)
    cpu_fp64_flops: Quantity = _quantity(FLOPS)
    cpu_fp32_flops: Quantity = _quantity(FLOPS)
    memory_bytes: Quantity = _quantity(BYTES)
    memory_bandwidth: Quantity = _quantity(BYTES_PER_S)


@dataclass(frozen=True)
class LinkSpec:
    """``[link]``: the CPU-GPU link, bandwidth per direction and per-transfer latency."""

    kind: LinkKind = field(metadata={"kind": "link-kind"})
    h2d_bandwidth: Quantity = _quantity(BYTES_PER_S)
    d2h_bandwidth: Quantity = _quantity(BYTES_PER_S)
    latency: Quantity = _quantity(SECONDS)


@dataclass(frozen=True)
class NvmeSpec:
    """``[nvme]``: the local spill device, sequential bandwidths and per-request latency."""

    read_bandwidth: Quantity = _quantity(BYTES_PER_S)
    write_bandwidth: Quantity = _quantity(BYTES_PER_S)
    latency: Quantity = _quantity(SECONDS)


@dataclass(frozen=True)
class NetworkLink:
    """One network level: per-GPU bandwidth per direction and per-message latency."""

    bandwidth: Quantity = _quantity(BYTES_PER_S)
    latency: Quantity = _quantity(SECONDS)


@dataclass(frozen=True)
class NetworkSpec:
    """``[network]``: GPUs per node, the link between two GPUs of a node, and between nodes."""

    gpus_per_node: Quantity = _quantity(COUNT)
    intra_node: NetworkLink | None = _section(NetworkLink, optional=True)
    inter_node: NetworkLink | None = _section(NetworkLink, optional=True)


@dataclass(frozen=True)
class TrainingSpec:
    """``[training]``: the fraction of each roof LLM training reaches on this GPU
    (``simulator.llm_step``), from published measured throughput (sources in the file)."""

    matmul_efficiency: Quantity = _quantity(FRACTION)
    attention_efficiency: Quantity = _quantity(FRACTION)
    memory_efficiency: Quantity = _quantity(FRACTION)
    collective_interference: Quantity | None = _quantity(FRACTION, optional=True)


@dataclass(frozen=True)
class HardwareProfile:
    """One machine, as seen by one GPU's rank (see the module docstring for the format)."""

    name: str = _text()
    description: str = _text()
    gpu: GpuSpec = _section(GpuSpec)
    host: HostSpec = _section(HostSpec)
    link: LinkSpec = _section(LinkSpec)
    nvme: NvmeSpec = _section(NvmeSpec)
    network: NetworkSpec = _section(NetworkSpec)
    training: TrainingSpec | None = _section(TrainingSpec, optional=True)

    @property
    def shares_memory(self) -> bool:
        """True when GPU and host memory are one pool (``link.kind = "unified"``)."""
        return self.link.kind is LinkKind.UNIFIED

    def quantities(self) -> dict[str, Quantity]:
        """Every number of the profile by its dotted field path, in file order."""
        found: dict[str, Quantity] = {}
        _collect(self, "", found)
        return found

    def assumptions(self) -> dict[str, Quantity]:
        """The numbers a report must flag: those with ``basis = "assumed"``."""
        return {path: q for path, q in self.quantities().items() if q.assumed}


def _collect(obj: Any, path: str, found: dict[str, Quantity]) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata["kind"]
        if kind == "quantity" and value is not None:
            found[_join(path, f.name)] = value
        elif kind == "section" and value is not None:
            _collect(value, _join(path, f.name), found)


# ---------------------------------------------------------------------------------------
# Loading and validation


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING: Any = _Missing()
_QUANTITY_KEYS = ("value", "unit", "basis", "source", "note")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _join(path: str, key: str) -> str:
    shown = key if _BARE_KEY.match(key) else json.dumps(key)
    return f"{path}.{shown}" if path else shown


def _show(value: Any) -> str:
    if value is _MISSING:
        text = "nothing"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected_value(unit: str) -> str:
    if unit == FRACTION:
        return "a fraction in (0, 1]"
    return "a positive integer count" if unit == COUNT else f"a positive number of {unit}"


class _Reader:
    """Builds a profile from parsed TOML, raising ``ProfileError`` at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ProfileError:
        line = f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        return ProfileError(line.replace("\r", "\\r").replace("\n", "\\n"))

    def profile(self, data: dict[str, Any]) -> HardwareProfile:
        version = data.get("format_version", _MISSING)
        if isinstance(version, bool) or version != PROFILE_FORMAT_VERSION:
            raise self.fail(
                "format_version", f"expected {PROFILE_FORMAT_VERSION}, got {_show(version)}"
            )
        rest = {k: v for k, v in data.items() if k != "format_version"}
        profile = self.section(HardwareProfile, rest, "", extra=("format_version",))
        self.check_network(profile.network)
        return profile

    def section(self, cls: type, data: Any, path: str, extra: tuple[str, ...] = ()) -> Any:
        if not isinstance(data, dict):
            raise self.fail(path, f"expected a table, got {_show(data)}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                known = ", ".join([*extra, *names])
                raise self.fail(_join(path, key), f"unknown key; expected one of {known}")
        kwargs = {}
        for f in fields(cls):
            kwargs[f.name] = self.value(f.metadata, data.get(f.name, _MISSING), _join(path, f.name))
        return cls(**kwargs)

    def value(self, meta: Any, raw: Any, path: str) -> Any:
        kind = meta["kind"]
        if kind == "quantity":
            if raw is _MISSING and meta.get("optional"):
                return None
            return self.quantity(raw, path, meta["unit"])
        if kind == "text":
            return self.text(raw, path)
        if kind == "link-kind":
            try:
                return LinkKind(raw)
            except ValueError:
                known = ", ".join(k.value for k in LinkKind)
                raise self.fail(path, f"expected one of {known}, got {_show(raw)}") from None
        if raw is _MISSING and meta["optional"]:
            return None
        if raw is _MISSING:
            raise self.fail(path, "missing; expected a table")
        return self.section(meta["cls"], raw, path)

    def text(self, raw: Any, path: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(path, f"expected a non-empty string, got {_show(raw)}")
        return raw

    def quantity(self, raw: Any, path: str, unit: str) -> Quantity:
        expected = _expected_value(unit)
        if raw is _MISSING:
            raise self.fail(path, f"missing; expected {expected} with its unit, basis and source")
        if not isinstance(raw, dict):
            raise self.fail(
                path, f"expected a table {{value, unit, basis, source}} of {unit}, got {_show(raw)}"
            )
        for key in raw:
            if key not in _QUANTITY_KEYS:
                known = ", ".join(_QUANTITY_KEYS)
                raise self.fail(_join(path, key), f"unknown key; expected one of {known}")
        value = raw.get("value", _MISSING)
        if unit == COUNT:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise self.fail(path, f"expected {expected}, got {_show(value)}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(path, f"expected {expected}, got {_show(value)}")
            if not math.isfinite(value) or value <= 0 or (unit == FRACTION and value > 1):
                raise self.fail(path, f"expected {expected}, got {_show(value)}")
            value = float(value)
        got_unit = raw.get("unit", _MISSING)
        if got_unit != unit:
            raise self.fail(_join(path, "unit"), f"expected {unit!r}, got {_show(got_unit)}")
        basis = raw.get("basis", _MISSING)
        try:
            basis = Basis(basis)
        except ValueError:
            known = ", ".join(b.value for b in Basis)
            raise self.fail(
                _join(path, "basis"), f"expected one of {known}, got {_show(basis)}"
            ) from None
        source = raw.get("source", _MISSING)
        if not isinstance(source, str) or not source.strip():
            raise self.fail(
                _join(path, "source"),
                f"expected a non-empty string (a URL or a rationale), got {_show(source)}",
            )
        note = raw.get("note", "")
        if not isinstance(note, str):
            raise self.fail(_join(path, "note"), f"expected a string, got {_show(note)}")
        return Quantity(value=value, unit=unit, source=source, basis=basis, note=note)

    def check_network(self, network: NetworkSpec) -> None:
        single = network.gpus_per_node.value == 1
        if single and network.intra_node is not None:
            raise self.fail("network.intra_node", "expected no table when gpus_per_node is 1")
        if not single and network.intra_node is None:
            raise self.fail(
                "network.intra_node",
                f"missing; expected a table when gpus_per_node is {network.gpus_per_node.value}",
            )


def loads_profile(text: str, source: str = "<string>") -> HardwareProfile:
    """Parse and validate profile TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _Reader(source).fail("", f"not valid TOML: {exc}") from None
    return _Reader(source).profile(data)


def list_profiles() -> list[str]:
    """The names of the packaged profiles, sorted."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(path_or_name: str | Path) -> HardwareProfile:
    """Load a profile from a file path, or a packaged one by bare name (``"gh200"``).

    A ``Path``, or a string containing a path separator or ending in ``.toml``,
    is a file; anything else is a packaged profile's name.
    """
    text_arg = str(path_or_name)
    is_path = isinstance(path_or_name, Path) or "/" in text_arg or "\\" in text_arg
    if is_path or text_arg.endswith(".toml"):
        path = Path(path_or_name)
        source = text_arg
    else:
        path = PROFILES_DIR / f"{text_arg}.toml"
        source = path.name
        if not path.is_file():
            known = ", ".join(list_profiles())
            raise ProfileError(f"unknown hardware profile {text_arg!r}; known profiles: {known}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise ProfileError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    return loads_profile(text, source)


# ---------------------------------------------------------------------------------------
# Writing


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value) or value == 0 or 1e-3 <= abs(value) < 1e5:
        return repr(value)
    for digits in range(17):
        text = f"{value:.{digits}e}"
        if float(text) == value:
            return text
    return repr(value)  # pragma: no cover - 17 significant digits always round-trip


def _dump_section(obj: Any, path: str, lines: list[str]) -> None:
    scalars: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata["kind"]
        if kind == "text":
            scalars.append(f"{f.name} = {_toml_string(value)}")
        elif kind == "link-kind":
            scalars.append(f"{f.name} = {_toml_string(LinkKind(value).value)}")
        elif value is not None:
            tables.append((f.name, value))
    if path:
        lines.extend(["", f"[{path}]"])
    lines.extend(scalars)
    for name, value in tables:
        sub = _join(path, name)
        if isinstance(value, Quantity):
            lines.extend(["", f"[{sub}]", f"value = {_toml_number(value.value)}"])
            lines.append(f"unit = {_toml_string(value.unit)}")
            lines.append(f"basis = {_toml_string(Basis(value.basis).value)}")
            lines.append(f"source = {_toml_string(value.source)}")
            if value.note:
                lines.append(f"note = {_toml_string(value.note)}")
        else:
            _dump_section(value, sub, lines)


def dump_profile(profile: HardwareProfile) -> str:
    """The profile as TOML text in the packaged files' layout; ``loads_profile`` reads it back."""
    lines = [f"format_version = {PROFILE_FORMAT_VERSION}"]
    _dump_section(profile, "", lines)
    return "\n".join(lines) + "\n"
