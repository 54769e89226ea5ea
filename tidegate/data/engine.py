"""The ONLY way to read a source's rows. Every public read takes the caller's SourceAccess.

`access.sources.SourceAccess` is the capability to read rows: the version, the caller's row
filter and the visible columns in one value that only opening a source builds. A version and
a filter given separately are refused (TypeError), so no caller can pair a version with a
filter of its own making.

The filter is compiled to SQL with bound parameters only: `CAST("col" AS VARCHAR) IN (?, ...)`
per clause, ANDed. Values are never pasted into SQL; identifiers come only from the version's
own column list (exact match) and are double-quoted with quotes doubled. `deny_all`, a
clause on a column the version does not have, or a clause with no values: zero rows (fail
closed).

Column rules travel in the filter (`RowFilter.column_rules`): every read selects the
projection (`_select_list`): hidden columns are not selected, masked ones are replaced by
their mask (text: first character + `***`; other types: a typed NULL) while the WHERE of
the row filter still sees the real values. The cached tables, the pages, CSV/Parquet
exports, distinct values and the `data` of /query are all built from that projection, so
no reader's SQL ever sees a hidden column or a masked column's real value.

Performance: per (version id, row_filter.cache_key()) the filtered rows are materialized
once as an in-memory Arrow table, kept in a process-wide LRU bounded by total bytes. A
page is then an O(1) slice plus `to_pylist()` and a count is `num_rows`, whatever the page
number. Rendered JSON pages are kept too, per (version, filter, page, page size), in a
smaller LRU (`page_json`). Versions are immutable, so a cache entry never goes stale: a write creates a new
version id, which simply misses the cache (old entries age out, or `drop_version`). A
result too large for the cache (> `max_entry_fraction` of it) is not kept; reads of it fall
back to SQL (LIMIT/OFFSET, COUNT, streaming) over the Parquet parts.

DuckDB: one in-memory connection per process (re-created after fork), a fresh `cursor()`
per call so threads never share one. The connection may read only the data directory
(`allowed_directories`), has no extension auto-loading, and its configuration is locked.
User SQL (`run_query`) never runs here: it runs in `sandbox` over the filtered table.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar, overload

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tidegate import jsonfmt, metrics, spreadsheet
from tidegate.access.sources import SourceAccess
from tidegate.caching import LRUCache, require_immutable
from tidegate.catalog.models import SourceVersion
from tidegate.config import DataSettings, ObjectStoreSettings
from tidegate.core.columnrules import MASK_SUFFIX, NO_VISIBLE_COLUMN
from tidegate.core.rowfilter import RowFilter
from tidegate.data import ingest, live, querycost, sandbox, storage
from tidegate.errors import InvalidRequest, ServiceUnavailable, UpstreamTimeout

MAX_PAGE_SIZE = 10_000
MAX_DISTINCT_LIMIT = 10_000
DEFAULT_CACHE_BYTES = DataSettings.cache_bytes  # until configure() hands over Settings.data
DEFAULT_PAGE_CACHE_BYTES = 64 * 1024 * 1024


class _Deny(enum.Enum):
    """What compile_filter returns for a filter that lets no row through."""

    DENY = "deny"


_DENY: Final = _Deny.DENY
_Where = tuple[str, list[str]]  # (where_sql, bound params)
_Key = tuple[Hashable, ...]  # a cache key: (version id, filter key, ...)
_V = TypeVar("_V")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------
# Configuration and connections
# ---------------------------------------------------------------------------------------

_options: dict[str, Any] = {
    "threads": DataSettings.threads,
    "memory_limit": DataSettings.memory_limit,
    "max_entry_fraction": 0.5,
}
_conn_lock = threading.Lock()
_conn: tuple[tuple[object, ...], duckdb.DuckDBPyConnection] | None = None


def configure(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    object_store: ObjectStoreSettings | None = None,
    part_cache_dir: str | os.PathLike[str] | None = None,
    cache_bytes: int | None = None,
    max_entry_fraction: float | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    query_timeout: float | None = None,
    query_memory_limit: str | None = None,
    query_threads: int | None = None,
) -> None:
    """Process-wide settings; call once at startup (the lead wires Settings.data_dir here)."""
    global _conn
    if data_dir is not None:
        storage.configure(data_dir, object_store=object_store, part_cache_dir=part_cache_dir)
    with _conn_lock:
        if threads is not None:
            _options["threads"] = int(threads)
        if memory_limit is not None:
            _options["memory_limit"] = memory_limit
        if max_entry_fraction is not None:
            _options["max_entry_fraction"] = float(max_entry_fraction)
        _conn = None
    if cache_bytes is not None:
        _cache.resize(int(cache_bytes))
    if query_timeout is not None or query_memory_limit is not None or query_threads is not None:
        sandbox.configure(timeout=query_timeout, memory_limit=query_memory_limit, threads=query_threads)


def _connection() -> duckdb.DuckDBPyConnection:
    global _conn
    root = storage.data_root()
    key = (os.getpid(), str(root), _options["threads"], _options["memory_limit"])
    with _conn_lock:
        if _conn is None or _conn[0] != key:
            connection = duckdb.connect(
                ":memory:",
                config={
                    "threads": _options["threads"],
                    "memory_limit": _options["memory_limit"],
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "python_enable_replacements": False,
                },
            )
            allowed = str(root).rstrip("/") + "/"
            connection.execute("SET allowed_directories = [" + _sql_string(allowed) + "]")
            connection.execute("SET enable_external_access = false")
            connection.execute("SET enable_progress_bar = false")  # a server has nothing to print it to
            connection.execute("SET lock_configuration = true")
            _conn = (key, connection)
        return _conn[1]


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------


class _ResultCache(Generic[_V]):
    """LRU of filtered Arrow tables (or rendered pages) keyed by (version id, filter key,
    ...), bounded by bytes."""

    def __init__(self, max_bytes: int, name: str):
        self.max_bytes = max_bytes
        self.name = name  # in the metrics (tidegate_cache_lookups_total{cache=...})
        self._entries: OrderedDict[_Key, tuple[_V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._oversized: OrderedDict[_Key, None] = OrderedDict()
        self._build_locks = [threading.Lock() for _ in range(64)]
        self.hits = self.misses = self.evictions = 0

    def build_lock(self, key: _Key) -> threading.Lock:
        return self._build_locks[hash(key) % len(self._build_locks)]

    @property
    def max_entry_bytes(self) -> int:
        return int(self.max_bytes * _options["max_entry_fraction"])

    def get(self, key: _Key) -> _V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
        metrics.cache_lookup(self.name, entry is not None)
        return entry[0] if entry is not None else None

    def put(self, key: _Key, table: _V, size: int) -> bool:
        require_immutable(table, where="result cache value")  # Arrow tables or frozen pages, never ORM rows
        if size > self.max_entry_bytes:
            self.mark_oversized(key)
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (table, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1
        return True

    def is_oversized(self, key: _Key) -> bool:
        with self._lock:
            return key in self._oversized

    def mark_oversized(self, key: _Key) -> None:
        with self._lock:
            self._oversized[key] = None
            while len(self._oversized) > 4096:
                self._oversized.popitem(last=False)

    def drop_version(self, version_id: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == version_id]:
                self._bytes -= self._entries.pop(key)[1]
            for key in [k for k in self._oversized if k[0] == version_id]:
                del self._oversized[key]

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            while self._bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1
            self._oversized.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._oversized.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "oversized": len(self._oversized),
            }

    def keys(self) -> list[_Key]:
        with self._lock:
            return list(self._entries)


_cache: _ResultCache[pa.Table] = _ResultCache(DEFAULT_CACHE_BYTES, "filtered_rows")
_pages: _ResultCache[JSONPage] = _ResultCache(DEFAULT_PAGE_CACHE_BYTES, "pages")
_sizes: LRUCache[str, int] = LRUCache(10_000, name="parquet sizes")  # version id -> uncompressed bytes


def cache_stats() -> dict[str, int]:
    return _cache.stats()


def drop_version(version_id: str) -> None:
    """Forget cached results of a version (e.g. once it is pruned). Never required for
    correctness: versions are immutable and ids are never reused."""
    _cache.drop_version(version_id)
    _pages.drop_version(version_id)


def clear_cache() -> None:
    _cache.clear()
    _pages.clear()


# ---------------------------------------------------------------------------------------
# Validation and filter compilation
# ---------------------------------------------------------------------------------------


def _check_filter(row_filter: Any) -> RowFilter:
    if not isinstance(row_filter, RowFilter):
        raise TypeError("row_filter must be a tidegate.core.rowfilter.RowFilter")
    return row_filter


def _opened(access: Any) -> tuple[Any, RowFilter]:
    """(version, row filter) of a caller's SourceAccess; TypeError for anything else."""
    if not isinstance(access, SourceAccess):
        raise TypeError("rows are read with a tidegate.access.sources.SourceAccess (open_source)")
    if access.version is None:
        raise TypeError("this source has no version to read (check access.version first)")
    return access.version, access.row_filter


