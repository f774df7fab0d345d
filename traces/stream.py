"""A run's trace written as it goes: a crash keeps every finished step, memory stays flat.

``TraceStream`` drains a ``Recorder`` into chunk files under
``trace/chunks/`` every few steps or seconds (each written atomically: a
temporary name, fsync, rename), after ``begin`` has written
``metadata.json``. ``read_trace`` reads a trace whose chunks were never
consolidated (a run that was killed) as well as a finished one. ``finish``
consolidates: every chunk and what is still in the recorder become
``spans.parquet`` and ``counters.parquet``, then the chunks are removed and
``metadata.json`` is written again, last.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from traces.atomic import atomic_write_text
from traces.io import (
    CHUNKS_DIRNAME,
    COUNTERS_FILENAME,
    COUNTERS_SCHEMA,
    SPANS_FILENAME,
    SPANS_SCHEMA,
    TRACE_DIRNAME,
    chunk_files,
    concat_parquet,
    counters_table,
    metadata_json,
    spans_table,
    write_table,
)
from traces.recorder import Recorder
from traces.schema import RunMetadata


class TraceStream:
    """Chunked trace files of one run (one rank) in ``run_dir/trace/``."""

    def __init__(self, run_dir: Path, *, every_steps: int = 25, every_s: float = 10.0) -> None:
        if every_steps < 1 or every_s <= 0:
            raise ValueError("a trace stream needs every_steps >= 1 and every_s > 0")
        self.trace_dir = Path(run_dir) / TRACE_DIRNAME
        self.chunks_dir = self.trace_dir / CHUNKS_DIRNAME
        self.every_steps = every_steps
        self.every_s = every_s
        self._index = 0
        self._last_flush = time.monotonic()
        self.flushed_spans = 0

    def begin(self, metadata: RunMetadata) -> None:
        """Write ``metadata.json`` first, so that even a run killed now leaves a readable trace."""
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.trace_dir / "metadata.json", metadata_json(metadata))

    @property
    def chunks_written(self) -> int:
        """How many chunks this run has written: a checkpoint's trace position."""
        return self._index

    def rewind(self, chunks: int) -> None:
        """Continue after chunk ``chunks`` (a resumed run): later chunks held steps it redoes."""
        for prefix in ("spans", "counters"):
            for path in chunk_files(self.trace_dir, prefix):
                if int(path.stem.rpartition("-")[2]) > chunks:
                    path.unlink()
        self._index = chunks

    def step_done(self, recorder: Recorder, step: int) -> None:
        """Flush when ``every_steps`` steps or ``every_s`` seconds have gone by."""
        if step % self.every_steps == 0 or time.monotonic() - self._last_flush >= self.every_s:
            self.flush(recorder)

    def flush(self, recorder: Recorder) -> None:
        spans, counters = recorder.drain()
        self._last_flush = time.monotonic()
        if not spans and not counters:
            return
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self._index += 1
        write_table(spans_table(spans), self.chunks_dir / f"spans-{self._index:06d}.parquet")
        write_table(
            counters_table(counters), self.chunks_dir / f"counters-{self._index:06d}.parquet"
        )
        self.flushed_spans += len(spans)

    def finish(self, recorder: Recorder, metadata: RunMetadata) -> Path:
        """One ``spans.parquet`` and ``counters.parquet`` from every chunk and the recorder's rest.

        The chunks stay until the run directory has its final name
        (``discard_chunks``): a run killed between the two is resumed from
        them, and a resumed run that has no step left to take consolidates
        them again instead of an empty trace.
        """
        self.flush(recorder)
        for name, schema, prefix in (
            (SPANS_FILENAME, SPANS_SCHEMA, "spans"),
            (COUNTERS_FILENAME, COUNTERS_SCHEMA, "counters"),
        ):
            concat_parquet(chunk_files(self.trace_dir, prefix), schema, self.trace_dir / name)
        atomic_write_text(self.trace_dir / "metadata.json", metadata_json(metadata))
        return self.trace_dir


def discard_chunks(run_dir: Path) -> None:
    """Remove every consolidated trace's chunks under a finished run (each rank's too)."""
    for chunks in sorted(Path(run_dir).glob(f"**/{TRACE_DIRNAME}/{CHUNKS_DIRNAME}")):
        shutil.rmtree(chunks, ignore_errors=True)
