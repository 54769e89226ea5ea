"""Turn uploaded files and inline JSON rows into a typed Arrow table.

Every column ends up as one of six types (`COLUMN_TYPES`): string, integer, float, boolean,
date, timestamp. Timestamps are stored without a zone, in UTC (zoned inputs are converted).

Inference (no target schema):
- CSV/TSV cells are text: a column becomes boolean (`true`/`false`, any case), integer
  (no leading zeros, so "007" stays a string), float, date (`YYYY-MM-DD`), timestamp
  (ISO 8601, optional zone) when EVERY non-empty cell fits, else string. Empty cell = null.
- JSON/NDJSON/inline rows and Excel keep their native types (numbers, booleans); strings
  are only promoted to date/timestamp. Mixed types fall back to string (numbers as text,
  objects/arrays as JSON text). Excel datetimes that are all at midnight become dates.
- Parquet keeps its types, mapped onto the six (decimals become floats).

Conformance (a target schema, i.e. an append): every value must fit the existing column's
type, or the whole write is refused with `type_mismatch` naming the column and the 1-based
row of the first offending value. Text that spells a value of the target type is accepted
("5" into an integer column), as are integral floats into integers and midnight timestamps
into dates; nothing else is coerced.

Every refusal is an `InvalidRequest` with a precise code, never an unhandled exception.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import re
import uuid
import zipfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tidegate import limits as cost_limits
from tidegate.errors import InvalidRequest

COLUMN_TYPES = ("string", "integer", "float", "boolean", "date", "timestamp")
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}
FILE_TYPES = ("csv", "tsv", "json", "ndjson", "parquet", "xlsx")

MAX_COLUMNS = 1000
MAX_COLUMN_NAME_LENGTH = 255

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".xlsx": "xlsx",
}
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
_LEGACY = {
    ".xls": "legacy Excel .xls files are not supported; save the sheet as .xlsx",
    ".xlsb": "binary Excel .xlsb files are not supported; save the sheet as .xlsx",
    ".ods": "OpenDocument spreadsheets are not supported; save the sheet as .xlsx",
}

# RE2 (Arrow) and Python `re` agree on these.
_BOOL = r"^(?i:true|false)$"
_INT = r"^[+-]?(0|[1-9][0-9]*)$"  # inference: no leading zeros ("007" is an identifier)
_INT_LENIENT = r"^[+-]?[0-9]+$"  # conformance into an existing integer column
_FLOAT = r"^[+-]?((0|[1-9][0-9]*)(\.[0-9]+)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_FLOAT_LENIENT = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
_TS_ZONE = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_PY = {
    name: re.compile(rx)
    for name, rx in {"bool": _BOOL, "int": _INT_LENIENT, "float": _FLOAT_LENIENT, "date": _DATE, "ts": _TS}.items()
}


def _bad_file(message: str) -> InvalidRequest:
    return InvalidRequest("invalid_file", message[:500])


# ---------------------------------------------------------------------------------------
# Size caps: what a file may expand to (tidegate.limits), checked as early as is cheap
# ---------------------------------------------------------------------------------------

# An xlsx is a zip: a few KB of deflated XML can claim millions of rows. As Apache POI's
# ZipSecureFile does, refuse an entry that inflates more than 100-fold (beyond a small size
# where high ratios are harmless), and every workbook whose entries add up past the cap.
MAX_INFLATE_RATIO = 100
INFLATE_RATIO_GRACE_BYTES = 1024 * 1024


def _too_many_rows(rows: int) -> InvalidRequest:
    cap = cost_limits.get_limits().max_ingest_rows
    return InvalidRequest(
        "too_many_rows", f"The file has more than {cap:,} rows (at least {rows:,}); split it into several files."
    )


def _too_many_cells(cells: int, cap: int, kind: str = "file") -> InvalidRequest:
    return InvalidRequest(
        "too_many_cells",
        f"The {kind} has more than {cap:,} cells (at least {cells:,}); split it, or upload it as CSV or Parquet.",
    )


def check_table_size(rows: int, columns: int, *, cell_cap: int | None = None, kind: str = "file") -> None:
    """Refuse `rows` x `columns` past the row or cell cap (too_many_rows / too_many_cells)."""
    limits = cost_limits.get_limits()
    if rows > limits.max_ingest_rows:
        raise _too_many_rows(rows)
    cap = min(cell_cap or limits.max_ingest_cells, limits.max_ingest_cells)
    if rows * columns > cap:
        raise _too_many_cells(rows * columns, cap, kind)


def _check_inflated_size(entries: Sequence[tuple[str, int, int | None]]) -> None:
    """(name, uncompressed size, compressed size or None) of a compressed file's parts, before
    any is inflated: refuse a bomb by its own declarations (file_too_large). A zip entry that
    lies about its size cannot inflate past it: Python's zipfile stops at the declared size
    and then fails the CRC check."""
    cap = cost_limits.get_limits().max_decompressed_bytes
    total = 0
    for name, size, compressed in entries:
        total += size
        if total > cap:
            raise InvalidRequest(
                "file_too_large", f"The file expands to more than {cost_limits.describe_bytes(cap)} when decompressed."
            )
        if compressed is None or size <= INFLATE_RATIO_GRACE_BYTES:
            continue
        if size > MAX_INFLATE_RATIO * max(compressed, 1):
            raise InvalidRequest(
                "file_too_large",
                f"The file's part {name[:100]!r} expands {size // max(compressed, 1):,}-fold "
                f"({size:,} bytes from {compressed:,}); at most {MAX_INFLATE_RATIO}-fold is accepted.",
            )


# ---------------------------------------------------------------------------------------
# Column names and schemas
# ---------------------------------------------------------------------------------------


def validate_column_names(names: Sequence[object]) -> None:
    """Refuse empty, overlong, control-character and case-insensitively duplicate names."""
    if len(names) > MAX_COLUMNS:
        raise InvalidRequest("too_many_columns", f"{len(names)} columns; at most {MAX_COLUMNS} are allowed.")
    seen: dict[str, str] = {}
    for position, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("invalid_column_name", f"Column {position} has an empty name.")
        if len(name) > MAX_COLUMN_NAME_LENGTH:
            raise InvalidRequest(
                "invalid_column_name",
                f"Column {position}'s name is {len(name)} characters long; at most {MAX_COLUMN_NAME_LENGTH} are allowed.",
            )
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise InvalidRequest("invalid_column_name", f"Column {position}'s name contains a control character.")
        key = name.casefold()
        if key in seen:
            raise InvalidRequest(
                "duplicate_column",
                f'Column names must be unique ignoring case: "{seen[key]}" and "{name}".',
            )
        seen[key] = name


def columns_of(table: pa.Table) -> list[dict[str, Any]]:
    """The `[{name, type}]` list of a table whose columns have canonical types."""
    out = []
    for field in table.schema:
        out.append({"name": field.name, "type": type_name(field.type)})
    return out


def type_name(arrow_type: pa.DataType) -> str:
    for name, canonical in ARROW_TYPES.items():
        if arrow_type == canonical:
            return name
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "string"
    raise ValueError(f"not a canonical column type: {arrow_type}")


def schema_for(columns: list[dict[str, Any]]) -> pa.Schema:
    return pa.schema([pa.field(c["name"], ARROW_TYPES[c["type"]]) for c in columns])


def empty_table(columns: list[dict[str, Any]]) -> pa.Table:
    return schema_for(columns).empty_table()


# ---------------------------------------------------------------------------------------
# Text → value helpers shared by inference and conformance
# ---------------------------------------------------------------------------------------


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        return orjson.dumps(value, default=str).decode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (float, Decimal)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    return "other"


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else _to_text(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return orjson.dumps(text).decode() if isinstance(value, str) else text


def _describe(value: Any) -> str:
    kind = _kind(value)
    return {"str": "text", "other": type(value).__name__}.get(kind, kind)


def _mismatch(column: str, target: str, row: int, value: Any) -> InvalidRequest:
    return InvalidRequest(
        "type_mismatch",
        f'Column "{column}" has type {target}, but row {row} has {_preview(value)} '
        f"({_describe(value)}), which is not a valid {target}. Nothing was written.",
    )


_MISSING = object()


def _py_value(value: Any, target: str) -> Any:
    """Convert one Python value to the target type, or return _MISSING if it does not fit."""
    if target == "string":
        return _to_text(value)
    if target == "integer":
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else _MISSING
        if isinstance(value, (float, Decimal)):
            if isinstance(value, float) and not math.isfinite(value):
                return _MISSING
            if value == int(value) and -(2**63) <= int(value) < 2**63:
                return int(value)
            return _MISSING
        if isinstance(value, str) and _PY["int"].match(value):
            number = int(value)
            return number if -(2**63) <= number < 2**63 else _MISSING
        return _MISSING
    if target == "float":
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, (int, float, Decimal)):
            return float(value)
        if isinstance(value, str) and _PY["float"].match(value):
            return float(value)
        return _MISSING
    if target == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and _PY["bool"].match(value):
            return value.lower() == "true"
        return _MISSING
    if target == "date":
        if isinstance(value, dt.datetime):
            value = _utc_naive(value)
            return value.date() if value.time() == dt.time(0) else _MISSING
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str) and _PY["date"].match(value):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if target == "timestamp":
        if isinstance(value, dt.datetime):
            return _utc_naive(value)
        if isinstance(value, dt.date):
            return dt.datetime.combine(value, dt.time(0))
        if isinstance(value, str) and (_PY["ts"].match(value) or _PY["date"].match(value)):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                return _MISSING
            return _utc_naive(parsed)
        return _MISSING
    raise ValueError(target)


def _py_to_type(values: Sequence[Any], target: str, column: str) -> pa.Array:
    """Convert Python values; refuse the first that does not fit, naming its 1-based row."""
    out: list[Any] = []
    for index, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value) and target != "float"):
            out.append(None)
            continue
        converted = _py_value(value, target)
        if converted is _MISSING:
            raise _mismatch(column, target, index + 1, value)
        out.append(converted)
    return pa.array(out, ARROW_TYPES[target])


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------


def _all(mask: pa.Array | pa.ChunkedArray) -> bool:
    return bool(pc.all(mask).as_py())


def _strip_plus(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.replace_substring_regex(arr, pattern=r"^\+", replacement="")


def _cast_timestamps(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """ISO strings (dates, or datetimes with an optional zone) to naive UTC timestamps."""
    zoned = pc.match_substring_regex(arr, _TS_ZONE)
    if not _all(pc.invert(pc.fill_null(zoned, False))):
        with_zone = pc.if_else(zoned, arr, pa.scalar(None, pa.string()))
        utc = pc.cast(pc.cast(with_zone, pa.timestamp("us", tz="UTC")), pa.timestamp("us"))
        without = pc.if_else(zoned, pa.scalar(None, pa.string()), arr)
        local = pc.cast(without, pa.timestamp("us"))
        return pc.coalesce(utc, local)
    return pc.cast(arr, pa.timestamp("us"))


def _infer_strings(arr: pa.Array | pa.ChunkedArray, *, numbers: bool = True) -> pa.Array | pa.ChunkedArray:
    """Infer a canonical column from text cells (nulls ignored)."""
    arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
    if arr.null_count == len(arr):
        return arr
    if numbers:
        if _all(pc.match_substring_regex(arr, _BOOL)):
            return pc.equal(pc.utf8_lower(arr), "true")
        if _all(pc.match_substring_regex(arr, _INT)):
            try:
                return pc.cast(_strip_plus(arr), pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return arr  # beyond 64 bits: keep the digits exactly
        if _all(pc.match_substring_regex(arr, _FLOAT)):
            try:
                return pc.cast(_strip_plus(arr), pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return arr
    is_date = pc.match_substring_regex(arr, _DATE)
    if _all(is_date):
        try:
            return pc.cast(arr, pa.date32())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return arr
    if _all(pc.or_(is_date, pc.match_substring_regex(arr, _TS))):
        try:
            return _cast_timestamps(arr)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return arr
    return arr


def _infer_py(values: Sequence[Any], *, midnight_as_date: bool = False) -> pa.Array:
    """Infer a canonical column from Python values (JSON rows, Excel cells, connectors)."""
    kinds = set()
    for value in values:
        if value is None:
            continue
        kinds.add(_kind(value))
    if not kinds:
        return pa.nulls(len(values), pa.string())
    if kinds == {"boolean"}:
        return pa.array(values, pa.bool_())
    if kinds == {"integer"}:
        try:
            return pa.array(values, pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            return pa.array([None if v is None else str(v) for v in values], pa.string())
    if kinds <= {"integer", "float"}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds == {"str"}:
        return _infer_strings(pa.array(values, pa.string()), numbers=False)
    if kinds <= {"date", "timestamp"}:
        stamps = [
            None if v is None else (_utc_naive(v) if isinstance(v, dt.datetime) else dt.datetime.combine(v, dt.time(0)))
            for v in values
        ]
        if kinds == {"date"} or (midnight_as_date and all(v is None or v.time() == dt.time(0) for v in stamps)):
            return pa.array([None if v is None else v.date() for v in stamps], pa.date32())
        return pa.array(stamps, pa.timestamp("us"))
    return pa.array([None if v is None else _to_text(v) for v in values], pa.string())


def _normalize_arrow(arr: pa.ChunkedArray, column: str) -> pa.ChunkedArray:
    """Map a typed (Parquet) column onto the canonical types."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = pc.cast(arr, t.value_type)  # decode
        t = arr.type
    if pa.types.is_null(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_boolean(t):
        return arr
    if pa.types.is_integer(t):
        try:
            return pc.cast(arr, pa.int64())
        except pa.ArrowInvalid:  # uint64 beyond int64
            return pc.cast(arr, pa.float64())
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64(), safe=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_date(t):
        return pc.cast(arr, pa.date32())
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            arr = pc.cast(arr, pa.timestamp(t.unit, tz="UTC"))
            arr = pc.cast(arr, pa.timestamp(t.unit))
        return pc.cast(arr, pa.timestamp("us"), safe=False)
    if pa.types.is_time(t):
        return pc.cast(arr, pa.string())
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_nested(t)
        or pa.types.is_duration(t)
        or pa.types.is_interval(t)
    ):
        return pa.chunked_array([pa.array([None if v is None else _to_text(v) for v in arr.to_pylist()], pa.string())])
    raise InvalidRequest("unsupported_column_type", f'Column "{column}" has type {t}, which is not supported.')


