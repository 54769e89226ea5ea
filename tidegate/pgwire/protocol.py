"""Framing and encoding of PostgreSQL protocol v3 messages (no I/O, no policy).

Only what a server needs: reading a client's frames (bounded in size) and building the
backend messages. https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
# The largest message a client may send (a query of at most sandbox.MAX_SQL_LENGTH
# characters, and its parameters): anything larger ends the connection before it is read.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_STARTUP_BYTES = 10_000


class ProtocolViolation(Exception):
    """The client broke the protocol: answered with SQLSTATE 08P01, then the connection ends."""


@dataclass(frozen=True)
class ColumnDesc:
    name: str
    type_oid: int
    type_size: int = -1
    type_modifier: int = -1


def _cstring(value: str) -> bytes:
    return value.replace("\x00", "\ufffd").encode() + b"\x00"


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def authentication_ok() -> bytes:
    return message(b"R", struct.pack("!I", 0))


def authentication_cleartext() -> bytes:
    return message(b"R", struct.pack("!I", 3))


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", _cstring(name) + _cstring(value))


def backend_key_data(process_id: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!II", process_id, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def row_description(columns: Sequence[ColumnDesc], formats: Sequence[int] = ()) -> bytes:
    parts = [struct.pack("!H", len(columns))]
    for i, column in enumerate(columns):
        fmt = formats[i] if i < len(formats) else 0
        parts.append(
            _cstring(column.name)
            + struct.pack("!IhIhih", 0, 0, column.type_oid, column.type_size, column.type_modifier, fmt)
        )
    return message(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [struct.pack("!H", len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(struct.pack("!I", len(value)) + value)
    return message(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return message(b"C", _cstring(tag))


def empty_query_response() -> bytes:
    return message(b"I")


def parse_complete() -> bytes:
    return message(b"1")


def bind_complete() -> bytes:
    return message(b"2")


def close_complete() -> bytes:
    return message(b"3")


def no_data() -> bytes:
    return message(b"n")


def portal_suspended() -> bytes:
    return message(b"s")


def copy_out_response(columns: int) -> bytes:
    """COPY's rows follow, in text format (0) for every column."""
    return message(b"H", struct.pack("!bH", 0, columns) + struct.pack("!h", 0) * columns)


def copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def copy_done() -> bytes:
    return message(b"c")


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", struct.pack("!H", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def _notice_fields(severity: str, code: str, text: str, detail: str | None) -> bytes:
    fields = [b"S" + _cstring(severity), b"V" + _cstring(severity), b"C" + _cstring(code), b"M" + _cstring(text)]
    if detail:
        fields.append(b"D" + _cstring(detail))
    return b"".join(fields) + b"\x00"


def error_response(code: str, text: str, *, severity: str = "ERROR", detail: str | None = None) -> bytes:
    return message(b"E", _notice_fields(severity, code, text, detail))


def notice_response(code: str, text: str) -> bytes:
    return message(b"N", _notice_fields("NOTICE", code, text, None))


# -- reading ------------------------------------------------------------------------------


class Reader:
    """Reads one message body at a time out of a byte buffer."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise ProtocolViolation("message shorter than its fields")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def int16(self) -> int:
        return int(struct.unpack("!h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self._take(4))[0])

    def uint32(self) -> int:
        return int(struct.unpack("!I", self._take(4))[0])

    def byte(self) -> bytes:
        return self._take(1)

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolViolation("unterminated string")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation("text is not UTF-8") from None

    def value(self) -> bytes | None:
        size = self.int32()
        if size == -1:
            return None
        return self._take(size)


def startup_parameters(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage body (after the protocol version)."""
    reader = Reader(body)
    params: dict[str, str] = {}
    while reader.pos < len(body):
        name = reader.cstring()
        if not name:
            break
        params[name] = reader.cstring()
    return params


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def read_parse(body: bytes) -> Parse:
    r = Reader(body)
    name, sql = r.cstring(), r.cstring()
    count = r.int16()
    return Parse(name, sql, tuple(r.uint32() for _ in range(max(count, 0))))


def read_bind(body: bytes) -> Bind:
    r = Reader(body)
    portal, statement = r.cstring(), r.cstring()
    formats = tuple(r.int16() for _ in range(max(r.int16(), 0)))
    params = tuple(r.value() for _ in range(max(r.int16(), 0)))
    results = tuple(r.int16() for _ in range(max(r.int16(), 0)))
    return Bind(portal, statement, formats, params, results)


def read_describe_or_close(body: bytes) -> tuple[bytes, str]:
    r = Reader(body)
    return r.byte(), r.cstring()


def read_execute(body: bytes) -> tuple[str, int]:
    r = Reader(body)
    return r.cstring(), r.int32()


def format_of(formats: Sequence[int], index: int) -> int:
    """The format code of column/parameter `index` (one code for all, or one each, or text)."""
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[index] if index < len(formats) else 0


def batch(messages: Iterable[bytes]) -> bytes:
    return b"".join(messages)