def _live(access: SourceAccess) -> live.Target | None:
    """The live target of a live connector source (its rows are read on the source
    database, data/live.py), or None for a source whose rows are stored here."""
    source = access.source
    if source is None or not source.is_live:
        return None
    return live.target_of(source, access.version)


def _check_page(page: Any, page_size: Any) -> None:
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InvalidRequest("invalid_page", "page must be an integer >= 1.")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest("invalid_page_size", f"page_size must be an integer from 1 to {MAX_PAGE_SIZE:,}.")


def compile_filter(version: SourceVersion, row_filter: RowFilter) -> _Where | Literal[_Deny.DENY]:
    """`(where_sql, params)` (where_sql "" when unrestricted), or _DENY for zero rows."""
    _check_filter(row_filter)
    if row_filter.deny_all:
        return _DENY
    names = set(version.column_names)
    conditions: list[str] = []
    params: list[str] = []
    for clause in sorted(row_filter.clauses, key=lambda c: (c.column, sorted(c.values))):
        if clause.column not in names or not clause.values:
            return _DENY  # fail closed
        values = sorted(clause.values)
        if not all(isinstance(v, str) for v in values):
            raise TypeError("row filter values must be strings")
        conditions.append(f"CAST({quote_ident(clause.column)} AS VARCHAR) IN ({', '.join('?' * len(values))})")
        params.extend(values)
    return " AND ".join(conditions), params


