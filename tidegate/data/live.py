"""Live connector sources: every read runs on the source database, at request time.

A connector source in `live` mode keeps no copy of its rows: a page (and its total), a
count, an export, a column's values and a `/query` become SQL statements sent to the source
database, built here over

    SELECT <columns> FROM (<the source relation>) AS __tidegate_src WHERE <row filter>

with the reader's row filter and the paging passed as BOUND PARAMETERS (the values never
enter the SQL text; identifiers come only from the version's own column list and are quoted
by the dialect). `/query` SQL is first accepted by our sandbox (data/sandbox.py, the same
two-parser check as for stored sources), then transpiled to the engine's dialect with
sqlglot, checked again on the transpiled tree (tables: only `data` and the query's own CTEs;
functions and types: only `ALLOWED_FUNCTIONS` / `ALLOWED_TYPES`), and wrapped so that
`data` is a fenced CTE over the filtered relation: the filter applies before anything the
caller wrote, and none of the caller's expressions is evaluated on a filtered-out row.

What runs where is an engine's business (`Dialect`, one per connector type): connecting
(through the egress policy), its SQL quirks, read-only transactions and timeouts, mapping
its errors. Adding an engine (Trino, ClickHouse, BigQuery) is one more `Dialect` registered
in `DIALECTS` (see the README, "Live connector sources").

Failures: the source cannot be reached -> 503 `source_unavailable`; a read that outlives
`timeout` seconds is cancelled -> 504 `source_timeout`; a pool with no free connection
within the timeout -> 503 `source_busy`. A read holds a worker at most twice the timeout
(waiting for a connection, then running).

Column-level rules do not exist yet: `_projection` is where a column projection will go.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from tidegate.catalog.snapshots import SourceSnapshot, VersionSnapshot
from tidegate.core.columnrules import NO_VISIBLE_COLUMN
from tidegate.core.rowfilter import RowFilter
from tidegate.data import connectors, ingest, sandbox
from tidegate.data.live_dialect import QUERY_ALIAS, SOURCE_ALIAS, Connection, Dialect
from tidegate.data.live_postgresql import PostgreSQL
from tidegate.errors import InvalidRequest, ServiceUnavailable, TidegateError

MODES = ("live", "snapshot")
DEFAULT_MODE = "live"
FETCH_ROWS = 10_000


# The engines live sources can be on, by connector type: one entry per engine.
DIALECTS: dict[str, Dialect] = {dialect.connector: dialect for dialect in (PostgreSQL(),)}


def dialect_of(connector: str) -> Dialect:
    dialect = DIALECTS.get(connector)
    if dialect is None:
        raise InvalidRequest("live_not_supported", f'{connector!r} sources cannot be live; use mode "snapshot".')
    return dialect


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


@dataclass
class _Options:
    timeout: float = 30.0
    pool_size: int = 4
    session_key: bytes | None = None


_options = _Options()


def configure(
    *, timeout_seconds: float | None = None, pool_size: int | None = None, session_key: bytes | None = None
) -> None:
    """This process's limits (TIDEGATE_LIVE_TIMEOUT_SECONDS, TIDEGATE_LIVE_POOL_SIZE) and the
    key connector credentials are decrypted with (Settings.session_key)."""
    if timeout_seconds is not None:
        _options.timeout = float(timeout_seconds)
    if pool_size is not None:
        _options.pool_size = int(pool_size)
    if session_key is not None:
        _options.session_key = session_key
    close_pools()


def _session_key() -> bytes:
    if _options.session_key is None:
        from tidegate.config import get_settings

        _options.session_key = get_settings().session_key
    return _options.session_key


def check_mode(mode: Any, connector: str) -> str:
    if mode not in MODES:
        raise InvalidRequest("invalid_connector_config", '"mode" must be "live" or "snapshot".')
    if mode == "live":
        dialect_of(connector)
    return str(mode)


def check_sync_interval(minutes: Any) -> int | None:
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 5 <= minutes <= 525_600:
        raise InvalidRequest("invalid_connector_config", '"sync_interval_minutes" must be 5 to 525600 minutes.')
    return minutes


# ---------------------------------------------------------------------------------------
# Pools: a small bounded pool per source (and configuration) per process
# ---------------------------------------------------------------------------------------


class _Pool:
    def __init__(self, factory: Callable[[float], Connection], dialect: Dialect, size: int):
        self._factory = factory
        self._dialect = dialect
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self, timeout: float) -> Iterator[Connection]:
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise ServiceUnavailable("source_busy", "The source database's connections are all in use; retry.")
        connection: Connection | None = None
        try:
            try:
                connection = self._idle.get_nowait()
            except queue.Empty:
                connection = self._factory(max(deadline - time.monotonic(), 1.0))
            yield connection
        except TidegateError:
            raise  # a refused or cancelled read: the connection goes back unless it broke
        except BaseException:
            if connection is not None:
                _close(connection)
                connection = None
            raise
        finally:
            if connection is not None:
                if self._dialect.is_broken(connection):
                    _close(connection)
                else:
                    self._idle.put(connection)
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return


def _close(connection: Connection) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
        pass


_pools: dict[tuple[Any, ...], _Pool] = {}
_pools_lock = threading.Lock()


def close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


# ---------------------------------------------------------------------------------------
# A live source, as one read sees it
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a live source's rows are: its engine, settings and (decrypted) credentials."""

    source_id: str
    dialect: Dialect
    config: dict[str, Any]
    secret: dict[str, Any]
    secret_token: str | None  # part of the pool key: new credentials, new connections
    columns: tuple[tuple[str, str], ...]  # (name, type) as last read from the source

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def pool(self) -> _Pool:
        key = (self.source_id, repr(sorted(self.config.items())), self.secret_token, _options.pool_size)
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None:
                for old in [k for k in _pools if k[0] == self.source_id]:
                    _pools.pop(old).close()  # the source's settings changed: its old connections go
                dialect, config, secret = self.dialect, self.config, self.secret
                pool = _Pool(lambda timeout: dialect.connect(config, secret, timeout), dialect, _options.pool_size)
                _pools[key] = pool
            return pool