# ---------------------------------------------------------------------------------------
# Conformance to an existing schema
# ---------------------------------------------------------------------------------------


def _conform_arrow(arr: pa.Array | pa.ChunkedArray, target: str, column: str) -> pa.Array | pa.ChunkedArray:
    """Vectorized happy path; on any doubt, the Python path finds the offending row."""
    want = ARROW_TYPES[target]
    have = arr.type
    if have == want:
        return arr
    try:
        if target == "string":
            return pc.cast(arr, pa.string())
        if pa.types.is_string(have):
            if target == "integer" and _all(pc.match_substring_regex(arr, _INT_LENIENT)):
                return pc.cast(_strip_plus(arr), want)
            if target == "float" and _all(pc.match_substring_regex(arr, _FLOAT_LENIENT)):
                return pc.cast(_strip_plus(arr), want)
            if target == "boolean" and _all(pc.match_substring_regex(arr, _BOOL)):
                return pc.equal(pc.utf8_lower(arr), "true")
            if target == "date" and _all(pc.match_substring_regex(arr, _DATE)):
                return pc.cast(arr, want)
            if target == "timestamp" and _all(
                pc.or_(pc.match_substring_regex(arr, _DATE), pc.match_substring_regex(arr, _TS))
            ):
                return _cast_timestamps(arr)
        elif target == "float" and pa.types.is_integer(have):
            return pc.cast(arr, want)
        elif target == "integer" and pa.types.is_floating(have):
            return pc.cast(arr, want)  # safe cast: fails on fractions and overflow
        elif target == "timestamp" and pa.types.is_date(have):
            return pc.cast(arr, want)
        elif target == "date" and pa.types.is_timestamp(have):
            as_date = pc.cast(arr, want, safe=False)
            if _all(pc.equal(pc.cast(as_date, have), arr)):
                return as_date
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    return _py_to_type(arr.to_pylist(), target, column)


