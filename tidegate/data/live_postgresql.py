"""PostgreSQL as a live source engine (psycopg 3): a `Dialect` (data/live_dialect.py).

Connections go to the address the egress policy checked (`hostaddr`), never read the
server's own credentials (`passfile` = /dev/null), and start read-only with a statement
timeout; each read also runs in its own READ ONLY transaction with `SET LOCAL
statement_timeout`, and a watchdog cancels it client-side at the same deadline (a server
that ignores its settings still ends). Values travel as bound parameters (psycopg sends them
apart from the SQL text: the server logs `$1`, `$2`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql

from tidegate.core.columnrules import MASK_SUFFIX
from tidegate.data import connectors, egress
from tidegate.data.live_dialect import SOURCE_ALIAS, timed_out, unavailable
from tidegate.errors import InvalidRequest

# The type of a masked column's NULL, by canonical type (text is masked, not nulled).
_NULL_TYPES = {
    "integer": "bigint",
    "float": "double precision",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
}


class PostgreSQL:
    connector = "postgresql"
    sqlglot_dialect = "postgres"

    def connect(self, config: dict[str, Any], secret: dict[str, Any], timeout: float) -> psycopg.Connection[Any]:
        host, port = config["host"], int(config.get("port", 5432))
        destination = egress.check_destination(host, port)  # 400 connector_host_not_allowed
        params: dict[str, Any] = {
            "host": host,
            "hostaddr": destination.address,
            "port": port,
            "dbname": config["database"],
            "user": config["user"],
            "connect_timeout": max(1, min(int(config.get("connect_timeout", 10)), int(timeout) or 1)),
            "application_name": "tidegate-live",
            "passfile": os.devnull,
            "sslmode": config.get("sslmode") or "prefer",
            "options": f"-c default_transaction_read_only=on -c statement_timeout={int(timeout * 1000)}",
            "autocommit": True,  # transactions are explicit, one per read
        }
        if secret.get("password"):
            params["password"] = secret["password"]
        try:
            return psycopg.connect(**params)
        except psycopg.Error:
            raise unavailable(f"{host}:{port}") from None

    def relation(self, config: dict[str, Any]) -> str:
        if config.get("table"):
            parts = [config["schema"], config["table"]] if config.get("schema") else [config["table"]]
            return ".".join(self.quote(p) for p in parts)
        return "(" + self.escape_literal_text(str(config["query"]).rstrip().rstrip(";")) + ")"

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def as_text(self, column_sql: str) -> str:
        return f"CAST({column_sql} AS TEXT)"

    def text_in(self, column_sql: str) -> str:
        return f"{self.as_text(column_sql)} = ANY(%s)"

    def masked(self, column_sql: str, kind: str) -> str:
        if kind == "string":
            return f"(left({self.as_text(column_sql)}, 1) || '{MASK_SUFFIX}')"
        return f"CAST(NULL AS {_NULL_TYPES[kind]})"

    def paged(self, sql: str) -> str:
        return f"{sql} LIMIT %s OFFSET %s"

    def fenced_cte(self, name: str, sql: str) -> str:
        # Not inlined: otherwise the planner may run the caller's WHERE before the row filter
        # (a division by zero on a hidden row would tell that it exists).
        return f"{self.quote(name)} AS MATERIALIZED ({sql})"

    def escape_literal_text(self, sql: str) -> str:
        return sql.replace("%", "%%")  # psycopg reads % as a parameter marker when params are given

    def rows(
        self, connection: Any, sql: str, params: Sequence[Any], timeout: float
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._read(connection, timeout):
            cursor = connection.execute(sql.encode(), list(params))
            return [d.name for d in cursor.description or []], cursor.fetchall()

    def stream(
        self, connection: Any, sql: str, params: Sequence[Any], timeout: float, batch: int
    ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        with self._read(connection, timeout), connection.cursor(name="tidegate_live") as cursor:
            cursor.execute(sql.encode(), list(params))
            names = [d.name for d in cursor.description or []]
            while rows := cursor.fetchmany(batch):
                yield names, rows

    def columns(self, connection: Any, relation: str, timeout: float) -> list[dict[str, Any]]:
        with self._read(connection, timeout):
            cursor = connection.execute(f"SELECT * FROM {relation} AS {SOURCE_ALIAS} LIMIT 0".encode(), [])
            result = []
            for d in cursor.description or []:
                info = connection.adapters.types.get(d.type_code)
                kind = connectors.canonical_pg_type(info.name if info else "")
                result.append({"name": d.name, "type": kind or "string"})
            return result

    def is_broken(self, connection: Any) -> bool:
        return bool(connection.closed or connection.broken)

    def _read(self, connection: Any, timeout: float) -> _ReadOnly:
        return _ReadOnly(connection, timeout)


class _ReadOnly:
    """One READ ONLY transaction with a statement timeout and a client-side watchdog; the
    driver's errors become 503 (unreachable), 504 (too slow) or 400 (the SQL was refused)."""

    def __init__(self, connection: Any, timeout: float):
        self.connection, self.timeout = connection, timeout
        self.watchdog = threading.Timer(timeout, connection.cancel_safe)
        self.watchdog.daemon = True
        self.transaction: Any = None

    def __enter__(self) -> _ReadOnly:
        try:
            self.transaction = self.connection.transaction()
            self.transaction.__enter__()
            # One round trip (no parameters: the simple protocol takes several statements).
            # Paging is by position: a synchronized scan would start mid-table for one page.
            self.connection.execute(
                pgsql.SQL(
                    "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL synchronize_seqscans = off"
                ).format(int(self.timeout * 1000))
            )
        except psycopg.Error as exc:
            self._close_broken()
            raise self._mapped(exc) from None
        self.watchdog.start()
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.watchdog.cancel()
        try:
            self.transaction.__exit__(kind, value, traceback)
        except psycopg.Error as exc:
            if not isinstance(value, psycopg.Error):
                self._close_broken()
                raise self._mapped(exc) from None
        if isinstance(value, psycopg.Error):
            if isinstance(value, psycopg.OperationalError) and not isinstance(value, psycopg.errors.QueryCanceled):
                self._close_broken()
            raise self._mapped(value) from None

    def _close_broken(self) -> None:
        try:
            self.connection.close()
        except psycopg.Error:
            pass

    def _mapped(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return timed_out(self.timeout)
        info = self.connection.info
        where = f"{info.host}:{info.port}" if not self.connection.closed else "the configured host"
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or self.connection.broken:
            return unavailable(where)
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "unknown error"
        return InvalidRequest("invalid_query", f"The source database refused the read: {message}")
