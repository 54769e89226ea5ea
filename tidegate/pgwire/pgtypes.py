"""Arrow result columns as PostgreSQL types: their OIDs and their values on the wire.

Text format for every type; binary format for the fixed-size ones a driver may ask for
(JDBC does after a statement's fifth run). A column the client asked in binary whose type
has no binary encoder here is described (and sent) as text: drivers read the format from
the RowDescription.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 25, 114, 700, 701
VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, NUMERIC, UUID, UNKNOWN = (
    1043,
    1082,
    1083,
    1114,
    1184,
    1186,
    1700,
    2950,
    705,
)
NAMES = {
    BOOL: "boolean", BYTEA: "bytea", INT8: "bigint", INT2: "smallint", INT4: "integer", TEXT: "text",
    JSON: "json", FLOAT4: "real", FLOAT8: "double precision", VARCHAR: "character varying", DATE: "date",
    TIME: "time without time zone", TIMESTAMP: "timestamp without time zone",
    TIMESTAMPTZ: "timestamp with time zone", INTERVAL: "interval", NUMERIC: "numeric", UUID: "uuid",
}  # fmt: skip
SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, DATE: 4, TIME: 8, TIMESTAMP: 8, TIMESTAMPTZ: 8}
_EPOCH_DATE = dt.date(2000, 1, 1)
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def oid_of(kind: pa.DataType) -> int:
    if pa.types.is_boolean(kind):
        return BOOL
    if pa.types.is_int8(kind) or pa.types.is_int16(kind) or pa.types.is_uint8(kind):
        return INT2
    if pa.types.is_int32(kind) or pa.types.is_uint16(kind):
        return INT4
    if pa.types.is_integer(kind):
        return INT8 if not pa.types.is_uint64(kind) else NUMERIC
    if pa.types.is_float16(kind) or pa.types.is_float32(kind):
        return FLOAT4
    if pa.types.is_floating(kind):
        return FLOAT8
    if pa.types.is_decimal(kind):
        return NUMERIC
    if pa.types.is_date(kind):
        return DATE
    if pa.types.is_time(kind):
        return TIME
    if pa.types.is_timestamp(kind):
        return TIMESTAMPTZ if kind.tz else TIMESTAMP
    if pa.types.is_duration(kind) or pa.types.is_interval(kind):
        return INTERVAL
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return BYTEA
    if pa.types.is_nested(kind):
        return JSON
    return TEXT


_DECLARED = {
    "boolean": BOOL, "bool": BOOL, "integer": INT8, "int": INT8, "bigint": INT8, "int64": INT8,
    "smallint": INT2, "float": FLOAT8, "double": FLOAT8, "number": FLOAT8, "decimal": NUMERIC,
    "date": DATE, "timestamp": TIMESTAMP, "datetime": TIMESTAMP, "timestamptz": TIMESTAMPTZ,
    "time": TIME, "string": TEXT, "text": TEXT, "varchar": TEXT, "json": JSON, "binary": BYTEA,
}  # fmt: skip


def oid_of_declared(type_name: str) -> int:
    """The PostgreSQL type of a source column as its version records it (`column_types`)."""
    return _DECLARED.get(type_name.lower().split("(")[0].strip(), TEXT)


def duckdb_type(oid: int) -> str:
    """The DuckDB column type that the catalog connection declares for a PostgreSQL type."""
    return {
        BOOL: "BOOLEAN", INT2: "SMALLINT", INT4: "INTEGER", INT8: "BIGINT", FLOAT4: "REAL", FLOAT8: "DOUBLE",
        NUMERIC: "DECIMAL(38,10)", DATE: "DATE", TIME: "TIME", TIMESTAMP: "TIMESTAMP",
        TIMESTAMPTZ: "TIMESTAMPTZ", INTERVAL: "INTERVAL", BYTEA: "BLOB", JSON: "JSON", UUID: "UUID",
    }.get(oid, "VARCHAR")  # fmt: skip


# -- text format ------------------------------------------------------------------------


def _float_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _text_one(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.timedelta):
        return f"{value.days} days {value.seconds} seconds {value.microseconds} microseconds"
    if isinstance(value, (dt.date, dt.time, Decimal, int, str)):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def text_column(column: pa.ChunkedArray | pa.Array) -> list[bytes | None]:
    """Every value of the column in PostgreSQL's text format (None for NULL)."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return [None if v is None else v.encode() for v in column.to_pylist()]
    if pa.types.is_integer(kind) or pa.types.is_date(kind):
        # Arrow's own formatting (C++) for the common cases: the same text PostgreSQL sends.
        return [None if v is None else v.encode() for v in pc.cast(column, pa.string()).to_pylist()]
    return [None if v is None else _text_one(v).encode() for v in column.to_pylist()]