def _resolve_names(incoming: list[str], columns: list[dict[str, Any]], *, many_to_one: bool = False) -> dict[str, str]:
    """Map incoming names to the schema's exact names (exact first, then ignoring case)."""
    exact = {c["name"] for c in columns}
    folded = {c["name"].casefold(): c["name"] for c in columns}
    mapping: dict[str, str] = {}
    for name in incoming:
        target = name if name in exact else folded.get(name.casefold()) if isinstance(name, str) else None
        if target is None:
            raise InvalidRequest(
                "unknown_column",
                f'Column "{name}" does not exist in this source; its columns are: '
                + ", ".join(f'"{c["name"]}"' for c in columns[:50])
                + ".",
            )
        if target in mapping.values() and not many_to_one:
            raise InvalidRequest("duplicate_column", f'Column "{target}" is given twice (names ignore case).')
        mapping[name] = target
    return mapping


def conform_table(table: pa.Table, columns: list[dict[str, Any]]) -> pa.Table:
    """Cast a table to an existing schema: unknown columns and ill-typed values are refused,
    missing columns are null, and the result has exactly the schema's columns in order."""
    mapping = _resolve_names(table.column_names, columns)
    by_target = {mapping[name]: table.column(i) for i, name in enumerate(table.column_names)}
    arrays = []
    for col in columns:
        arr = by_target.get(col["name"])
        if arr is None:
            arrays.append(pa.nulls(table.num_rows, ARROW_TYPES[col["type"]]))
        else:
            arrays.append(_conform_arrow(arr, col["type"], col["name"]))
    return pa.Table.from_arrays(arrays, schema=schema_for(columns))