# The SQL type of a masked column's NULL, by canonical type (text is masked, not nulled).
_NULL_TYPES = {"integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN", "date": "DATE", "timestamp": "TIMESTAMP"}


def _visible_columns(version: SourceVersion, row_filter: RowFilter) -> list[dict[str, Any]]:
    """`[{"name", "type"}]` of the columns the filter's reader sees (hidden ones dropped;
    masked ones keep their type: text masks stay text, other masks are NULLs of the type)."""
    hidden = _check_filter(row_filter).column_rules.hidden
    return [c for c in version.columns if c["name"] not in hidden]


def _masked(name: str, kind: str) -> str:
    q = quote_ident(name)
    if kind == "string":
        return f"(left({q}, 1) || {_sql_string(MASK_SUFFIX)})"
    return f"CAST(NULL AS {_NULL_TYPES[kind]})"


def _select_list(version: SourceVersion, row_filter: RowFilter) -> str:
    """The projection every read selects: visible columns, masked ones masked (named as the
    column), so that nothing after it (caches, exports, /query) sees a real masked value."""
    masked = row_filter.column_rules.masked
    parts = [
        f"{_masked(c['name'], c['type'])} AS {quote_ident(c['name'])}"
        if c["name"] in masked
        else quote_ident(c["name"])
        for c in _visible_columns(version, row_filter)
    ]
    return ", ".join(parts) if parts else f"NULL AS {NO_VISIBLE_COLUMN}"


def _parquet_sql(version: SourceVersion, row_filter: RowFilter, where: str) -> str:
    sql = f"SELECT {_select_list(version, row_filter)} FROM read_parquet(?)"
    return sql + (f" WHERE {where}" if where else "")


@contextmanager
def _parts(version: SourceVersion) -> Iterator[list[str]]:
    """The version's part files as local paths, kept (with an object store: pinned in this
    node's cache, so no eviction removes them) until the block ends: hold it while DuckDB
    reads them."""
    with storage.readable_parts(version) as paths:
        yield [str(p) for p in paths]


