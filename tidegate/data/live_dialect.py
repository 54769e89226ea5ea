"""What an engine provides to live sources (data/live.py): the `Dialect` interface, and the
errors every engine answers with (503 unreachable, 504 too slow)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from tidegate.errors import ServiceUnavailable, UpstreamTimeout

SOURCE_ALIAS = "__tidegate_src"
QUERY_ALIAS = "__tidegate_q"


class Connection(Protocol):
    """One open connection of an engine's driver, as far as this module uses it."""

    def close(self) -> None: ...


class Dialect(Protocol):
    """One SQL engine a live source can live on."""

    connector: str  # the connector type (connectors.CONNECTORS key)
    sqlglot_dialect: str  # what /query SQL is transpiled to

    def connect(self, config: dict[str, Any], secret: dict[str, Any], timeout: float) -> Connection:
        """A new connection, through the egress policy (503 source_unavailable on failure)."""
        ...

    def relation(self, config: dict[str, Any]) -> str:
        """The SQL of the source relation: a quoted table name or a parenthesized query."""
        ...

    def quote(self, name: str) -> str: ...

    def text_in(self, column_sql: str) -> str:
        """A condition: the column, as text, is one of ONE bound parameter (a list of strings)."""
        ...

    def fenced_cte(self, name: str, sql: str) -> str:
        """`name AS (sql)` such that the engine evaluates none of the caller's expressions on
        rows `sql` filters out (an optimization fence: no error, no side channel on them)."""
        ...

    def as_text(self, column_sql: str) -> str:
        """The column as text, the form row filters compare (CAST(x AS TEXT) in PostgreSQL)."""
        ...

    def masked(self, column_sql: str, kind: str) -> str:
        """The column's mask (column rules): for text, its first character + `***`; for any
        other canonical `kind`, a NULL of the column's type."""
        ...

    def paged(self, sql: str) -> str:
        """`sql` limited by two more bound parameters: how many rows, then how many to skip."""
        ...

    def escape_literal_text(self, sql: str) -> str:
        """`sql` (with no parameters of its own) made safe to send with bound parameters."""
        ...

    def rows(
        self, connection: Connection, sql: str, params: Sequence[Any], timeout: float
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; its column names and rows."""
        ...

    def stream(
        self, connection: Connection, sql: str, params: Sequence[Any], timeout: float, batch: int
    ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        """Run one read-only statement; its rows in batches (with the column names)."""
        ...

    def columns(self, connection: Connection, relation: str, timeout: float) -> list[dict[str, Any]]:
        """The relation's columns as [{"name", "type"}] (canonical types)."""
        ...

    def is_broken(self, connection: Connection) -> bool:
        """Whether a connection must be dropped rather than reused."""
        ...


def unavailable(where: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        "source_unavailable", f"The source database at {where} cannot be reached now; retry later.", retry_after=5
    )


def timed_out(seconds: float) -> UpstreamTimeout:
    return UpstreamTimeout("source_timeout", f"The source database did not answer within {seconds:g} seconds.")