# ---------------------------------------------------------------------------------------
# Inline rows
# ---------------------------------------------------------------------------------------


def rows_to_table(
    rows: Any, *, columns: list[dict[str, Any]] | None = None, midnight_as_date: bool = False
) -> pa.Table:
    """Inline JSON rows (a list of objects) to a table: inferred, or conformed to `columns`."""
    if not isinstance(rows, list):
        raise InvalidRequest("invalid_rows", "rows must be a list of objects.")
    names: dict[str, None] = {}
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InvalidRequest("invalid_rows", f"Row {index} is not an object.")
        for key in row:
            if key not in names:
                if not isinstance(key, str):
                    raise InvalidRequest("invalid_column_name", f"Row {index} has a non-text column name.")
                names[key] = None
    name_list = list(names)
    if columns is None:
        validate_column_names(name_list)
        if rows and not name_list:
            raise InvalidRequest("no_columns", "The rows have no columns.")
        arrays = [_infer_py([row.get(name) for row in rows], midnight_as_date=midnight_as_date) for name in name_list]
        return pa.Table.from_arrays(arrays, names=name_list) if name_list else pa.table({})
    mapping = _resolve_names(name_list, columns, many_to_one=True)
    sources_of: dict[str, list[str]] = {}
    for name, target in mapping.items():
        sources_of.setdefault(target, []).append(name)
    arrays = []
    for col in columns:
        names_for = sources_of.get(col["name"])
        if not names_for:
            arrays.append(pa.nulls(len(rows), ARROW_TYPES[col["type"]]))
            continue
        if len(names_for) == 1:
            values = [row.get(names_for[0]) for row in rows]
        else:  # "id" in some rows, "ID" in others: fine, but never both in one row
            values = []
            for index, row in enumerate(rows, start=1):
                present = [n for n in names_for if n in row]
                if len(present) > 1:
                    raise InvalidRequest(
                        "duplicate_column", f'Row {index} gives column "{col["name"]}" twice (names ignore case).'
                    )
                values.append(row.get(present[0]) if present else None)
        arrays.append(_py_to_type(values, col["type"], col["name"]))
    return pa.Table.from_arrays(arrays, schema=schema_for(columns))


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


