"""PyTorch profiler (Kineto) Chrome traces, read into this project's trace schema.

``torch.profiler`` writes one JSON file per rank (``export_chrome_trace``,
``.json`` or ``.json.gz``): ``traceEvents`` of complete events (``ph = "X"``,
``ts`` and ``dur`` in microseconds) with a category (``cpu_op``,
``user_annotation``, ``kernel``, ``gpu_memcpy``, ...), and beside them
``deviceProperties`` and ``distributedInfo`` (rank, world size). This module
turns one such file into spans in the schema of ``traces/SCHEMA.md`` (kind
``imported``), so that reports, ``replay`` and the simulator read it as they
read a measured run:

- The k-th ``ProfilerStep#N`` of the trace (in time) is step k, a ``step``
  span on the track ``training`` with ``detail = "ProfilerStep#N"``: a
  profiled window (steps 100 to 105, say) is numbered from 1, as a run is, so
  that ``replay`` simulates the steps profiled and no others, and its first
  step, often slowed by the profiler's start, is the one the workload model
  keeps apart. ``profiler_steps`` keeps the profiler's numbers.
- ``forward`` and ``backward`` are the loop's own annotations where it made
  them (``record_function("## forward ##")``, as HTA's examples do). Else
  ``backward`` runs from the first to the last autograd function the engine
  evaluated in the step (``autograd::engine::evaluate_function: ...``), on
  whatever thread: the training thread waits in ``loss.backward()`` meanwhile;
  and ``forward`` from the end of ``Optimizer.zero_grad#...`` (or the step's
  start) to the start of backward (or of the optimizer step, without one).
- ``Optimizer.step#<Class>.step`` is ``optimizer_step``. Inside it, the ops
  whose names match ``refresh_ops`` (eigendecompositions, QR, Cholesky, inverse
  roots; the outermost of nested matches) are the amortized refresh: the k-th
  such op of a step is block ``p<k>.r0.c0``'s ``refresh``. Steps that run them
  give the refresh frequency.
- GPU kernels, copies and memsets are spans on one track per device and
  stream (``cuda:<device> stream <s>``), in the step that launched them
  (matched by ``correlation`` to the launching runtime call). NCCL kernels are
  ``collective`` spans with the bytes of the message where the trace records
  ``In msg nelems`` / ``Out msg nelems`` and ``dtype`` (on the kernel or on the
  ``record_param_comms`` op of the same ``External id``); host-device copies
  are ``transfer`` spans with their bytes and tiers.
- ``[memory]`` events of a CUDA device become ``device_memory_bytes``.

The simulator models a block's refresh by its optimizer's plan; an imported
optimizer is modelled as ``modelled_as`` (the plan of the same name for
Shampoo, SOAP and KL-Shampoo; ``shampoo``'s schedule, a refresh every f steps
with τ = 0, for another class that runs refresh ops; ``adamw``, no refresh, for
the rest), and the class the trace names is kept in ``config["import"]``.
Anything malformed is a ``KinetoError`` whose one line names the file.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traces.schema import Category, CounterSample, Span, Tier

STEP_PATTERN = re.compile(r"^ProfilerStep#(\d+)$")
OPTIMIZER_STEP = re.compile(r"^Optimizer\.step#([^.]+)\.step$")
ZERO_GRAD = re.compile(r"^Optimizer\.zero_grad#")
AUTOGRAD = "autograd::engine::evaluate_function"
PHASE_ANNOTATION = re.compile(r"^(?:## )?(forward|backward)(?: ##)?$", re.IGNORECASE)
"""``record_function("## forward ##")`` and the like, where a training loop marks its phases."""
DEFAULT_REFRESH_OPS = ("eigh", "linalg_eig", "linalg_qr", "cholesky", "svd", "inverse_root")
"""Substrings (case-insensitive) of the op names that are a second-order optimizer's refresh."""

TRAINING_TRACK = "training"
MAX_BYTES = 4 << 30
"""The largest trace file read (uncompressed): a larger one is a mistake, not a profile."""

_DTYPE_BYTES = {
    "Float": 4, "float": 4, "float32": 4, "Double": 8, "double": 8, "float64": 8,
    "Half": 2, "half": 2, "float16": 2, "BFloat16": 2, "bfloat16": 2,
    "Long": 8, "long": 8, "int64": 8, "Int": 4, "int": 4, "int32": 4,
    "Byte": 1, "Char": 1, "uint8": 1, "int8": 1, "Bool": 1, "bool": 1,
}  # fmt: skip
KNOWN_OPTIMIZERS = {
    "soap": "soap",
    "shampoo": "shampoo",
    "distributedshampoo": "shampoo",
    "klshampoo": "kl-shampoo",
    "kl_shampoo": "kl-shampoo",
}