def _canonical(table: pa.Table, version: SourceVersion, row_filter: RowFilter) -> pa.Table:
    columns = _visible_columns(version, row_filter)
    if not columns:  # every column hidden: rows without columns (the count stays true)
        return table.select([])
    schema = ingest.schema_for(columns)
    return table if table.schema == schema else table.cast(schema)


def _empty(version: SourceVersion, row_filter: RowFilter) -> pa.Table:
    return ingest.empty_table(_visible_columns(version, row_filter))


# ---------------------------------------------------------------------------------------
# Materialization
# ---------------------------------------------------------------------------------------


def _uncompressed_bytes(version: SourceVersion) -> int:
    known = _sizes.get(version.id)
    if known is not None:
        return known
    total = 0
    with _parts(version) as paths:
        for path in paths:
            meta = pq.read_metadata(path)
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return _sizes.put(version.id, total)


def _sql_count(version: SourceVersion, where: str, params: list[str]) -> int:
    cursor = _connection().cursor()
    try:
        sql = "SELECT count(*) FROM read_parquet(?)" + (f" WHERE {where}" if where else "")
        with _parts(version) as paths:
            return int(cursor.sql(sql, params=[paths, *params]).fetchall()[0][0])
    finally:
        cursor.close()


def _materialize(version: SourceVersion, row_filter: RowFilter, where: str, params: list[str]) -> pa.Table:
    cursor = _connection().cursor()
    try:
        with _parts(version) as paths:
            table = cursor.sql(_parquet_sql(version, row_filter, where), params=[paths, *params]).to_arrow_table()
    finally:
        cursor.close()
    return _canonical(table, version, row_filter)


def _filtered(version: SourceVersion, row_filter: RowFilter, *, force: bool = False) -> pa.Table | None:
    """The filtered rows as an Arrow table (cached), or None when too large to keep (then
    callers use SQL). `force` materializes even then (not cached)."""
    _check_filter(row_filter)
    if row_filter.deny_all or not version.parts:
        return _empty(version, row_filter)
    key = (version.id, row_filter.cache_key())
    table = _cache.get(key)
    if table is not None:
        return table  # compiled and checked when it was built
    compiled = compile_filter(version, row_filter)
    if compiled is _DENY:
        return _empty(version, row_filter)
    where, params = compiled
    with _cache.build_lock(key):
        table = _cache.get(key)
        if table is not None:
            return table
        if not force:
            if _cache.is_oversized(key):
                return None
            # Parquet's uncompressed size undercounts Arrow (dictionary pages), so only a
            # clear excess skips materializing; otherwise build, then measure exactly.
            estimate = _uncompressed_bytes(version)
            if estimate > 4 * _cache.max_entry_bytes and where and version.row_count:
                estimate = estimate * _sql_count(version, where, params) // version.row_count
            if estimate > 4 * _cache.max_entry_bytes:
                _cache.mark_oversized(key)
                return None
        table = _materialize(version, row_filter, where, params)
        if not _cache.put(key, table, table.get_total_buffer_size()) and not force:
            return None
        return table


# ---------------------------------------------------------------------------------------
# Rows as Python values, fast
# ---------------------------------------------------------------------------------------

_DATE_ORDINAL_1970 = dt.date(1970, 1, 1).toordinal()
_from_ordinal = dt.date.fromordinal
_from_iso = dt.datetime.fromisoformat


def _is_temporal(kind: pa.DataType) -> bool:
    return kind == pa.date32() or (pa.types.is_timestamp(kind) and kind.tz is None)


def _temporal_values(column: pa.ChunkedArray) -> list[Any]:
    """Like `to_pylist()`, but several times faster for dates and timestamps (pyarrow builds
    those one slow Python call at a time); the values are identical."""
    if column.type == pa.date32():
        days = [d for chunk in column.chunks for d in chunk.view(pa.int32()).to_pylist()]
        return [None if d is None else _from_ordinal(_DATE_ORDINAL_1970 + d) for d in days]
    try:
        return [None if s is None else _from_iso(s) for s in column.cast(pa.string()).to_pylist()]
    except (ValueError, pa.ArrowInvalid):
        values: list[Any] = column.to_pylist()  # outside what the text form round-trips: exact, slower
        return values


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """A (small) table as a list of row dicts, equal to `table.to_pylist()`."""
    names = table.column_names
    if not names:  # every column hidden from the reader: rows without columns
        return [{} for _ in range(table.num_rows)]
    plain = [i for i, field in enumerate(table.schema) if not _is_temporal(field.type)]
    if len(plain) == len(names):
        values = table.to_pydict()
        columns = [values[name] for name in names]
    else:
        values = table.select(plain).to_pydict() if plain else {}
        keep = set(plain)
        columns = [values[names[i]] if i in keep else _temporal_values(table.column(i)) for i in range(len(names))]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