def detect_file_type(filename: str | None = None, content_type: str | None = None, head: bytes = b"") -> str:
    """Pick one of FILE_TYPES from the name's extension, the content type, then magic bytes."""
    ext = Path(filename).suffix.lower() if filename else ""
    if ext in _LEGACY:
        raise InvalidRequest("unsupported_file_type", _LEGACY[ext] + ".")
    if ext in _EXTENSIONS:
        kind = _EXTENSIONS[ext]
        if kind == "json" and head.lstrip()[:1] == b"{":
            return "ndjson"  # a .json file with one object per line
        return kind
    if content_type:
        base = content_type.split(";")[0].strip().lower()
        if base in _CONTENT_TYPES:
            return _CONTENT_TYPES[base]
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] == b"[":
        return "json"
    if stripped[:1] == b"{":
        return "ndjson"
    shown = ext or (content_type or "unknown")
    raise InvalidRequest(
        "unsupported_file_type",
        f"Unsupported file type ({shown}); supported: CSV, TSV, JSON, NDJSON, Parquet and Excel .xlsx.",
    )


def parse_file(
    data: bytes | str | os.PathLike[str],
    *,
    filename: str | None = None,
    content_type: str | None = None,
    file_type: str | None = None,
    columns: list[dict[str, Any]] | None = None,
) -> pa.Table:
    """Parse file bytes (or a path) into a canonical table, conformed to `columns` if given.

    Parquet and xlsx are read from a path without first loading the whole file in memory.
    """
    path = None
    content = b""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        filename = filename or path.name
        try:
            with open(path, "rb") as handle:
                head = handle.read(64)
        except OSError as exc:
            raise _bad_file(f"Cannot read the file: {exc.strerror}.") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        content = bytes(data)
        head = content[:64]
    else:
        raise TypeError("data must be bytes or a path")
    kind = file_type or detect_file_type(filename, content_type, head)
    if kind not in FILE_TYPES:
        raise InvalidRequest("unsupported_file_type", f"Unsupported file type {kind!r}.")
    if kind in ("parquet", "xlsx") and path is not None:
        if path.stat().st_size == 0:
            raise _bad_file("The file is empty.")
        return parse_parquet(path, columns=columns) if kind == "parquet" else parse_xlsx(path, columns=columns)
    if path is not None:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise _bad_file(f"Cannot read the file: {exc.strerror}.") from None
    if not content.strip():
        raise _bad_file("The file is empty.")
    if kind == "csv":
        return parse_delimited(content, ",", columns=columns)
    if kind == "tsv":
        return parse_delimited(content, "\t", columns=columns)
    if kind == "json":
        return parse_json(content, columns=columns)
    if kind == "ndjson":
        return parse_ndjson(content, columns=columns)
    if kind == "parquet":
        return parse_parquet(content, columns=columns)
    return parse_xlsx(content, columns=columns)


