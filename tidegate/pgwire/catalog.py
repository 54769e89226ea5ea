"""pg_catalog and information_schema for schema browsers, listing only the key's tables.

A query that reads no table of the key (catalog queries, `SELECT version()`, `SELECT 1`)
runs on a DuckDB connection of its own, built for that statement, that holds nothing but
EMPTY tables named and typed as the key's tables (schema `public` of a database named as
the organization): DuckDB's own PostgreSQL catalog emulation then answers about exactly
those. No rows of any source ever reach this connection, and it has no file, network or
extension access, a memory limit and a locked configuration; like a data query it must be
one SELECT, and it is interrupted at the statement timeout or on cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from tidegate import __version__
from tidegate.data import sandbox
from tidegate.errors import InvalidRequest
from tidegate.pgwire import pgtypes

SERVER_VERSION = "16.0"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (tidegate {__version__}, governed read-only access)"
_MEMORY_LIMIT = "128MB"
# Not for clients: the engine's own introspection, settings and files (none hold data here,
# but they describe the server).
_REFUSED_PREFIXES = ("duckdb_", "pragma_", "read_", "glob", "which_")
_REFUSED_FUNCTIONS = frozenset({"current_setting", "getenv", "query", "query_table", "sniff_csv", "parquet_scan"})
_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)

# Functions PostgreSQL clients call that DuckDB lacks or answers differently.
_MACROS = (
    "CREATE OR REPLACE MACRO pg_get_userbyid(id) AS 'tidegate'",
    "CREATE OR REPLACE MACRO pg_table_is_visible(id) AS true",
    "CREATE OR REPLACE MACRO pg_type_is_visible(id) AS true",
    "CREATE OR REPLACE MACRO pg_encoding_to_char(id) AS 'UTF8'",
    "CREATE OR REPLACE MACRO has_table_privilege(a, b) AS true",
    "CREATE OR REPLACE MACRO has_schema_privilege(a, b) AS true",
    "CREATE OR REPLACE MACRO obj_description(a, b) AS NULL",
    "CREATE OR REPLACE MACRO col_description(a, b) AS NULL",
    "CREATE OR REPLACE MACRO shobj_description(a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_expr(a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_backend_pid() AS 1",
    "CREATE OR REPLACE MACRO to_regtype(name) AS CAST(NULL AS INTEGER)",
    "CREATE OR REPLACE MACRO to_regclass(name) AS CAST(NULL AS INTEGER)",
    "CREATE OR REPLACE MACRO inet_server_addr() AS NULL",
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_query(sql: str) -> None:
    """One SELECT (sqlglot's reading): refused as invalid_query otherwise."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise InvalidRequest("invalid_query", f"The query could not be parsed: {str(exc).splitlines()[0]}") from None
    if len(trees) != 1 or not isinstance(trees[0], _ROOTS):
        raise InvalidRequest("invalid_query", "Only one SELECT statement at a time is allowed.")
    for table in trees[0].find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise InvalidRequest("invalid_query", "Table functions are not allowed; read tables by name.")
    for func in trees[0].find_all(exp.Func):
        name = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
        if name.startswith(_REFUSED_PREFIXES) or name in _REFUSED_FUNCTIONS:
            raise InvalidRequest("invalid_query", f"The function {name}() is not allowed.")


def build(database: str, tables: Sequence[tuple[str, Sequence[tuple[str, int]]]]) -> duckdb.DuckDBPyConnection:
    """A connection holding only empty tables `public.<name>` of `database`."""
    connection = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "memory_limit": _MEMORY_LIMIT,
            "threads": 1,
        },
    )
    connection.execute("SET enable_progress_bar = false")
    name = _quote(database)
    connection.execute(f"ATTACH ':memory:' AS {name}")
    connection.execute(f"USE {name}")
    connection.execute("CREATE SCHEMA public")
    connection.execute("USE " + name + ".public")
    for macro in _MACROS:
        connection.execute(macro)
    connection.execute(f"CREATE MACRO version() AS '{VERSION_TEXT}'")
    for table, columns in tables:
        spec = ", ".join(f"{_quote(c)} {pgtypes.duckdb_type(oid)}" for c, oid in columns) or '"?column?" VARCHAR'
        connection.execute(f"CREATE TABLE public.{_quote(table)} ({spec})")
    connection.execute("SET lock_configuration = true")
    return connection


def run(
    connection: duckdb.DuckDBPyConnection, sql: str, *, budget: sandbox.Budget, cancel: threading.Event | None
) -> pa.Table:
    check_query(sql)
    done = threading.Event()
    watcher = threading.Thread(target=sandbox._watch, args=(connection, budget, cancel, done), daemon=True)
    watcher.start()
    try:
        relation = connection.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.InterruptException:
        if cancel is not None and cancel.is_set():
            raise sandbox.cancelled() from None
        raise budget.timed_out() from None
    except duckdb.Error as exc:
        message = sandbox.public_message(str(exc).split("\n")[0])[:400]
        raise InvalidRequest("invalid_query", f"The query failed: {message}") from None
    finally:
        done.set()
        connection.close()