# ---------------------------------------------------------------------------------------
# Public reads
# ---------------------------------------------------------------------------------------


def read_page(access: SourceAccess, *, page: int, page_size: int) -> tuple[list[dict[str, Any]], int]:
    """One page of the rows the caller's filter lets through, and how many there are in total."""
    version, row_filter = _opened(access)
    target = _live(access)
    if target is not None:
        _check_page(page, page_size)
        rows, total = live.read_page(target, row_filter, page=page, page_size=page_size)
        return rows_of(rows), total
    return _read_page(version, row_filter, page=page, page_size=page_size)


def _read_page(
    version: SourceVersion, row_filter: RowFilter, *, page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    _check_filter(row_filter)
    _check_page(page, page_size)
    offset = (page - 1) * page_size
    table = _filtered(version, row_filter)
    if table is not None:
        return _page_of(table, offset, page_size)
    compiled = compile_filter(version, row_filter)
    if compiled is _DENY:  # _filtered answers a denying filter from memory; kept fail-closed
        return [], 0
    where, params = compiled
    cursor = _connection().cursor()
    try:
        with _parts(version) as paths:
            rows = cursor.sql(
                _parquet_sql(version, row_filter, where) + " LIMIT ? OFFSET ?",
                params=[paths, *params, page_size, offset],
            ).to_arrow_table()
    finally:
        cursor.close()
    return rows_of(_canonical(rows, version, row_filter)), _count(version, row_filter)


@dataclass(frozen=True)
class JSONPage:
    rows: bytes  # the page's rows, rendered: a JSON array of objects
    count: int  # how many rows the page holds
    total: int  # how many rows the filter lets through


@overload
def page_json(access: SourceAccess, *, page: int, page_size: int, cached_only: Literal[False] = False) -> JSONPage: ...


@overload
def page_json(access: SourceAccess, *, page: int, page_size: int, cached_only: bool) -> JSONPage | None: ...


def page_json(access: SourceAccess, *, page: int, page_size: int, cached_only: bool = False) -> JSONPage | None:
    """`read_page` rendered as JSON, kept per (version, filter, page, page size).

    Rendering 100 rows costs ~50 us, more than everything else in a request; a BI tool or
    script re-reads the same pages. With `cached_only` it answers from memory or not at all
    (None): no I/O, so an async endpoint can call it on the event loop.
    """
    version, row_filter = _opened(access)
    _check_page(page, page_size)
    if access.source is not None and access.source.is_live:
        if cached_only:
            return None  # a live page is read on the source database, never kept
        rows, total = read_page(access, page=page, page_size=page_size)
        return JSONPage(jsonfmt.dumps(rows), len(rows), total)
    key = (version.id, row_filter.cache_key(), page, page_size)
    hit = _pages.get(key)
    if hit is not None:
        return hit
    if not cached_only:
        rows, total = _read_page(version, row_filter, page=page, page_size=page_size)
    elif row_filter.deny_all or not version.parts:
        rows, total = [], 0
    else:
        table = _cache.get((version.id, row_filter.cache_key()))
        if table is None:
            return None
        rows, total = _page_of(table, (page - 1) * page_size, page_size)
    rendered = JSONPage(jsonfmt.dumps(rows), len(rows), total)
    _pages.put(key, rendered, size=len(rendered.rows) + 256)
    return rendered


def _page_of(table: pa.Table, offset: int, page_size: int) -> tuple[list[dict[str, Any]], int]:
    total = table.num_rows
    if offset >= total:
        return [], total
    return rows_of(table.slice(offset, page_size)), total


_counts: LRUCache[_Key, int] = LRUCache(65_536, name="row counts")


def count(access: SourceAccess) -> int:
    """How many rows the caller's filter lets through."""
    version, row_filter = _opened(access)
    target = _live(access)
    if target is not None:
        return live.count(target, row_filter)
    return _count(version, row_filter)


def count_if_reachable(access: SourceAccess) -> int | None:
    """`count`, or None when a live source's database cannot answer now (503/504): for
    listings and source details, which should not fail because one source is down."""
    try:
        return count(access)
    except (ServiceUnavailable, UpstreamTimeout):
        if access.source is not None and access.source.is_live:
            return None
        raise


def _count(version: SourceVersion, row_filter: RowFilter) -> int:
    _check_filter(row_filter)
    table = _filtered(version, row_filter)
    if table is not None:
        rows: int = table.num_rows
        return rows
    key = (version.id, row_filter.cache_key())
    known = _counts.get(key)
    if known is not None:
        return known
    compiled = compile_filter(version, row_filter)
    if compiled is _DENY:  # _filtered answers a denying filter from memory; kept fail-closed
        return 0
    where, params = compiled
    return _counts.put(key, _sql_count(version, where, params))


def _batches(version: SourceVersion, row_filter: RowFilter, batch_rows: int) -> Iterator[pa.RecordBatch]:
    compiled = compile_filter(version, row_filter)
    if compiled is _DENY or not version.parts:
        return
    key = (version.id, row_filter.cache_key())
    table = _cache.get(key)
    if table is not None:
        yield from table.to_batches(max_chunksize=batch_rows)
        return
    where, params = compiled
    schema = ingest.schema_for(_visible_columns(version, row_filter))
    cursor = _connection().cursor()
    try:
        with _parts(version) as paths:  # held while the stream lasts: DuckDB opens files as it goes
            sql = _parquet_sql(version, row_filter, where)
            reader = cursor.sql(sql, params=[paths, *params]).to_arrow_reader(batch_rows)
            for batch in reader:
                yield _conformed(batch, schema)
    finally:
        cursor.close()


def stream_csv(access: SourceAccess, *, batch_rows: int = 65_536, raw: bool = False) -> Iterator[bytes]:
    """The filtered rows as CSV (header first), in chunks, never all in memory at once.

    Text cells (and column names) a spreadsheet would run as formulas get a leading quote
    (`spreadsheet.neutralize_batch`); `raw` writes them verbatim, for scripts.
    """
    version, row_filter = _opened(access)
    compile_filter(version, row_filter)
    columns = _visible_columns(version, row_filter)
    return _csv_chunks(columns, _rows_of(access, version, row_filter, batch_rows), raw)


def _rows_of(
    access: SourceAccess, version: SourceVersion, row_filter: RowFilter, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The filtered rows in batches: from the source database for a live source, else here."""
    target = _live(access)
    if target is None:
        return _batches(version, row_filter, batch_rows)
    schema = ingest.schema_for(_visible_columns(version, row_filter))
    return (_conformed(b, schema) for b in live.batches(target, row_filter, batch_rows))


def _conformed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if not schema.names:  # every column hidden (the projection selected a placeholder)
        return batch.select([])
    return batch if batch.schema == schema else batch.cast(schema)


def _csv_chunks(columns: list[dict[str, Any]], batches: Iterator[pa.RecordBatch], raw: bool) -> Iterator[bytes]:
    schema = ingest.schema_for(columns)
    if not raw:
        schema = spreadsheet.neutralize_schema(schema)
    sink = io.BytesIO()
    writer = pacsv.CSVWriter(sink, schema)
    try:
        wrote = False
        for batch in batches:
            writer.write_batch(batch if raw else spreadsheet.neutralize_batch(batch, schema))
            wrote = True
            if chunk := _drain(sink):
                yield chunk
        if not wrote:
            writer.write_table(schema.empty_table())
    finally:
        writer.close()
    if rest := _drain(sink):
        yield rest


def _drain(sink: io.BytesIO) -> bytes:
    """What a writer has put in `sink` so far, leaving it empty."""
    chunk = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return chunk


def stream_parquet(access: SourceAccess, *, batch_rows: int = 131_072) -> Iterator[bytes]:
    """The filtered rows as one Parquet file, emitted row group by row group."""
    version, row_filter = _opened(access)
    compile_filter(version, row_filter)
    columns = _visible_columns(version, row_filter)
    return _parquet_chunks(columns, _rows_of(access, version, row_filter, batch_rows), batch_rows)


def _parquet_chunks(
    columns: list[dict[str, Any]], batches: Iterator[pa.RecordBatch], batch_rows: int
) -> Iterator[bytes]:
    schema = ingest.schema_for(columns)
    sink = io.BytesIO()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        for batch in batches:
            writer.write_batch(batch, row_group_size=batch_rows)
            if chunk := _drain(sink):
                yield chunk
    finally:
        writer.close()
    if rest := _drain(sink):
        yield rest


def distinct_values(access: SourceAccess, column: str, limit: int) -> list[str]:
    """Distinct non-null values of `column` among the filtered rows, as the text the row
    filter compares against (`CAST(col AS VARCHAR)`), sorted, at most `limit`. A hidden
    column is unknown; a masked column's values are its masks."""
    version, row_filter = _opened(access)
    if column not in access.columns:
        raise InvalidRequest("unknown_column", f'Column "{column}" does not exist in this source.')
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_DISTINCT_LIMIT:
        raise InvalidRequest("invalid_limit", f"limit must be an integer from 1 to {MAX_DISTINCT_LIMIT:,}.")
    target = _live(access)
    if target is not None:
        return live.distinct_values(target, row_filter, column, limit)
    compiled = compile_filter(version, row_filter)
    if compiled is _DENY or not version.parts:
        return []
    q = quote_ident(column)
    table = _filtered(version, row_filter)
    cursor = _connection().cursor()
    try:
        if table is not None:
            cursor.register("__filtered", table)
            sql = f"SELECT DISTINCT CAST({q} AS VARCHAR) AS v FROM __filtered WHERE {q} IS NOT NULL ORDER BY v LIMIT ?"
            rows = cursor.sql(sql, params=[limit]).fetchall()
        else:
            where, params = compiled
            projected = _parquet_sql(version, row_filter, where)  # over the projection: masks, not values
            sql = (
                f"SELECT DISTINCT CAST({q} AS VARCHAR) AS v FROM ({projected}) WHERE {q} IS NOT NULL ORDER BY v LIMIT ?"
            )
            with _parts(version) as paths:
                rows = cursor.sql(sql, params=[paths, *params, limit]).fetchall()
    finally:
        cursor.close()
    return [row[0] for row in rows]


def filtered_table(access: SourceAccess) -> pa.Table:
    """Every row of the source the caller may read, as Arrow (the caller's filter applied;
    cached while small enough). For a project's step: its sources' rows, read as the reader."""
    version, row_filter = _opened(access)
    target = _live(access)
    if target is not None:
        return live.table(target, row_filter)
    table = _filtered(version, row_filter, force=True)
    assert table is not None  # forced: always built
    return table


def run_query(
    access: SourceAccess,
    sql: str,
    *,
    page: int,
    page_size: int,
    budget: sandbox.Budget | None = None,
    execute: sandbox.Execute = sandbox.execute,
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Read-only SQL over `data` = this version's rows ALREADY filtered for the caller.

    Returns (rows of the page, total rows of the query's result, result column names).
    The query is validated (sandbox.validate_query, querycost.check) before anything is
    read or run. `budget`: its deadline and result sizes (default: the sandbox's timeout);
    `execute`: what runs it on those rows (a query pool's worker process; default: here).
    """
    version, row_filter = _opened(access)
    _check_page(page, page_size)
    budget = budget or sandbox.Budget.starting_now()
    target = _live(access)
    if target is not None:  # runs on the source database, transpiled and wrapped (data/live.py)
        return live.run_query(
            target, row_filter, sql, page=page, page_size=page_size, timeout=max(budget.remaining(), 0.1)
        )
    query = sandbox.validate_query(sql)
    parser = _connection().cursor()  # only parses the text
    try:
        querycost.check(parser, query.sql)
    finally:
        parser.close()
    table = _filtered(version, row_filter, force=True)
    budget.check_time()
    return execute(query, table, page=page, page_size=page_size, budget=budget)
