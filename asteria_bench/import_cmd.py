"""``asteria-bench import-kineto``: PyTorch profiler traces become a run directory.

One file per rank (``traces.kineto`` reads each); the run directory looks
like any other (``trace/`` for rank 0, ``ranks/<r>/trace/`` for the others,
and the files ``reports.derive`` makes from them), with ``kind =
"imported"``, so that ``replay``, ``compare`` and ``report`` read it, and
``replay --staleness`` projects an asynchronous refresh onto it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from asteria_bench.errors import UserError
from asteria_bench.outputs import check_out_folder, write_out_folder
from traces.io import write_trace
from traces.kineto import (
    DEFAULT_REFRESH_OPS,
    KinetoError,
    KinetoRank,
    modelled_as,
    read_kineto,
    refresh_frequency,
)
from traces.schema import GpuInfo, HardwareInfo, RunMetadata, SoftwareInfo

UNKNOWN = "unknown (not in the profiler trace)"


def ranks_of(traces: list[KinetoRank], paths: list[Path]) -> list[KinetoRank]:
    """The traces in rank order: ``distributedInfo``'s rank, else the order given.

    One file alone is imported as it is (one rank of a larger job, say): the
    run then has one rank, and ``config["import"]`` keeps what the trace said.
    """
    if len(traces) == 1:
        return traces
    given = [t.rank for t in traces]
    if all(r is None for r in given):
        ranks = list(range(len(traces)))
    elif any(r is None for r in given):
        missing = paths[given.index(None)]
        raise UserError(f"TRACE: {missing} has no distributedInfo rank while others do")
    else:
        ranks = [int(r) for r in given if r is not None]
    if sorted(ranks) != list(range(len(traces))):
        raise UserError(
            f"TRACE: ranks {sorted(ranks)} given; expected one trace for each of 0..{len(traces) - 1}"
        )
    worlds = {t.world_size for t in traces if t.world_size}
    if worlds and worlds != {len(traces)}:
        raise UserError(
            f"TRACE: distributedInfo world_size {sorted(worlds)} does not match the"
            f" {len(traces)} trace(s) given"
        )
    order = sorted(range(len(traces)), key=lambda i: ranks[i])
    return [traces[i] for i in order]


def metadata_of(
    trace: KinetoRank,
    run_id: str,
    rank: int,
    world_size: int,
    precondition_frequency: int | None,
) -> RunMetadata:
    refreshes = bool(trace.refresh_steps)
    optimizer = modelled_as(trace.optimizer_class, refreshes)
    frequency = precondition_frequency or refresh_frequency(trace.refresh_steps) or 1
    first = trace.refresh_steps[0] if trace.refresh_steps else frequency
    gpus = tuple(GpuInfo(d.index, d.name, d.memory_bytes, trace.cuda_driver) for d in trace.devices)
    return RunMetadata(
        run_id=run_id,
        kind="imported",
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        hardware=HardwareInfo(
            cpu_model=UNKNOWN,
            cpu_cores_logical=0,
            cpu_cores_physical=0,
            memory_bytes=0,
            gpus=gpus,
            hostname=trace.hostname,
        ),
        software=SoftwareInfo(
            python=UNKNOWN, torch=UNKNOWN, platform=UNKNOWN, asteria_bench="(imported)"
        ),
        optimizer=optimizer,
        hyperparameters={
            "precondition_frequency": frequency,
            "start_preconditioning_step": first % frequency or frequency,
        },
        model={
            "name": "imported",
            "blocks": {b: [d, d] for b, d in sorted(trace.block_dims.items())},
        },
        policies={"staleness": "sync", "placement": "device", "workers": "1"},
        seed=0,
        git_revision=None,
        device="cuda:0" if trace.on_gpu else "cpu",
        config={
            "import": {
                "format": "kineto",
                "source": trace.source.name,
                "optimizer_class": trace.optimizer_class,
                "modelled_as": optimizer,
                "profiler_steps": trace.profiler_steps,
                "refresh_steps": trace.refresh_steps,
                "distributed_info": {"rank": trace.rank, "world_size": trace.world_size},
            }
        },
        rank=rank,
        world_size=world_size,
    )


def _blocks_everywhere(trace: KinetoRank) -> None:
    """Every refresh block gets a shape (the factor's side where the trace recorded shapes)."""
    for span in trace.spans:
        if span.block is not None:
            trace.block_dims.setdefault(span.block, 1)


def import_kineto_command(
    paths: list[Path],
    *,
    out: Path,
    overwrite: bool = False,
    refresh_ops: str | None = None,
    precondition_frequency: int | None = None,
) -> None:
    from reports.derive import write_derived

    if not paths:
        raise UserError("TRACE: give at least one profiler trace (.json or .json.gz)")
    if precondition_frequency is not None and precondition_frequency < 1:
        raise UserError(
            f"--precondition-frequency: expected a positive integer, got {precondition_frequency}"
        )
    patterns: tuple[str, ...] = DEFAULT_REFRESH_OPS
    if refresh_ops is not None:
        patterns = tuple(p.strip() for p in refresh_ops.split(",") if p.strip())
        if not patterns:
            raise UserError("--refresh-ops: expected comma-separated op name parts, e.g. eigh,qr")
    for path in paths:
        if not path.is_file():
            raise UserError(f"TRACE: {path} is not a file")
    check_out_folder(out, overwrite=overwrite)
    try:
        traces = [read_kineto(p, patterns) for p in paths]
    except KinetoError as exc:
        raise UserError(f"TRACE: {exc}") from None
    ordered = ranks_of(traces, paths)
    world = len(ordered)
    for trace in ordered:
        _blocks_everywhere(trace)

    def write(folder: Path) -> None:
        for rank, trace in enumerate(ordered):
            where = folder if rank == 0 else folder / "ranks" / str(rank)
            meta = metadata_of(trace, out.name, rank, world, precondition_frequency)
            write_trace(where, meta, trace.spans, trace.counters)
        write_derived(folder)

    write_out_folder(out, "import-kineto", write)
    first = ordered[0]
    optimizer = modelled_as(first.optimizer_class, bool(first.refresh_steps))
    print(
        f"{out}: {len(first.steps)} step(s) of {world} rank(s) from {first.source.name};"
        f" optimizer {first.optimizer_class or 'not profiled'} (modelled as {optimizer}),"
        f" refresh in {len(first.refresh_steps)} step(s)"
    )