def target_of(source: SourceSnapshot, version: VersionSnapshot | None) -> Target:
    secret = connectors.decrypt_secret(source.connector_secret_token, _session_key())
    return Target(
        source_id=source.id,
        dialect=dialect_of(source.service),
        config=source.connector_config or {},
        secret=secret,
        secret_token=source.connector_secret_token,
        columns=version.column_types if version else (),
    )


def target_for_config(connector: str, config: dict[str, Any], secret: dict[str, Any]) -> Target:
    """A target for a configuration not stored yet (creating a source: reading its columns)."""
    return Target("(new)", dialect_of(connector), config, secret, None, ())


def read_columns(target: Target) -> list[dict[str, Any]]:
    """The source relation's columns, read now (at creation and on sync)."""
    dialect, timeout = target.dialect, _options.timeout
    connection = dialect.connect(target.config, target.secret, timeout)
    try:
        columns = dialect.columns(connection, dialect.relation(target.config), timeout)
    finally:
        _close(connection)
    try:
        ingest.validate_column_names([c["name"] for c in columns])
    except InvalidRequest as exc:
        raise InvalidRequest("connector_error", f"The source cannot be live: {exc.message}") from None
    return columns


# ---------------------------------------------------------------------------------------
# SQL building (values are always bound parameters)
# ---------------------------------------------------------------------------------------


def _projection(target: Target, row_filter: RowFilter) -> list[str]:
    """The columns a reader gets, under the filter's column rules (hidden ones dropped)."""
    return row_filter.column_rules.visible(target.column_names)


def _select_list(target: Target, row_filter: RowFilter) -> str:
    """What every read selects: the visible columns, masked ones replaced by their mask (named
    as the column), so the reader's SQL (`data` in /query) never sees a real masked value."""
    dialect, masked, kinds = target.dialect, row_filter.column_rules.masked, dict(target.columns)
    parts = [
        f"{dialect.masked(dialect.quote(name), kinds[name])} AS {dialect.quote(name)}"
        if name in masked
        else dialect.quote(name)
        for name in _projection(target, row_filter)
    ]
    return ", ".join(parts) if parts else f"NULL AS {NO_VISIBLE_COLUMN}"


def _filtered_relation(target: Target, row_filter: RowFilter) -> tuple[str, list[Any]] | None:
    """(SQL of the rows `row_filter` lets through, its parameters); None: no row passes."""
    if not isinstance(row_filter, RowFilter):
        raise TypeError("row_filter must be a tidegate.core.rowfilter.RowFilter")
    if row_filter.deny_all:
        return None
    dialect = target.dialect
    names = set(target.column_names)
    conditions: list[str] = []
    params: list[Any] = []
    for clause in sorted(row_filter.clauses, key=lambda c: (c.column, sorted(c.values))):
        if clause.column not in names or not clause.values:
            return None  # fail closed, as for stored sources
        values = sorted(clause.values)
        if not all(isinstance(v, str) for v in values):
            raise TypeError("row filter values must be strings")
        conditions.append(dialect.text_in(dialect.quote(clause.column)))
        params.append(values)
    sql = f"SELECT {_select_list(target, row_filter)} FROM {dialect.relation(target.config)} AS {SOURCE_ALIAS}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    return sql, params


