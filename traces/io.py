"""The on-disk form of a trace: ``<run_dir>/trace/{metadata.json,spans.parquet,counters.parquet}``.

Measured runs (the runtime) and simulated runs (the simulator) are written by
``write_trace`` and read by ``read_trace``, so every consumer sees the same
columns and dtypes. The reader treats its input as untrusted: anything wrong
becomes one ``TraceError`` line that names the file and what was expected, so
that a report over a hundred run directories can say which one is bad and go
on. Nothing is pickled; metadata is JSON, tables are Parquet with fixed Arrow
schemas. See ``SCHEMA.md`` beside this file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.atomic import atomic_write_text, atomic_writer
from traces.schema import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    Category,
    CounterSample,
    RunMetadata,
    Span,
    Tier,
)

__all__ = [
    "CHUNKS_DIRNAME",
    "COUNTERS_FILENAME",
    "COUNTERS_SCHEMA",
    "METADATA_FILENAME",
    "SPANS_FILENAME",
    "SPANS_SCHEMA",
    "TRACE_DIRNAME",
    "Trace",
    "TraceError",
    "chunk_files",
    "concat_parquet",
    "counters_frame",
    "counters_table",
    "metadata_from_dict",
    "metadata_json",
    "metadata_to_dict",
    "read_table",
    "read_trace",
    "spans_frame",
    "spans_table",
    "write_table",
    "write_trace",
]

TRACE_DIRNAME = "trace"
METADATA_FILENAME = "metadata.json"
SPANS_FILENAME = "spans.parquet"
COUNTERS_FILENAME = "counters.parquet"
CHUNKS_DIRNAME = "chunks"
"""``trace/chunks/``: spans and counters a running (or killed) run has written so far."""

_VERSION_KEY = b"asteria_bench.schema_version"
_FILE_METADATA = {_VERSION_KEY: str(SCHEMA_VERSION).encode()}
_READABLE_KEYS = {str(v).encode() for v in READABLE_VERSIONS}


def _versions() -> str:
    return " or ".join(str(v) for v in READABLE_VERSIONS)


SPANS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("start_ns", pa.int64(), nullable=False),
        pa.field("end_ns", pa.int64(), nullable=False),
        pa.field("track", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("block", pa.string()),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("tier_from", pa.string()),
        pa.field("tier_to", pa.string()),
        pa.field("detail", pa.string()),
    ]
)
"""Column order and types of ``spans.parquet`` (Parquet dictionary-encodes the strings)."""

COUNTERS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("time_ns", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("key", pa.string()),
    ]
)

_ENUM_COLUMNS: dict[str, type[Enum]] = {"category": Category, "tier_from": Tier, "tier_to": Tier}


class TraceError(ValueError):
    """A trace that cannot be read; the message is one line naming the file."""


@dataclass
class Trace:
    """A trace loaded in memory: columns are the ``Span``/``CounterSample`` field names."""

    metadata: RunMetadata
    spans: pd.DataFrame
    counters: pd.DataFrame


def _one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _short_repr(value: object) -> str:
    return _one_line(repr(value), 60)


# --- metadata ---------------------------------------------------------------


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def metadata_to_dict(metadata: RunMetadata) -> dict[str, Any]:
    """Plain JSON data for ``metadata``; ``metadata_from_dict`` inverts it exactly."""
    plain = _to_plain(metadata)
    assert isinstance(plain, dict)
    return plain


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is dict:
        return "object"
    if origin is tuple:
        return "list"
    if dataclasses.is_dataclass(tp):
        return "object"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _decode(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (parsed JSON) against the annotation ``tp`` and build it."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _decode(value, arg, where)
            except TraceError:
                continue
        raise TraceError(f"field {where}: expected {_type_name(tp)}, got {_short_repr(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _decode_dataclass(value, tp, where)
    elif origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if isinstance(value, dict):
            return {
                _decode(k, key_tp, f"{where}.<key>"): _decode(v, value_tp, f"{where}.{k}")
                for k, v in value.items()
            }
    elif origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, list):
            return tuple(_decode(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, tp):
        return value
    raise TraceError(f"field {where}: expected {_type_name(tp)}, got {_short_repr(value)}")


def _decode_dataclass(data: dict[str, Any], cls: Any, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TraceError(f"unexpected field {prefix}{unknown[0]}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _decode(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TraceError(f"missing field {prefix}{name} ({_type_name(hints[name])})")
    return cls(**kwargs)


def metadata_from_dict(data: Any) -> RunMetadata:
    """Build ``RunMetadata`` from parsed JSON of a readable schema version (1 or 2).

    Raises ``TraceError`` naming the offending field. Unknown fields are refused
    too: a field this build does not know means a writer of another version.
    """
    if not isinstance(data, dict):
        raise TraceError(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is None:
        raise TraceError("missing field schema_version (integer)")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise TraceError(
            f"schema_version {_short_repr(version)} is not supported "
            f"(this build reads {_versions()})"
        )
    if version < 2:
        for name in ("rank", "world_size"):
            if name in data:
                raise TraceError(f"unexpected field {name} in a schema_version {version} trace")
    metadata = _decode_dataclass(data, RunMetadata, "")
    assert isinstance(metadata, RunMetadata)
    return metadata


# --- tables -----------------------------------------------------------------


def _enum_value(value: Any, enum: type[Enum]) -> Any:
    if value is None:
        return None
    return value.value if isinstance(value, enum) else enum(value).value


def _spans_table(spans: Sequence[Span]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "name": [s.name for s in spans],
            "category": [_enum_value(s.category, Category) for s in spans],
            "start_ns": [s.start_ns for s in spans],
            "end_ns": [s.end_ns for s in spans],
            "track": [s.track for s in spans],
            "step": [s.step for s in spans],
            "block": [s.block for s in spans],
            "bytes": [s.bytes for s in spans],
            "tier_from": [_enum_value(s.tier_from, Tier) for s in spans],
            "tier_to": [_enum_value(s.tier_to, Tier) for s in spans],
            "detail": [s.detail for s in spans],
        },
        schema=SPANS_SCHEMA,
    )


def _counters_table(counters: Sequence[CounterSample]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "name": [c.name for c in counters],
            "time_ns": [c.time_ns for c in counters],
            "value": [c.value for c in counters],
            "step": [c.step for c in counters],
            "key": [c.key for c in counters],
        },
        schema=COUNTERS_SCHEMA,
    )


def _frame(table: pa.Table) -> pd.DataFrame:
    """The one conversion both in-memory and on-disk traces go through, so dtypes agree."""
    return table.to_pandas()


def spans_frame(spans: Sequence[Span]) -> pd.DataFrame:
    """Spans as the same DataFrame ``read_trace`` returns (missing strings are NA)."""
    return _frame(_spans_table(spans))


def counters_frame(counters: Sequence[CounterSample]) -> pd.DataFrame:
    """Counters as the same DataFrame ``read_trace`` returns."""
    return _frame(_counters_table(counters))


def _is_stringlike(tp: pa.DataType) -> bool:
    if pa.types.is_dictionary(tp):
        return _is_stringlike(tp.value_type)
    return bool(pa.types.is_string(tp) or pa.types.is_large_string(tp))


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_string(expected):
        return _is_stringlike(actual)
    if pa.types.is_int64(expected):
        return bool(pa.types.is_integer(actual))
    if pa.types.is_float64(expected):
        return bool(pa.types.is_floating(actual) or pa.types.is_integer(actual))
    return bool(actual.equals(expected))


def _conform(table: pa.Table, schema: pa.Schema, file: Path) -> pa.Table:
    """Check ``table`` against ``schema`` and cast it to exactly that schema."""
    meta = table.schema.metadata or {}
    version = meta.get(_VERSION_KEY)
    if version is not None and version not in _READABLE_KEYS:
        raise TraceError(
            f"{file}: schema_version {_short_repr(version.decode(errors='replace'))} is not "
            f"supported (this build reads {_versions()})"
        )
    names = table.column_names
    extra = [n for n in names if schema.get_field_index(n) < 0]
    if extra:
        raise TraceError(f"{file}: unexpected column {extra[0]!r}")
    columns = []
    for field in schema:
        if field.name not in names:
            raise TraceError(f"{file}: missing column {field.name!r} ({field.type})")
        column = table.column(field.name)
        if not _compatible(column.type, field.type):
            raise TraceError(
                f"{file}: column {field.name!r} has type {column.type}, expected {field.type}"
            )
        if not field.nullable and column.null_count:
            raise TraceError(
                f"{file}: column {field.name!r} has {column.null_count} null value(s), "
                "expected none"
            )
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowException, ValueError) as exc:
            raise TraceError(
                f"{file}: column {field.name!r} does not fit {field.type}: {_one_line(exc)}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _check_spans(table: pa.Table, file: Path) -> None:
    for column, enum in _ENUM_COLUMNS.items():
        allowed = {e.value for e in enum}
        seen = pc.unique(table.column(column).drop_null()).to_pylist()
        bad = sorted(v for v in seen if v not in allowed)
        if bad:
            raise TraceError(
                f"{file}: column {column!r} has unknown value {_short_repr(bad[0])} "
                f"(expected one of {', '.join(sorted(allowed))})"
            )
    backwards = pc.less(table.column("end_ns"), table.column("start_ns"))
    if pc.any(backwards).as_py():
        row = pc.index(backwards, True).as_py()
        start, end = table.column("start_ns")[row].as_py(), table.column("end_ns")[row].as_py()
        raise TraceError(
            f"{file}: row {row} (span {_short_repr(table.column('name')[row].as_py())}) "
            f"has end_ns {end} < start_ns {start}, expected end_ns >= start_ns"
        )


def _read_table(file: Path, schema: pa.Schema) -> pa.Table:
    if not file.is_file():
        raise TraceError(f"{file}: missing file")
    try:
        table = pq.ParquetFile(file).read()
        # Parquet readers do not check that strings are UTF-8; full validation does.
        table.validate(full=True)
    except Exception as exc:  # untrusted bytes: pyarrow may raise any of several types
        raise TraceError(f"{file}: not a readable Parquet file ({_one_line(exc)})") from None
    return _conform(table, schema, file)


def _read_metadata(file: Path) -> RunMetadata:
    if not file.is_file():
        raise TraceError(f"{file}: missing file")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise TraceError(f"{file}: cannot read ({_one_line(exc)})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TraceError(f"{file}: invalid JSON ({_one_line(exc)})") from None
    try:
        return metadata_from_dict(data)
    except TraceError as exc:
        raise TraceError(f"{file}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a dataclass __post_init__ refusing a value
        raise TraceError(f"{file}: {_one_line(exc)}") from None


def _trace_dir(path: Path) -> Path:
    path = Path(path)
    if (path / TRACE_DIRNAME).is_dir():
        return path / TRACE_DIRNAME
    if (path / METADATA_FILENAME).exists() or path.name == TRACE_DIRNAME:
        return path
    raise TraceError(f"{path}: no {TRACE_DIRNAME}/ folder (expected a run directory)")


def chunk_files(trace_dir: Path, prefix: str) -> list[Path]:
    """``trace/chunks/<prefix>-NNNNNN.parquet`` in the order they were written."""
    folder = Path(trace_dir) / CHUNKS_DIRNAME
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(prefix + "-") and p.suffix == ".parquet"
    )


def _read_tables(trace_dir: Path, filename: str, prefix: str, schema: pa.Schema) -> pa.Table:
    """The consolidated file if the run finished, else every chunk it wrote (possibly none)."""
    whole = trace_dir / filename
    chunks = chunk_files(trace_dir, prefix)
    if not whole.exists() and not chunks and (trace_dir / CHUNKS_DIRNAME).is_dir():
        return schema.empty_table()  # streaming began, nothing flushed yet
    if whole.exists() or not chunks:
        table = _read_table(whole, schema)
        if filename == SPANS_FILENAME:
            _check_spans(table, whole)
        return table
    tables = []
    for chunk in chunks:
        table = _read_table(chunk, schema)
        if prefix == "spans":
            _check_spans(table, chunk)
        tables.append(table)
    return pa.concat_tables(tables)


def read_trace(path: Path) -> Trace:
    """Load the trace of a run; ``path`` is the run directory or its ``trace/`` folder.

    A run that stopped before its trace was consolidated is read from its
    chunks (``traces.stream``): every step it flushed is there. Raises
    ``TraceError`` (a ``ValueError``) with a one-line message for any missing,
    unreadable or malformed file.
    """
    trace_dir = _trace_dir(path)
    metadata = _read_metadata(trace_dir / METADATA_FILENAME)
    spans = _read_tables(trace_dir, SPANS_FILENAME, "spans", SPANS_SCHEMA)
    counters = _read_tables(trace_dir, COUNTERS_FILENAME, "counters", COUNTERS_SCHEMA)
    return Trace(metadata=metadata, spans=_frame(spans), counters=_frame(counters))


def _write_table(table: pa.Table, file: Path) -> None:
    table = table.replace_schema_metadata(_FILE_METADATA)
    with atomic_writer(file) as fh:
        pq.write_table(table, fh, compression="zstd")


def metadata_json(metadata: RunMetadata) -> str:
    """``metadata.json``'s text; refuses what is not plain JSON data (NaN, odd keys)."""
    try:
        return json.dumps(metadata_to_dict(metadata), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run metadata is not plain JSON data: {exc}") from None


def concat_parquet(files: Sequence[Path], schema: pa.Schema, target: Path) -> None:
    """Write the tables of ``files`` one after another into ``target`` (atomically).

    One file is in memory at a time, so consolidating a long run's chunks
    takes the memory of a chunk, not of the run.
    """
    with atomic_writer(target) as fh:
        writer = pq.ParquetWriter(fh, schema.with_metadata(_FILE_METADATA), compression="zstd")
        try:
            for file in files:
                writer.write_table(
                    _read_table(file, schema).replace_schema_metadata(_FILE_METADATA)
                )
        finally:
            writer.close()


spans_table = _spans_table
counters_table = _counters_table
read_table = _read_table
write_table = _write_table


def write_trace(
    run_dir: Path,
    metadata: RunMetadata,
    spans: Sequence[Span],
    counters: Sequence[CounterSample],
) -> Path:
    """Write the trace of a run into ``run_dir/trace/`` and return that folder.

    Each file is replaced atomically; ``metadata.json`` is written last, so a
    folder with a new metadata file also has the tables written with it.
    Raises ``ValueError`` before touching disk if a span ends before it starts
    or the metadata is not plain JSON data (finite numbers, string keys).
    """
    spans_out = _spans_table(spans)
    backwards = [s for s in spans if s.end_ns < s.start_ns]
    if backwards:
        raise ValueError(f"span {backwards[0].name!r} ends before it starts")
    counters_out = _counters_table(counters)
    text = metadata_json(metadata)
    trace_dir = Path(run_dir) / TRACE_DIRNAME
    trace_dir.mkdir(parents=True, exist_ok=True)
    _write_table(spans_out, trace_dir / SPANS_FILENAME)
    _write_table(counters_out, trace_dir / COUNTERS_FILENAME)
    atomic_write_text(trace_dir / METADATA_FILENAME, text)
    return trace_dir
