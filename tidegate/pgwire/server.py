"""The PostgreSQL protocol v3 server: asyncio, one task per connection.

Written here rather than taken from a library (README, "Connect your BI tool", says why):
the protocol surface a BI tool needs is small, and every message is read bounded in size,
every password is checked only inside TLS (or from loopback when the operator allows it),
and every statement passes `session` governance and the sandbox before a row is read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import ssl
import struct
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from tidegate.audit.journal import AuditUnavailable, Journal
from tidegate.config import Settings
from tidegate.credentials.authenticate import KeyCache
from tidegate.data import querypool, sandbox
from tidegate.errors import RateLimited, TidegateError
from tidegate.pgwire import catalog, pgtypes, protocol, session, sqltext
from tidegate.pgwire.protocol import ColumnDesc, ProtocolViolation
from tidegate.pgwire.rows import Rows, StreamRows, TableRows

log = logging.getLogger("tidegate.pgwire")

BATCH_ROWS = 1000  # DataRows encoded and sent per write; the socket's drain paces the rest
# Rows read ahead before a statement's audit event is written (and its first row sent): a
# result that ends within them is one event with its exact row count; a longer one is
# audited first with its rows unknown, then `pgwire.statement_end` says how many were sent.
AUDIT_AHEAD_ROWS = 16_384
_PARAM = re.compile(r"\$(\d+)")
_SET = re.compile(r"^\s*set\s+(?:session\s+|local\s+)?(\w+)\s*(?:=|to)\s*'?([^';]*)'?\s*$", re.I)


@dataclass
class Result:
    """What one statement produced: rows (a query, a FETCH) or only a command tag."""

    tag: str
    columns: list[ColumnDesc] = field(default_factory=list)
    rows: Rows | None = None
    copy: sqltext.CopyOut | None = None  # COPY ... TO STDOUT: rows sent as CopyData
    fetch: int | None = None  # FETCH n from a cursor (its rows): at most n of them

    @property
    def has_rows(self) -> bool:
        return self.rows is not None

    def close(self) -> None:
        if self.rows is not None:
            self.rows.finish(None)


@dataclass
class Portal:
    sql: str
    params: tuple[Any, ...]
    result_formats: tuple[int, ...]
    result: Result | None = None


class StatementError(Exception):
    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def is_loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


_TEXT_ESCAPES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def copy_text_line(values: Sequence[bytes | None], delimiter: bytes) -> bytes:
    """One row in COPY's text format: \\N for NULL, backslash escapes."""
    out = []
    for value in values:
        if value is None:
            out.append(b"\\N")
            continue
        for raw, escaped in _TEXT_ESCAPES.items():
            value = value.replace(raw, escaped)
        out.append(value.replace(delimiter, b"\\" + delimiter) if delimiter not in _TEXT_ESCAPES else value)
    return delimiter.join(out) + b"\n"


def copy_csv_line(values: Sequence[bytes | None], delimiter: bytes) -> bytes:
    """One row in COPY's CSV format: NULL unquoted empty, "" for an empty string."""
    out = []
    for value in values:
        if value is None:
            out.append(b"")
        elif value == b"" or any(c in value for c in (delimiter, b'"', b"\n", b"\r")):
            out.append(b'"' + value.replace(b'"', b'""') + b'"')
        else:
            out.append(value)
    return delimiter.join(out) + b"\n"


class PgServer:
    def __init__(
        self,
        settings: Settings,
        *,
        journal: Journal,
        ssl_context: ssl.SSLContext | None,
        allow_plain_loopback: bool = False,
    ):
        self.settings = settings
        self.journal = journal
        self.ssl_context = ssl_context
        self.allow_plain_loopback = allow_plain_loopback
        self.keys = KeyCache(settings.database_url)
        self.connections = session.Connections(settings.pg.max_connections_per_key)
        self.pool = querypool.pool_for(settings.query_limits)
        self.running: dict[tuple[int, int], Connection] = {}
        self.auth_namespace = session.AUTH_NAMESPACE  # (tests give a server a counter of its own)
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, limit=protocol.MAX_MESSAGE_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        try:
            await connection.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception as exc:
            # Never the message: it may quote what the client sent (a password among it).
            # The exception's type and where it was raised say what broke.
            trace = "".join(traceback.format_tb(exc.__traceback__))
            log.error("pgwire connection failed: %s\n%s", type(exc).__name__, trace)
        finally:
            connection.finish()
            try:
                writer.close()
            except Exception:
                pass

    def cancel(self, process_id: int, secret: int) -> None:
        connection = self.running.get((process_id, secret))
        if connection is not None:
            connection.cancel.set()