# -- binary format ------------------------------------------------------------------------

_PACKERS: dict[int, Callable[[Any], bytes]] = {
    BOOL: lambda v: b"\x01" if v else b"\x00",
    INT2: struct.Struct("!h").pack,
    INT4: struct.Struct("!i").pack,
    INT8: struct.Struct("!q").pack,
    FLOAT4: struct.Struct("!f").pack,
    FLOAT8: struct.Struct("!d").pack,
    TEXT: lambda v: v.encode(),
    VARCHAR: lambda v: v.encode(),
    BYTEA: bytes,
    DATE: lambda v: struct.pack("!i", (v - _EPOCH_DATE).days),
    TIMESTAMP: lambda v: struct.pack("!q", _micros(v - _EPOCH)),
    TIMESTAMPTZ: lambda v: struct.pack("!q", _micros(v - _EPOCH_TZ)),
    TIME: lambda v: struct.pack("!q", ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond),
    NUMERIC: lambda v: _numeric(v),
    JSON: lambda v: (v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)).encode(),
    UUID: lambda v: v.bytes if hasattr(v, "bytes") else bytes(v),
}


def _numeric(value: Any) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digits, weight, sign, display scale."""
    number = Decimal(value)
    if number.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    exponent = number.as_tuple().exponent
    scale = max(0, -exponent) if isinstance(exponent, int) else 0
    whole, _, fraction = format(abs(number), "f").partition(".")
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    fraction = fraction + "0" * (-len(fraction) % 4)
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(fraction[i : i + 4]) for i in range(0, len(fraction), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    sign = 0x4000 if number < 0 else 0
    return struct.pack(f"!hhHh{len(groups)}h", len(groups), weight, sign, scale, *groups)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def has_binary(oid: int) -> bool:
    return oid in _PACKERS


def binary_column(column: pa.ChunkedArray | pa.Array, oid: int) -> list[bytes | None]:
    pack = _PACKERS[oid]
    return [None if v is None else pack(v) for v in column.to_pylist()]


# -- parameters (Bind) -----------------------------------------------------------------------

_UNPACK_BINARY: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda b: b != b"\x00",
    INT2: lambda b: struct.unpack("!h", b)[0],
    INT4: lambda b: struct.unpack("!i", b)[0],
    INT8: lambda b: struct.unpack("!q", b)[0],
    FLOAT4: lambda b: struct.unpack("!f", b)[0],
    FLOAT8: lambda b: struct.unpack("!d", b)[0],
    TEXT: lambda b: b.decode(),
    VARCHAR: lambda b: b.decode(),
    UNKNOWN: lambda b: b.decode(),
    0: lambda b: b.decode(),
}


def parameter_value(raw: bytes | None, oid: int, binary: bool) -> Any:
    """A bound parameter as a Python value (None, int, float, bool or str); ValueError if
    it cannot be read as its type."""
    if raw is None:
        return None
    if binary:
        unpack = _UNPACK_BINARY.get(oid)
        if unpack is None:
            raise ValueError(f"binary parameters of type {oid} are not supported; send them as text")
        try:
            return unpack(raw)
        except (struct.error, UnicodeDecodeError):
            raise ValueError("a binary parameter does not match its type") from None
    text = raw.decode()
    if oid in (INT2, INT4, INT8):
        return int(text)
    if oid in (FLOAT4, FLOAT8, NUMERIC):
        value = float(text)
        return int(value) if oid == NUMERIC and text.lstrip("-").isdigit() else value
    if oid == BOOL:
        return text.lower() in ("t", "true", "1", "yes", "on")
    return text