def _typed_table(target: Target, names: list[str], rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows of the source relation as a canonical Arrow table of the version's types."""
    kinds = dict(target.columns)
    columns: list[list[Any]] = [[] for _ in names]
    for row in rows:
        for i, value in enumerate(row):
            columns[i].append(value)
    arrays = []
    for name, values in zip(names, columns, strict=True):
        kind = kinds.get(name)
        try:
            arrays.append(ingest.convert_values(values, kind, name) if kind else ingest.infer_values(values))
        except InvalidRequest:
            arrays.append(ingest.infer_values(values))
    table = pa.Table.from_arrays(arrays, names=names)
    return table.select([]) if names == [NO_VISIBLE_COLUMN] else table  # (rows, no columns)


def _empty(target: Target, row_filter: RowFilter) -> pa.Table:
    visible = set(_projection(target, row_filter))
    return ingest.empty_table([{"name": n, "type": t} for n, t in target.columns if n in visible])


def _run(target: Target, sql: str, params: list[Any], timeout: float | None = None) -> tuple[list[str], list[Any]]:
    seconds = _options.timeout if timeout is None else min(timeout, _options.timeout)
    with target.pool().connection(seconds) as connection:
        return target.dialect.rows(connection, sql, params, seconds)


# ---------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------


def read_page(target: Target, row_filter: RowFilter, *, page: int, page_size: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the rows the filter lets through (source order), and how many there are."""
    relation = _filtered_relation(target, row_filter)
    if relation is None:
        return [], 0
    sql, params = relation
    paged = target.dialect.paged(sql)
    names, rows = _run(target, paged, [*params, page_size, (page - 1) * page_size])
    if page == 1 and len(rows) < page_size:
        total = len(rows)  # the whole result: no count needed
    else:
        total = count(target, row_filter)
    return _typed_table(target, names, rows), total


def count(target: Target, row_filter: RowFilter) -> int:
    relation = _filtered_relation(target, row_filter)
    if relation is None:
        return 0
    sql, params = relation
    _, rows = _run(target, f"SELECT count(*) FROM ({sql}) AS {QUERY_ALIAS}", params)
    return int(rows[0][0])


def batches(target: Target, row_filter: RowFilter, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Every filtered row, in Arrow batches, streamed from the source (an export)."""
    relation = _filtered_relation(target, row_filter)
    if relation is None:
        return
    sql, params = relation
    # An export may take longer than a page: the connector read limit bounds it.
    seconds = max(_options.timeout, float(connectors.statement_timeout_seconds()))
    with target.pool().connection(_options.timeout) as connection:
        for names, rows in target.dialect.stream(connection, sql, params, seconds, batch_rows):
            yield from _typed_table(target, names, rows).to_batches(max_chunksize=batch_rows)


def table(target: Target, row_filter: RowFilter) -> pa.Table:
    """Every filtered row as one Arrow table (a project step or SQL session reads this)."""
    parts = list(batches(target, row_filter, FETCH_ROWS))
    return pa.Table.from_batches(parts) if parts else _empty(target, row_filter)


def distinct_values(target: Target, row_filter: RowFilter, column: str, limit: int) -> list[str]:
    relation = _filtered_relation(target, row_filter)
    if relation is None:
        return []
    sql, params = relation
    dialect = target.dialect
    q = dialect.quote(column)
    statement = dialect.paged(
        f"SELECT DISTINCT {dialect.as_text(q)} AS v FROM ({sql}) AS {QUERY_ALIAS} WHERE {q} IS NOT NULL ORDER BY v"
    )
    _, rows = _run(target, statement, [*params, limit, 0])
    return [row[0] for row in rows]


# ---------------------------------------------------------------------------------------
# /query: sandbox, transpile, check again, wrap
# ---------------------------------------------------------------------------------------

# Functions a live /query may call, by sqlglot expression key (typed functions) or name
# (anonymous ones), checked on the TRANSPILED tree: what the engine will run. Anything that
# reads settings, files, catalogs, other databases or sleeps is absent on purpose.
ALLOWED_FUNCTIONS = frozenset(
    """
    count sum avg min max stddev stddev_pop stddev_samp variance var_pop var_samp bool_and bool_or
    array_agg string_agg group_concat percentilecont percentiledisc median corr covarpop covarsamp
    countif logicaland logicalor
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    firstvalue lastvalue nthvalue rownumber denserank percentrank cumedist
    coalesce nullif greatest least if case
    lower upper length trim ltrim rtrim substring substr replace concat concat_ws left right lpad rpad
    pad strposition position split_part splitpart reverse initcap md5 regexpreplace regexplike
    regexpextract startswith endswith chr ascii unicode stringtoarray arraytostring
    abs round ceil floor sqrt pow power ln log log10 exp mod sign trunc cbrt
    datetrunc timestamptrunc extract date_part datepart currentdate currenttimestamp now
    dateadd datesub datediff tsordstodate todate timestrtotime strtotime timetostr tochar
    cast trycast
    """.split()
)

# Types a live /query may cast to (sqlglot DataType names): plain data, never reg* catalog types.
ALLOWED_TYPES = frozenset(
    """
    BIGINT INT SMALLINT TINYINT DOUBLE FLOAT DECIMAL TEXT VARCHAR CHAR NCHAR NVARCHAR BOOLEAN
    DATE TIMESTAMP TIMESTAMPTZ TIMESTAMPLTZ TIME TIMETZ INTERVAL UBIGINT UINT USMALLINT UTINYINT
    """.split()
)


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest("invalid_query", message)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    return node.key.lower()


def _check_transpiled(tree: Any, cte_names: set[str]) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Func) and _function_name(node) not in ALLOWED_FUNCTIONS:
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else str(node.this)
            raise _refuse(f"The function {name.lower()}() cannot be used on a live source.")
        if isinstance(node, exp.DataType) and (
            not isinstance(node.this, exp.DataType.Type) or node.this.name not in ALLOWED_TYPES
        ):
            raise _refuse(f"The type {node.sql()} cannot be used on a live source.")
        if isinstance(node, exp.Table):
            if node.args.get("db") or node.args.get("catalog") or not isinstance(node.this, exp.Identifier):
                raise _refuse("A live query may read only the table data.")
            if node.name.lower() not in cte_names | {sandbox.RELATION}:
                raise _refuse(f"A live query may read only the table data, not {node.name!r}.")
        if isinstance(node, (exp.Placeholder, exp.Parameter, exp.Into, exp.Lock, exp.Command)):
            raise _refuse("This query cannot run on a live source.")


def compile_query(target: Target, row_filter: RowFilter, sql: Any) -> tuple[str, list[Any]]:
    """The caller's SQL as the engine's SQL over `data` = the filtered source relation, and its
    parameters (the filter's). A filter that lets nothing through still runs the query (same
    shape, same refusals) over a `data` with no rows."""
    validated = sandbox.validate_query(sql)
    dialect = target.dialect
    try:
        tree = sqlglot.parse_one(validated.sql, read="duckdb")
        transpiled = tree.sql(dialect=dialect.sqlglot_dialect)
        check = sqlglot.parse_one(transpiled, read=dialect.sqlglot_dialect)
    except sqlglot.errors.SqlglotError:
        raise _refuse("This query cannot be translated for the source database.") from None
    _check_transpiled(check, {cte.alias_or_name.lower() for cte in check.find_all(exp.CTE)})
    relation = _filtered_relation(target, row_filter)
    if relation is None:
        select = _select_list(target, row_filter)
        relation = (f"SELECT {select} FROM {dialect.relation(target.config)} AS {SOURCE_ALIAS} WHERE false", [])
    inner, params = relation
    body = dialect.escape_literal_text(check.sql(dialect=dialect.sqlglot_dialect))
    # `data` is bound to the filtered relation in a CTE that encloses the caller's whole
    # statement (their own WITH included), so nothing they wrote sees unfiltered rows; fenced,
    # so that the engine cannot evaluate their expressions on filtered-out rows either.
    return f"WITH {dialect.fenced_cte(sandbox.RELATION, inner)} SELECT * FROM ({body}) AS {QUERY_ALIAS}", params


def run_query(
    target: Target, row_filter: RowFilter, sql: Any, *, page: int, page_size: int, timeout: float | None = None
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """(rows of the page, total rows of the result, column names) of a /query on the source."""
    wrapped, params = compile_query(target, row_filter, sql)
    seconds = _options.timeout if timeout is None else min(timeout, _options.timeout)
    with target.pool().connection(seconds) as connection:
        _, counted = target.dialect.rows(connection, f"SELECT count(*) FROM ({wrapped}) AS __n", params, seconds)
        names, rows = target.dialect.rows(
            connection, target.dialect.paged(wrapped), [*params, page_size, (page - 1) * page_size], seconds
        )
    table = pa.Table.from_arrays(
        [ingest.infer_values([row[i] for row in rows]) for i in range(len(names))], names=names
    )
    result_rows, columns = sandbox.rows_of(table)
    return result_rows, int(counted[0][0]), columns