class Connection:
    def __init__(self, server: PgServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.client_ip: str | None = peer[0] if peer else None
        self.tls = False
        self.params: dict[str, str] = {}
        self.session: session.KeySession | None = None
        self.process_id = secrets.randbits(31)
        self.secret = secrets.randbits(31)
        self.cancel = threading.Event()
        self.statements: dict[str, str] = {}
        self._param_oids: dict[str, tuple[int, ...]] = {}  # of each prepared statement, as Parse gave them
        self.portals: dict[str, Portal] = {}
        self.cursors: dict[str, Result] = {}
        self.status = b"I"
        self.skip_until_sync = False
        self.counted = False

    # -- I/O --------------------------------------------------------------------------------

    async def _read_exactly(self, size: int) -> bytes:
        return await self.reader.readexactly(size)

    async def read_message(self) -> tuple[bytes, bytes]:
        kind = await self._read_exactly(1)
        (length,) = struct.unpack("!I", await self._read_exactly(4))
        if length < 4 or length > protocol.MAX_MESSAGE_BYTES:
            raise ProtocolViolation("message too large")
        return kind, await self._read_exactly(length - 4)

    async def send(self, *messages: bytes) -> None:
        self.writer.write(b"".join(messages))
        await self.writer.drain()

    async def fatal(self, sqlstate: str, text: str) -> None:
        try:
            await self.send(protocol.error_response(sqlstate, text, severity="FATAL"))
        except (ConnectionError, RuntimeError):
            pass

    # -- start-up ---------------------------------------------------------------------------

    async def run(self) -> None:
        params = await self.startup()
        if params is None:
            return
        try:
            if not await self.authenticate(params):
                return
            await self.loop()
        except ProtocolViolation as exc:
            await self.fatal("08P01", f"protocol violation: {exc}")
        except session.KeyCutOff as exc:
            await self.fatal("28000", exc.message)

    async def startup(self) -> dict[str, str] | None:
        while True:
            (length,) = struct.unpack("!I", await self._read_exactly(4))
            if length < 8 or length > protocol.MAX_STARTUP_BYTES:
                await self.fatal("08P01", "invalid startup packet length")
                return None
            body = await self._read_exactly(length - 4)
            (code,) = struct.unpack("!I", body[:4])
            if code == protocol.SSL_REQUEST and not self.tls:
                if self.server.ssl_context is None:
                    await self.send(b"N")
                    continue
                await self.send(b"S")
                await self.writer.start_tls(self.server.ssl_context)
                self.tls = True
                continue
            if code == protocol.GSSENC_REQUEST:
                await self.send(b"N")
                continue
            if code == protocol.CANCEL_REQUEST and len(body) == 12:
                process_id, secret = struct.unpack("!II", body[4:12])
                self.server.cancel(process_id, secret)
                return None
            if code != protocol.PROTOCOL_V3:
                await self.fatal("0A000", "unsupported frontend protocol: tidegate speaks protocol 3.0")
                return None
            try:
                return protocol.startup_parameters(body[4:])
            except ProtocolViolation as exc:
                await self.fatal("08P01", f"invalid startup packet: {exc}")
                return None

    async def authenticate(self, params: dict[str, str]) -> bool:
        server = self.server
        user = params.get("user", "")
        database = params.get("database") or user
        if not self.tls and not (server.allow_plain_loopback and is_loopback(self.client_ip)):
            await self.fatal(
                "28000",
                "TLS is required: connect with sslmode=require (passwords are never accepted in plain text)",
            )
            return False
        await self.send(protocol.authentication_cleartext())
        kind, body = await self.read_message()
        if kind != b"p":
            await self.fatal("08P01", "expected a password message")
            return False
        password = protocol.Reader(body).cstring()
        failed = f'password authentication failed for user "{user}"'
        try:
            await asyncio.to_thread(
                session.count_auth_attempt,
                server.settings,
                self.client_ip,
                server.settings.pg.auth_attempts_per_minute,
                server.auth_namespace,
            )
        except RateLimited:
            await self.fatal("28P01", failed)
            return False
        try:
            keyed = await asyncio.to_thread(
                session.authenticate, server.settings, server.keys, password, database, self.client_ip
            )
        except session.AuthFailed:
            await self.fatal("28P01", failed)
            return False
        if not server.connections.acquire(keyed.key_id):
            await self.fatal("53300", "too many connections for this API key")
            return False
        self.session = keyed
        self.counted = True
        self.params = {"application_name": params.get("application_name", ""), "user": user, "database": database}
        server.running[(self.process_id, self.secret)] = self
        statuses = {
            "server_version": catalog.SERVER_VERSION,
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "IntervalStyle": "postgres",
            "TimeZone": "UTC",
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "is_superuser": "off",
            "session_authorization": keyed.owner_email or user,  # who the key acts for
            "application_name": self.params["application_name"],
            "default_transaction_read_only": "on",
        }
        await self.send(
            protocol.authentication_ok(),
            *(protocol.parameter_status(k, v) for k, v in statuses.items()),
            protocol.backend_key_data(self.process_id, self.secret),
            protocol.ready_for_query(self.status),
        )
        return True

    def finish(self) -> None:
        self._close_all()
        self.server.running.pop((self.process_id, self.secret), None)
        if self.counted and self.session is not None:
            self.server.connections.release(self.session.key_id)
            self.counted = False

    # -- messages ---------------------------------------------------------------------------

    async def loop(self) -> None:
        while True:
            kind, body = await self.read_message()
            if kind == b"X":
                return
            if self.skip_until_sync and kind != b"S":
                continue
            if kind == b"Q":
                await self.simple_query(protocol.Reader(body).cstring())
            elif kind == b"S":
                self.skip_until_sync = False
                if self.status == b"I":  # the implicit transaction ends: so do its portals
                    self._close_all(cursors=False)
                await self.send(protocol.ready_for_query(self.status))
            elif kind == b"H":
                await self.writer.drain()
            else:
                try:
                    await self.extended(kind, body)
                except StatementError as exc:
                    self.skip_until_sync = True
                    self._failed()
                    await self.send(protocol.error_response(exc.sqlstate, exc.message))

    def _close_all(self, *, cursors: bool = True) -> None:
        """Stop what open portals (and cursors) still compute; each audited with what it sent."""
        results = [p.result for p in self.portals.values()] + (list(self.cursors.values()) if cursors else [])
        self.portals.clear()
        if cursors:
            self.cursors.clear()
        for result in results:
            if result is not None:
                try:
                    result.close()
                except StatementError:
                    pass  # (the journal refused the event: logged by it; nothing more to answer)

    def _failed(self) -> None:
        if self.status == b"T":
            self.status = b"E"

    async def simple_query(self, sql: str) -> None:
        statements = sqltext.split_statements(sql)
        if not statements:
            await self.send(protocol.empty_query_response(), protocol.ready_for_query(self.status))
            return
        for text in statements:
            try:
                result = await self.execute(text, ())
                await self.send_result(result, describe=True, formats=(), limit=0)
            except StatementError as exc:
                self._failed()
                await self.send(protocol.error_response(exc.sqlstate, exc.message))
                break
        await self.send(protocol.ready_for_query(self.status))

    async def extended(self, kind: bytes, body: bytes) -> None:
        if kind == b"P":
            parsed = protocol.read_parse(body)
            self.statements[parsed.name] = parsed.sql
            self._param_oids[parsed.name] = parsed.param_oids
            await self.send(protocol.parse_complete())
        elif kind == b"B":
            bind = protocol.read_bind(body)
            if bind.statement not in self.statements:
                raise StatementError("26000", f'prepared statement "{bind.statement}" does not exist')
            oids = self._param_oids.get(bind.statement, ())
            try:
                values = tuple(
                    pgtypes.parameter_value(
                        raw, oids[i] if i < len(oids) else 0, protocol.format_of(bind.param_formats, i) == 1
                    )
                    for i, raw in enumerate(bind.params)
                )
            except ValueError as exc:
                raise StatementError("22P02", str(exc)) from None
            replaced = self.portals.pop(bind.portal, None)
            if replaced is not None and replaced.result is not None:
                replaced.result.close()
            self.portals[bind.portal] = Portal(self.statements[bind.statement], values, bind.result_formats)
            await self.send(protocol.bind_complete())
        elif kind == b"D":
            what, name = protocol.read_describe_or_close(body)
            if what == b"S":
                await self.describe_statement(name)
            elif name not in self.portals and name in self.cursors:  # a DECLAREd cursor is a portal too
                await self.send(self._description(self.cursors[name], ()))
            else:
                portal = self._portal(name)
                if portal.result is None:
                    portal.result = await self.execute(portal.sql, portal.params)
                await self.send(self._description(portal.result, portal.result_formats))
        elif kind == b"E":
            name, limit = protocol.read_execute(body)
            portal = self._portal(name)
            if portal.result is None:
                portal.result = await self.execute(portal.sql, portal.params)
            await self.send_result(portal.result, describe=False, formats=portal.result_formats, limit=limit)
        elif kind == b"C":
            what, name = protocol.read_describe_or_close(body)
            if what == b"S":
                self.statements.pop(name, None)
            else:
                gone = self.portals.pop(name, None)
                closed = gone.result if gone is not None else self.cursors.pop(name, None)
                if closed is not None:
                    closed.close()
            await self.send(protocol.close_complete())
        else:
            raise ProtocolViolation(f"unexpected message type {kind!r}")

    def _portal(self, name: str) -> Portal:
        portal = self.portals.get(name)
        if portal is None:
            raise StatementError("34000", f'portal "{name}" does not exist')
        return portal

    async def describe_statement(self, name: str) -> None:
        sql = self.statements.get(name)
        if sql is None:
            raise StatementError("26000", f'prepared statement "{name}" does not exist')
        count = max((int(n) for n in _PARAM.findall(sql)), default=0)
        given = self._param_oids.get(name, ())
        oids = [given[i] if i < len(given) and given[i] else pgtypes.TEXT for i in range(count)]
        result = await self.execute(sql, (None,) * count)
        result.close()  # only its columns were wanted
        await self.send(protocol.parameter_description(oids), self._description(result, ()))

    def _formats(self, result: Result, formats: Sequence[int]) -> list[int]:
        return [
            1 if protocol.format_of(formats, i) == 1 and pgtypes.has_binary(c.type_oid) else 0
            for i, c in enumerate(result.columns)
        ]

    def _description(self, result: Result, formats: Sequence[int]) -> bytes:
        if not result.has_rows or result.copy is not None:
            return protocol.no_data()
        return protocol.row_description(result.columns, self._formats(result, formats))

    async def send_result(self, result: Result, *, describe: bool, formats: Sequence[int], limit: int) -> None:
        if not result.has_rows:
            done = protocol.empty_query_response() if result.tag == "EMPTY" else protocol.command_complete(result.tag)
            await self.send(done)
            return
        rows = result.rows
        assert rows is not None
        if result.copy is not None:
            await self.send_copy(rows, result.copy)
            return
        codes = self._formats(result, formats)
        if describe:
            await self.send(protocol.row_description(result.columns, codes))
        want = result.fetch if result.fetch is not None else (limit if limit > 0 else None)
        sent = 0
        while want is None or sent < want:
            batch = await self._next(rows, None if want is None else want - sent)
            if batch is None:
                break
            columns = [
                pgtypes.binary_column(batch.column(i), c.type_oid) if codes[i] else pgtypes.text_column(batch.column(i))
                for i, c in enumerate(result.columns)
            ]
            self.writer.write(b"".join(protocol.data_row(row) for row in zip(*columns, strict=True)))
            await self.writer.drain()
            sent += batch.num_rows
        if result.fetch is not None:  # the cursor stays open
            await self.send(protocol.command_complete(f"FETCH {sent}"))
            return
        if want is not None and sent == want and not rows.done:
            await self.send(protocol.portal_suspended())
            return
        rows.finish(None)
        await self.send(protocol.command_complete(f"{result.tag} {rows.rows}"))

    async def _next(self, rows: Rows, at_most: int | None) -> pa.RecordBatch | None:
        """The next rows of a statement; its failure (past its first rows too) as StatementError."""
        try:
            return await rows.next(at_most)
        except TidegateError as exc:
            state, message = session.sqlstate_of(exc)
        except Exception as exc:
            trace = "".join(traceback.format_tb(exc.__traceback__))
            log.error("pgwire: a streamed statement failed: %s\n%s", type(exc).__name__, trace)
            state, message = "XX000", "internal error"
        rows.finish(state)
        raise StatementError(state, message)

    async def send_copy(self, rows: Rows, copy: sqltext.CopyOut) -> None:
        """COPY ... TO STDOUT: CopyOutResponse, a CopyData per row, CopyDone, `COPY n`."""
        encode = copy_csv_line if copy.csv else copy_text_line
        delimiter = copy.delimiter.encode()
        self.writer.write(protocol.copy_out_response(len(rows.schema.names)))
        if copy.header:
            self.writer.write(protocol.copy_data(encode([n.encode() for n in rows.schema.names], delimiter)))
        while (batch := await self._next(rows, None)) is not None:
            columns = [pgtypes.text_column(batch.column(i)) for i in range(batch.num_columns)]
            self.writer.write(
                b"".join(protocol.copy_data(encode(row, delimiter)) for row in zip(*columns, strict=True))
            )
            await self.writer.drain()
        rows.finish(None)
        await self.send(protocol.copy_done(), protocol.command_complete(f"COPY {rows.rows}"))

    # -- statements ---------------------------------------------------------------------------

    async def execute(self, sql: str, params: tuple[Any, ...]) -> Result:
        statement = sqltext.classify(sql)
        if self.status == b"E" and not (statement.kind == "harmless" and statement.tag in ("ROLLBACK", "COMMIT")):
            raise StatementError(
                "25P02", "current transaction is aborted, commands ignored until end of transaction block"
            )
        if statement.kind == "empty":
            return Result("EMPTY")
        if statement.kind == "write":
            raise StatementError("25006", "cannot execute this statement: tidegate connections are read-only")
        if statement.kind == "unsupported":
            raise StatementError("0A000", "this statement is not supported: send one SELECT at a time")
        if statement.kind == "harmless":
            return self.harmless(statement)
        if statement.kind == "show":
            return self.show(statement.name)
        if statement.kind == "close":
            if statement.name == "all":
                closed = list(self.cursors.values())
                self.cursors.clear()
            else:
                cursor = self.cursors.pop(statement.name, None)
                if cursor is None:
                    raise StatementError("34000", f'cursor "{statement.name}" does not exist')
                closed = [cursor]
            for cursor in closed:
                cursor.close()
            return Result("CLOSE CURSOR")
        if statement.kind == "fetch":
            cursor = self.cursors.get(statement.name)
            if cursor is None:
                raise StatementError("34000", f'cursor "{statement.name}" does not exist')
            assert cursor.rows is not None
            if statement.tag == "MOVE":  # the rows skipped are still computed (and counted as read)
                moved, left = 0, statement.count
                while left is None or moved < left:
                    batch = await self._next(cursor.rows, None if left is None else left - moved)
                    if batch is None:
                        break
                    moved += batch.num_rows
                return Result(f"MOVE {moved}")
            fetch = statement.count if statement.count is not None else 2**62
            return Result("FETCH", cursor.columns, cursor.rows, fetch=max(fetch, 0))
        if statement.kind == "copy":
            result = await self.query(statement.query, params, "copy")
            result.tag, result.copy = "COPY", statement.copy
            return result
        if statement.kind == "declare":
            replaced = self.cursors.pop(statement.name, None)
            if replaced is not None:
                replaced.close()
            self.cursors[statement.name] = await self.query(statement.query, params, "declare")
            return Result("DECLARE CURSOR")
        return await self.query(statement.text, params, "query")

    def harmless(self, statement: sqltext.Statement) -> Result:
        if statement.tag in ("BEGIN", "START TRANSACTION"):
            self.status = b"T"
        elif statement.tag in ("COMMIT", "ROLLBACK"):
            tag = "ROLLBACK" if self.status == b"E" else statement.tag
            self.status = b"I"
            return Result(tag)
        elif statement.tag == "SET":
            match = _SET.match(statement.text)
            if match and match.group(1).lower() == "application_name":
                self.params["application_name"] = match.group(2)[:200]
        return Result(statement.tag)

    def show(self, name: str) -> Result:
        values = {
            **catalog.SETTINGS,
            "transaction isolation level": "read committed",
            "application_name": self.params.get("application_name", ""),
        }
        key = name.lower()
        if key not in values:
            raise StatementError("42704", f'unrecognized configuration parameter "{name}"')
        column = key.split()[-1] if key == "transaction isolation level" else key
        table = pa.table({column: pa.array([values[key]], pa.string())})
        return Result("SHOW", [ColumnDesc(column, pgtypes.TEXT)], TableRows(table))

    async def query(self, sql: str, params: tuple[Any, ...], operation: str) -> Result:
        """One governed SELECT, its rows computed as the client takes them: the key re-read
        and counted; audited once it ends (all rows sent, failed, or closed early)."""
        keyed = self.session
        assert keyed is not None
        started = time.monotonic()
        self.cancel = threading.Event()
        self.server.running[(self.process_id, self.secret)] = self
        view: session.View | None = None
        failure: StatementError | None = None
        try:
            view = await asyncio.to_thread(keyed.refresh, self.client_ip)
            rows, tables = await self._run(view, sql, params)
        except session.KeyCutOff:
            self._audit(keyed, view, frozenset(), 0, started, "28000", operation)
            raise
        except TidegateError as exc:
            state, message = session.sqlstate_of(exc)
            if state == "42601" and "does not exist" in message:
                state = "42P01"
            failure = StatementError(state, message)
        except sqltext.NotAQuery as exc:
            failure = StatementError("42601", f"syntax error: {exc}")
        else:
            try:  # the first rows, before the audit event (a failure here sends nothing)
                await rows.fill(AUDIT_AHEAD_ROWS)
            except TidegateError as exc:
                rows.close()
                failure = StatementError(*session.sqlstate_of(exc))
        if failure is not None:
            self._audit(keyed, view, frozenset(), 0, started, failure.sqlstate, operation)
            raise failure
        if rows.ended:  # the whole result is here: one event, written before any row is sent
            self._audit(keyed, view, tables, rows.buffered, started, None, operation)
        else:  # still computing: audited now (rows unknown), and how it ended once it ends
            self._audit(keyed, view, tables, None, started, None, operation)

            def finished(count: int, sqlstate: str | None) -> None:
                self._audit(keyed, view, tables, count, started, sqlstate, operation, action="pgwire.statement_end")

            rows.on_finish = finished
        columns = [
            ColumnDesc(name, oid, pgtypes.SIZES.get(oid, -1))
            for name, oid in ((f.name, pgtypes.oid_of(f.type)) for f in rows.schema)
        ]
        return Result("SELECT", columns, rows)

    async def _run(self, view: session.View, sql: str, params: tuple[Any, ...]) -> tuple[Rows, frozenset[str]]:
        """The statement started: its rows (the schema known), and the key's tables it reads."""
        keyed = self.session
        assert keyed is not None
        names = frozenset({keyed.database.lower(), keyed.org_id.lower()})
        prepared = sqltext.prepare(sql, params, names)
        cancel = self.cancel
        readable = prepared.tables & view.tables.keys()
        if readable and not prepared.reads_catalog:
            relations = sandbox.Relations.of(view.tables.keys())
            query = await asyncio.to_thread(sandbox.validate_query, prepared.sql, relations)
            sandbox.check_cost(query)
            wanted = prepared.tables
            rows = StreamRows(asyncio.get_running_loop())
            max_result_bytes = self.server.settings.pg.max_result_bytes

            def work(budget: sandbox.Budget, execute: querypool.StreamTables) -> None:
                budget = replace(budget, max_result_bytes=max_result_bytes)
                rows.produce(
                    execute(query, session.filtered_tables(view, wanted), budget=budget, cancel=cancel), budget, cancel
                )

            task = asyncio.ensure_future(self.server.pool.run_stream(view.principal, work))
            try:
                await rows.start(task)
            except BaseException:
                rows.close()
                raise
            return rows, readable
        budget = self.server.pool.budget()
        specs = view.table_specs()

        def answer() -> pa.Table:  # (building the connection takes milliseconds: not on the loop)
            return catalog.run(catalog.build(keyed.database, specs), prepared.sql, budget=budget, cancel=cancel)

        return TableRows(await asyncio.to_thread(answer), BATCH_ROWS), frozenset()

    def _audit(
        self,
        keyed: session.KeySession,
        view: session.View | None,
        tables: frozenset[str],
        rows: int | None,
        started: float,
        sqlstate: str | None,
        operation: str,
        *,
        action: str = "pgwire.statement",
    ) -> None:
        event = session.audit_event(
            keyed,
            client_ip=self.client_ip,
            application_name=self.params.get("application_name"),
            view=view,
            tables=tables,
            rows=rows,
            duration_ms=(time.monotonic() - started) * 1000,
            sqlstate=sqlstate,
            statement=operation,
            action=action,
        )
        try:
            self.server.journal.append(event)
        except AuditUnavailable:
            raise StatementError("58000", "the audit journal is unavailable; the statement is refused") from None