def _to_utf8(data: bytes) -> bytes:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise _bad_file("The file looks like UTF-16 but does not decode.") from None
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        # Spreadsheet exports are often Windows-1252; never fail on encoding alone.
        return data.decode("cp1252", errors="replace").encode("utf-8")


def parse_delimited(data: bytes, delimiter: str, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    data = _to_utf8(data)
    parse_options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    try:
        header = pacsv.open_csv(pa.BufferReader(data), parse_options=parse_options).schema.names
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise _bad_file(f"Not a readable {'CSV' if delimiter == ',' else 'TSV'} file: {exc}") from None
    stripped = [name.strip() for name in header]
    if columns is None:
        validate_column_names(stripped)
    else:
        if len({n.casefold() for n in stripped}) != len(stripped):
            validate_column_names(stripped)  # raises the precise duplicate error
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        table = pacsv.read_csv(pa.BufferReader(data), parse_options=parse_options, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise _bad_file(f"Not a readable {'CSV' if delimiter == ',' else 'TSV'} file: {exc}") from None
    check_table_size(table.num_rows, table.num_columns)
    table = table.rename_columns(stripped)
    if columns is not None:
        return conform_table(table, columns)
    arrays = [_infer_strings(table.column(i)) for i in range(table.num_columns)]
    return pa.Table.from_arrays(arrays, names=stripped)


def parse_json(data: bytes, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    try:
        rows = orjson.loads(_to_utf8(data))
    except orjson.JSONDecodeError as exc:
        raise _bad_file(f"Not valid JSON: {exc}") from None
    if not isinstance(rows, list):
        raise _bad_file("A JSON file must hold an array of objects.")
    if len(rows) > cost_limits.get_limits().max_ingest_rows:
        raise _too_many_rows(len(rows))
    try:
        return rows_to_table(rows, columns=columns)
    except InvalidRequest as exc:
        if exc.code == "invalid_rows":
            raise _bad_file(exc.message) from None
        raise


def parse_ndjson(data: bytes, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    max_rows = cost_limits.get_limits().max_ingest_rows
    rows = []
    for number, line in enumerate(_to_utf8(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _bad_file(f"Line {number} is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise _bad_file(f"Line {number} is not a JSON object.")
        rows.append(row)
        if len(rows) > max_rows:
            raise _too_many_rows(len(rows))
    return rows_to_table(rows, columns=columns)


def parse_parquet(data: bytes | Path, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    source = str(data) if isinstance(data, Path) else pa.BufferReader(data)
    try:
        parquet = pq.ParquetFile(source)
        _check_parquet_size(parquet.metadata)
        table = parquet.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _bad_file(f"Not a readable Parquet file: {exc}") from None
    validate_column_names(table.column_names)
    try:
        arrays = [_normalize_arrow(table.column(i), name) for i, name in enumerate(table.column_names)]
    except (pa.ArrowException, ValueError, OverflowError) as exc:
        raise _bad_file(f"The Parquet file holds values that cannot be read: {exc}") from None
    table = pa.Table.from_arrays(arrays, names=table.column_names)
    return conform_table(table, columns) if columns is not None else table


def _check_parquet_size(metadata: pq.FileMetaData) -> None:
    """Dictionary and run-length encoding let a few bytes stand for a billion rows: check
    the footer's counts before reading any column."""
    check_table_size(metadata.num_rows, metadata.num_columns)
    _check_inflated_size(
        [(f"row group {i}", metadata.row_group(i).total_byte_size, None) for i in range(metadata.num_row_groups)]
    )


# Excel's own limit; openpyxl yields an empty row for every row number skipped, so a row
# numbered 10**9 would otherwise cost a billion iterations.
XLSX_MAX_SHEET_ROWS = 1_048_576


def _skip_openpyxl_dimension_scan() -> None:
    """openpyxl's read-only worksheet parses the WHOLE sheet when it opens a workbook if the
    sheet has no <dimension> element (every sheet of every workbook, before a row is read),
    and pads every row to a declared dimension however wide. Reading without dimensions is
    what openpyxl itself advises for untrusted files (`reset_dimensions()`); this makes it
    the default for read-only loads, so reading stops as soon as a cap is passed."""
    from openpyxl.reader import excel
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

    if excel.ReadOnlyWorksheet is ReadOnlyWorksheet:
        # openpyxl ships no type hints: its class is Any to mypy.
        class UnsizedReadOnlyWorksheet(ReadOnlyWorksheet):  # type: ignore[misc]
            def _get_size(self) -> None:
                pass  # dimensions unknown: rows come as stored, unpadded

        excel.ReadOnlyWorksheet = UnsizedReadOnlyWorksheet


def _check_xlsx_archive(source: str | IO[bytes]) -> None:
    try:
        with zipfile.ZipFile(source) as archive:
            entries = [(info.filename, info.file_size, info.compress_size) for info in archive.infolist()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _bad_file("Not a readable .xlsx workbook: not a zip archive.") from None
    _check_inflated_size(entries)


def parse_xlsx(data: bytes | Path, *, columns: list[dict[str, Any]] | None = None) -> pa.Table:
    """The first worksheet; its first non-empty row is the header.

    The archive's declared sizes are checked before openpyxl inflates anything, and reading
    stops at the first row past the row or cell cap.
    """
    source = str(data) if isinstance(data, Path) else io.BytesIO(data)
    _check_xlsx_archive(source)
    if not isinstance(source, str):
        source.seek(0)
    limits = cost_limits.get_limits()
    cell_cap = min(limits.max_xlsx_cells, limits.max_ingest_cells)
    import openpyxl  # imported lazily: only uploads need it
    from openpyxl.utils import get_column_letter

    _skip_openpyxl_dimension_scan()
    try:
        workbook = openpyxl.load_workbook(source, read_only=True, data_only=True)
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds on a malformed file
        raise _bad_file(f"Not a readable .xlsx workbook: {exc.__class__.__name__}") from None
    try:
        if not workbook.worksheets:
            raise _bad_file("The workbook has no worksheet.")
        rows_iter = workbook.worksheets[0].iter_rows(values_only=True)
        header = None
        for row in rows_iter:
            if any(cell is not None and cell != "" for cell in row):
                header = list(row)
                break
        if header is None:
            raise _bad_file("The first worksheet is empty.")
        while header and (header[-1] is None or header[-1] == ""):
            header.pop()
        width = len(header)
        names = []
        for position, cell in enumerate(header, start=1):
            name = cell if isinstance(cell, str) else ("" if cell is None else _to_text(cell))
            if not name.strip():
                raise InvalidRequest(
                    "invalid_column_name", f"Column {get_column_letter(position)} has values but no header."
                )
            names.append(name.strip())
        validate_column_names(names)
        values: list[list[Any]] = [[] for _ in names]
        count = 0
        cells = 0  # as openpyxl hands them over: a far-right cell pads its row with empty ones
        max_rows = min(limits.max_ingest_rows, cell_cap // width)
        for number, row in enumerate(rows_iter, start=2):
            cells += len(row)
            if number > XLSX_MAX_SHEET_ROWS or cells > cell_cap:  # far-apart row numbers, padding
                raise (
                    _too_many_rows(number)
                    if number > XLSX_MAX_SHEET_ROWS
                    else _too_many_cells(cells, cell_cap, "worksheet")
                )
            if not any(cell is not None and cell != "" for cell in row):
                continue
            for extra, cell in enumerate(row[width:], start=width + 1):
                if cell is not None and cell != "":
                    raise InvalidRequest(
                        "invalid_column_name",
                        f"Column {get_column_letter(extra)} has values (sheet row {number}) but no header.",
                    )
            count += 1
            if count > max_rows:  # stop reading at the first row past a cap
                check_table_size(count, width, cell_cap=cell_cap, kind="worksheet")
            for i in range(width):
                cell = row[i] if i < len(row) else None
                values[i].append(None if cell == "" else cell)
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed sheet XML, bad shared strings, ...
        raise _bad_file(f"Not a readable .xlsx workbook: {exc.__class__.__name__}") from None
    finally:
        workbook.close()
    if columns is not None:
        mapping = _resolve_names(names, columns)
        source_of = {target: i for i, target in enumerate(mapping[n] for n in names)}
        count = len(values[0]) if values else 0
        arrays = []
        for col in columns:
            index = source_of.get(col["name"])
            arrays.append(
                pa.nulls(count, ARROW_TYPES[col["type"]])
                if index is None
                else _py_to_type(values[index], col["type"], col["name"])
            )
        return pa.Table.from_arrays(arrays, schema=schema_for(columns))
    arrays = [_infer_py(v, midnight_as_date=True) for v in values]
    return pa.Table.from_arrays(arrays, names=names)


def convert_values(values: Sequence[Any], target: str, column: str) -> pa.Array:
    """Python values to a column of type `target`; `type_mismatch` names the first bad row."""
    return _py_to_type(values, target, column)


def infer_values(values: Sequence[Any], *, midnight_as_date: bool = False) -> pa.Array:
    """Infer a canonical column from Python values (as for JSON rows)."""
    return _infer_py(values, midnight_as_date=midnight_as_date)


def infer_table(table: pa.Table) -> pa.Table:
    """Canonicalize an arbitrary Arrow table (e.g. built by a caller) without text inference."""
    validate_column_names(table.column_names)
    arrays = [_normalize_arrow(table.column(i), name) for i, name in enumerate(table.column_names)]
    return pa.Table.from_arrays(arrays, names=table.column_names)