class KinetoError(ValueError):
    """A profiler trace that cannot be imported: ``<file>: <what> (expected ...)``, one line."""


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_bytes: int


@dataclass
class KinetoRank:
    """One rank's profiler trace in the schema's terms."""

    source: Path
    rank: int | None
    world_size: int | None
    steps: list[int]  # 1..k
    profiler_steps: list[int]  # the N of each ProfilerStep#N, in the same order
    spans: list[Span]
    counters: list[CounterSample]
    optimizer_class: str | None
    refresh_steps: list[int]
    block_dims: dict[str, int]
    devices: list[GpuDevice] = field(default_factory=list)
    hostname: str = ""
    cuda_driver: str = ""

    @property
    def on_gpu(self) -> bool:
        return bool(self.devices) or any(s.track.startswith("cuda:") for s in self.spans)


@dataclass(frozen=True)
class _Event:
    name: str
    cat: str
    start_ns: int
    end_ns: int
    tid: str
    args: dict[str, Any]


def load_document(path: Path) -> dict[str, Any]:
    """The trace's JSON object (``.gz`` or not, by content), or a ``KinetoError``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KinetoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                raw = fh.read(MAX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise KinetoError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) > MAX_BYTES:
        raise KinetoError(f"{path}: larger than {MAX_BYTES >> 30} GiB uncompressed")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = " ".join(str(exc).split())[:160]
        raise KinetoError(f"{path}: not JSON ({message})") from None
    if not isinstance(document, dict):
        raise KinetoError(f"{path}: expected a JSON object with traceEvents")
    events = document.get("traceEvents")
    if not isinstance(events, list):
        raise KinetoError(f"{path}: no traceEvents list (expected a torch.profiler trace)")
    return document


def _ns(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise KinetoError(f"{where}: expected a finite number of microseconds, got {value!r:.40}")
    if abs(value) > 4e15:  # ~127 years: start + duration stays inside int64 ns
        raise KinetoError(f"{where}: time {value!r:.40} µs is out of range")
    return round(value * 1000)


def _events(path: Path, raw: list[Any]) -> list[_Event]:
    """The complete events (``ph = "X"``) of the trace, times in integer ns."""
    events = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        name, where = e.get("name"), f"{path}: traceEvents[{i}]"
        if not isinstance(name, str):
            raise KinetoError(f"{where}: expected a string name, got {name!r:.40}")
        start = _ns(e.get("ts"), f"{where} ({name[:40]}) ts")
        duration = _ns(e.get("dur", 0), f"{where} ({name[:40]}) dur")
        if duration < 0:
            raise KinetoError(f"{where} ({name[:40]}): negative dur")
        args = e.get("args")
        events.append(
            _Event(
                name=name,
                cat=str(e.get("cat", "")),
                start_ns=start,
                end_ns=start + duration,
                tid=str(e.get("tid", "")),
                args=args if isinstance(args, dict) else {},
            )
        )
    return events


def _outermost(events: list[_Event]) -> list[_Event]:
    """Drop every event that lies inside an earlier kept one (nested ops of one call)."""
    kept: list[_Event] = []
    for e in sorted(events, key=lambda e: (e.start_ns, -e.end_ns)):
        if kept and e.start_ns >= kept[-1].start_ns and e.end_ns <= kept[-1].end_ns:
            continue
        kept.append(e)
    return kept


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _message_bytes(args: dict[str, Any]) -> int:
    """Bytes of a collective's message: the larger of in and out, where the trace records them."""
    size = _DTYPE_BYTES.get(str(args.get("dtype", "")))
    found = [_int(args.get(k)) for k in ("In msg nelems", "Out msg nelems")]
    counts = [c for c in found if c is not None and c >= 0]
    return max(counts) * size if size and counts else 0


def read_kineto(path: Path, refresh_ops: Sequence[str] = DEFAULT_REFRESH_OPS) -> KinetoRank:
    """One rank's profiler trace as spans and counters; ``KinetoError`` names what is wrong."""
    document = load_document(path)
    events = _events(path, document["traceEvents"])
    step_events = sorted(
        (e for e in events if STEP_PATTERN.match(e.name)), key=lambda e: e.start_ns
    )
    if not step_events:
        raise KinetoError(
            f"{path}: no ProfilerStep#N events (record with torch.profiler.profile(schedule=...)"
            " and call prof.step() once per training step)"
        )
    main_tid = step_events[0].tid
    profiled = [int(STEP_PATTERN.match(e.name).group(1)) for e in step_events]  # type: ignore[union-attr]
    if len(set(profiled)) != len(profiled):
        raise KinetoError(f"{path}: ProfilerStep numbers repeat (one trace per rank expected)")
    numbers = list(range(1, len(step_events) + 1))
    starts = np.array([e.start_ns for e in step_events], dtype=np.int64)
    ends = np.array([e.end_ns for e in step_events], dtype=np.int64)

    def step_of(t: int) -> int | None:
        i = int(np.searchsorted(starts, t, side="right")) - 1
        return numbers[i] if i >= 0 and t <= ends[i] else None

    spans: list[Span] = []
    patterns = [p.lower() for p in refresh_ops if p]
    refresh_steps: list[int] = []
    block_dims: dict[str, int] = {}
    optimizer_class: str | None = None
    by_step: dict[int, list[_Event]] = {n: [] for n in numbers}
    for e in events:
        n = step_of(e.start_ns)
        if n is not None and e.cat in ("cpu_op", "user_annotation"):
            by_step[n].append(e)
    for n, step in zip(numbers, step_events, strict=True):
        inside = by_step[n]
        spans.append(
            Span("step", Category.STEP, step.start_ns, step.end_ns, TRAINING_TRACK, n,
                 detail=step.name)
        )  # fmt: skip
        optimizer = [e for e in inside if OPTIMIZER_STEP.match(e.name) and e.tid == main_tid]
        zero = [e for e in inside if ZERO_GRAD.match(e.name) and e.tid == main_tid]
        marked = {
            m.group(1).lower(): e
            for e in inside
            if e.cat == "user_annotation" and (m := PHASE_ANNOTATION.match(e.name))
        }
        autograd = [e for e in inside if e.name.startswith(AUTOGRAD)]
        opt_start = min((e.start_ns for e in optimizer), default=step.end_ns)
        fwd_start = max((e.end_ns for e in zero if e.end_ns <= opt_start), default=step.start_ns)
        fwd_end = opt_start
        if "backward" in marked:
            bwd = (marked["backward"].start_ns, marked["backward"].end_ns)
        elif autograd:
            bwd = (min(e.start_ns for e in autograd), max(e.end_ns for e in autograd))
        if "backward" in marked or autograd:
            spans.append(Span("backward", Category.COMPUTE, *bwd, TRAINING_TRACK, n))
            fwd_end = bwd[0]
        if "forward" in marked:
            fwd_start, fwd_end = marked["forward"].start_ns, marked["forward"].end_ns
        if fwd_end > fwd_start:
            spans.append(Span("forward", Category.COMPUTE, fwd_start, fwd_end, TRAINING_TRACK, n))
        for opt in optimizer:
            optimizer_class = OPTIMIZER_STEP.match(opt.name).group(1)  # type: ignore[union-attr]
            spans.append(
                Span("optimizer_step", Category.OPTIMIZER, opt.start_ns, opt.end_ns,
                     TRAINING_TRACK, n, detail=opt.name)
            )  # fmt: skip
            matched = [
                e
                for e in inside
                if e is not opt
                and opt.start_ns <= e.start_ns
                and e.end_ns <= opt.end_ns
                and any(p in e.name.lower() for p in patterns)
            ]
            refresh = _outermost(matched)
            if refresh:
                refresh_steps.append(n)
            for k, e in enumerate(refresh):
                block = f"p{k}.r0.c0"
                dims = e.args.get("Input Dims")
                if isinstance(dims, list) and dims and isinstance(dims[0], list) and dims[0]:
                    side = _int(dims[0][-1])
                    if side is not None:
                        block_dims.setdefault(block, side)
                spans.append(
                    Span("refresh", Category.REFRESH, e.start_ns, e.end_ns, TRAINING_TRACK, n,
                         block=block, detail=e.name)
                )  # fmt: skip
    spans += _device_spans(events, step_of)
    info = document.get("distributedInfo")
    info = info if isinstance(info, dict) else {}
    devices = _devices(document.get("deviceProperties"))
    driver = document.get("cuda_driver_version")
    return KinetoRank(
        source=path,
        rank=_int(info.get("rank")),
        world_size=_int(info.get("world_size")),
        steps=numbers,
        profiler_steps=profiled,
        spans=sorted(spans, key=lambda s: (s.start_ns, s.track)),
        counters=_memory_counters(document["traceEvents"], step_of),
        optimizer_class=optimizer_class,
        refresh_steps=sorted(set(refresh_steps)),
        block_dims=block_dims,
        devices=devices,
        hostname=str(document.get("host_name", "")),
        cuda_driver="" if driver is None else str(driver),
    )


def _device_spans(events: list[_Event], step_of: Any) -> list[Span]:
    """GPU work on one track per device and stream, in the step whose thread launched it."""
    launched: dict[int, int] = {}
    comms: dict[int, dict[str, Any]] = {}
    for e in events:
        correlation = _int(e.args.get("correlation"))
        if e.cat in ("cuda_runtime", "cuda_driver") and correlation is not None:
            n = step_of(e.start_ns)
            if n is not None:
                launched[correlation] = n
        external = _int(e.args.get("External id"))
        if e.cat == "cpu_op" and external is not None and "nelems" in " ".join(e.args):
            comms[external] = e.args
    spans = []
    for e in events:
        if e.cat not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        correlation = _int(e.args.get("correlation"))
        n = launched.get(correlation) if correlation is not None else None
        n = n if n is not None else step_of(e.start_ns)
        track = f"cuda:{e.args.get('device', 0)} stream {e.args.get('stream', e.tid)}"
        step = -1 if n is None else n
        if e.cat == "kernel" and "nccl" in e.name.lower():
            args = e.args
            if not _message_bytes(args):
                args = comms.get(_int(e.args.get("External id")) or -1, args)
            spans.append(
                Span(e.name, Category.COLLECTIVE, e.start_ns, e.end_ns, track, step,
                     bytes=_message_bytes(args), detail=str(args.get("Collective name") or ""))
            )  # fmt: skip
        elif e.cat == "gpu_memcpy" and ("HtoD" in e.name or "DtoH" in e.name):
            to_device = "HtoD" in e.name
            spans.append(
                Span(e.name, Category.TRANSFER, e.start_ns, e.end_ns, track, step,
                     bytes=max(0, _int(e.args.get("bytes")) or 0),
                     tier_from=Tier.HOST if to_device else Tier.DEVICE,
                     tier_to=Tier.DEVICE if to_device else Tier.HOST)
            )  # fmt: skip
        else:
            spans.append(
                Span(e.name, Category.COMPUTE, e.start_ns, e.end_ns, track, step,
                     bytes=max(0, _int(e.args.get("bytes")) or 0))
            )  # fmt: skip
    return spans


def _devices(properties: Any) -> list[GpuDevice]:
    if not isinstance(properties, list):
        return []
    devices = []
    for p in properties:
        if isinstance(p, dict) and _int(p.get("id")) is not None:
            memory = _int(p.get("totalGlobalMem")) or 0
            devices.append(GpuDevice(int(p["id"]), str(p.get("name", "")), max(0, memory)))
    return devices


def _memory_counters(raw: list[Any], step_of: Any) -> list[CounterSample]:
    """``[memory]`` instants of CUDA devices (Device Type 1) as ``device_memory_bytes``."""
    counters = []
    for e in raw:
        if not isinstance(e, dict) or e.get("name") != "[memory]" or e.get("ph") != "i":
            continue
        args = e.get("args")
        if not isinstance(args, dict) or args.get("Device Type") != 1:
            continue
        total, ts = _int(args.get("Total Allocated")), e.get("ts")
        if total is None or isinstance(ts, bool) or not isinstance(ts, (int, float)):
            continue
        if not math.isfinite(ts) or abs(ts) > 4e15:
            continue
        t = round(ts * 1000)
        step = step_of(t)
        counters.append(
            CounterSample("device_memory_bytes", t, float(total), -1 if step is None else step)
        )
    return counters


def modelled_as(optimizer_class: str | None, refreshes: bool) -> str:
    """The simulator's plan for a profiled optimizer class (see the module docstring)."""
    known = KNOWN_OPTIMIZERS.get((optimizer_class or "").lower())
    if known is not None:
        return known
    return "shampoo" if refreshes else "adamw"


def refresh_frequency(refresh_steps: Sequence[int]) -> int | None:
    """The most common gap between steps that ran refresh ops; None with fewer than two."""
    gaps = np.diff(np.asarray(sorted(set(refresh_steps)), dtype=np.int64))
    if gaps.size == 0:
        return None
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])
