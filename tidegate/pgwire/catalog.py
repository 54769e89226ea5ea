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
from tidegate.pgwire.sqltext import OVERLAY_CATALOG

SERVER_VERSION = "16.0"
VERSION_TEXT = f"PostgreSQL {SERVER_VERSION} (tidegate {__version__}, governed read-only access)"
# What `SHOW` and pg_settings answer (application_name is the connection's own).
SETTINGS = {
    "server_version": SERVER_VERSION,
    "server_version_num": "160000",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "datestyle": "ISO, MDY",
    "timezone": "UTC",
    "standard_conforming_strings": "on",
    "transaction_isolation": "read committed",
    "default_transaction_isolation": "read committed",
    "transaction_read_only": "on",
    "default_transaction_read_only": "on",
    "search_path": "public",
    "max_identifier_length": "63",
    "integer_datetimes": "on",
    "lc_collate": "C",
    "lc_ctype": "C",
}
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
    "CREATE OR REPLACE MACRO pg_get_expr(a, b) AS NULL, (a, b, c) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_function_result(id) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_function_arguments(id) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_function_identity_arguments(id) AS NULL",
    "CREATE OR REPLACE MACRO pg_function_is_visible(id) AS true",
    "CREATE OR REPLACE MACRO pg_get_indexdef(a) AS NULL, (a, b, c) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_constraintdef(a) AS NULL, (a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_statisticsobjdef_columns(id) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_triggerdef(a) AS NULL, (a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_ruledef(a) AS NULL, (a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_get_partkeydef(a) AS NULL",
    "CREATE OR REPLACE MACRO pg_relation_is_publishable(a) AS false",
    "CREATE OR REPLACE MACRO array_upper(a, d) AS len(a)",
    "CREATE OR REPLACE MACRO _pg_expandarray(a) AS {'x': a[1], 'n': 1}",  # (JDBC getPrimaryKeys)
    "CREATE OR REPLACE MACRO tidegate_json_build_object"
    + ", ".join(
        "({}) AS json_object({})".format(
            ", ".join(f"a{i}" for i in range(n)),
            ", ".join(f"CAST(a{i} AS VARCHAR)" if i % 2 == 0 else f"a{i}" for i in range(n)),
        )
        for n in range(0, 17, 2)
    ),
    "CREATE OR REPLACE MACRO array_lower(a, d) AS 1",
    "CREATE OR REPLACE MACRO pg_get_serial_sequence(a, b) AS NULL",
    "CREATE OR REPLACE MACRO pg_relation_size(a) AS 0",
    "CREATE OR REPLACE MACRO pg_total_relation_size(a) AS 0",
    "CREATE OR REPLACE MACRO pg_table_size(a) AS 0",
    "CREATE OR REPLACE MACRO pg_backend_pid() AS 1",
    "CREATE OR REPLACE MACRO to_regtype(name) AS CAST(NULL AS INTEGER)",
    "CREATE OR REPLACE MACRO to_regclass(name) AS CAST(NULL AS INTEGER)",
    "CREATE OR REPLACE MACRO inet_server_addr() AS NULL",
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _is_value_function(node: exp.Expression) -> bool:
    """`unnest(array)`, `generate_series(a, b)` in FROM (psql's `\\d`): table functions over
    values, reading nothing (bounded by the memory limit and the statement timeout)."""
    if isinstance(node, exp.Dot):
        node = node.expression
    if isinstance(node, (exp.Unnest, exp.GenerateSeries)):
        return True
    return isinstance(node, exp.Anonymous) and node.name.lower() in ("unnest", "generate_series")


def check_query(sql: str) -> None:
    """One SELECT (sqlglot's reading): refused as invalid_query otherwise."""
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise InvalidRequest("invalid_query", f"The query could not be parsed: {str(exc).splitlines()[0]}") from None
    if len(trees) != 1 or not isinstance(trees[0], _ROOTS):
        raise InvalidRequest("invalid_query", "Only one SELECT statement at a time is allowed.")
    for table in trees[0].find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) and not _is_value_function(table.this):
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
    names = " ".join(f"WHEN {oid} THEN {_literal(name)}" for oid, name in pgtypes.NAMES.items())
    connection.execute(f"CREATE OR REPLACE MACRO format_type(oid, typmod) AS CASE oid {names} ELSE 'unknown' END")
    for table, columns in tables:
        spec = ", ".join(f"{_quote(c)} {pgtypes.duckdb_type(oid)}" for c, oid in columns) or '"?column?" VARCHAR'
        connection.execute(f"CREATE TABLE public.{_quote(table)} ({spec})")
    _overlay(connection, database)
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


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Catalog relations DuckDB lacks, that psql's `\\d` reads: empty (none of it exists here).
_EMPTY = {
    "pg_opclass": "0 AS oid, 0 AS opcmethod, '' AS opcname, 0 AS opcnamespace, 0 AS opcowner, 0 AS opcfamily, "
    "0 AS opcintype, true AS opcdefault, 0 AS opckeytype",
    "pg_index": "0 AS indexrelid, 0 AS indrelid, 0 AS indnatts, 0 AS indnkeyatts, false AS indisunique, "
    "false AS indnullsnotdistinct, false AS indisprimary, false AS indisexclusion, true AS indimmediate, "
    "false AS indisclustered, true AS indisvalid, false AS indcheckxmin, true AS indisready, true AS indislive, "
    "false AS indisreplident, [0] AS indkey, [0] AS indcollation, [0] AS indclass, [0] AS indoption, "
    "'' AS indexprs, '' AS indpred",
    "pg_constraint": "0 AS oid, '' AS conname, 0 AS connamespace, '' AS contype, false AS condeferrable, "
    "false AS condeferred, true AS convalidated, 0 AS conrelid, 0 AS contypid, 0 AS conindid, "
    "0 AS conparentid, 0 AS confrelid, '' AS confupdtype, '' AS confdeltype, '' AS confmatchtype, "
    "true AS conislocal, 0 AS coninhcount, false AS connoinherit, [0] AS conkey, [0] AS confkey, "
    "[0] AS conpfeqop, [0] AS conppeqop, [0] AS conffeqop, [0] AS conexclop, '' AS conbin",
    "pg_attrdef": "0 AS oid, 0 AS adrelid, 0 AS adnum, '' AS adbin",
    "pg_description": "0 AS objoid, 0 AS classoid, 0 AS objsubid, '' AS description",
    "pg_sequence": "0 AS seqrelid, 0 AS seqtypid, 0 AS seqstart, 0 AS seqincrement, 0 AS seqmax, 0 AS seqmin, "
    "0 AS seqcache, false AS seqcycle",
    "pg_collation": "0 AS oid, '' AS collname, 0 AS collnamespace, 0 AS collowner, '' AS collprovider, "
    "true AS collisdeterministic, 0 AS collencoding, '' AS collcollate, '' AS collctype",
    "pg_policy": "'' AS polname, true AS polpermissive, [0] AS polroles, '' AS polqual, '' AS polwithcheck, "
    "'' AS polcmd, 0 AS polrelid, 0 AS oid",
    "pg_statistic_ext": "0 AS oid, 0 AS stxrelid, '' AS stxname, 0 AS stxnamespace, 0 AS stxowner, "
    "-1 AS stxstattarget, [0] AS stxkeys, [''] AS stxkind, '' AS stxexprs",
    "pg_publication": "0 AS oid, '' AS pubname, 0 AS pubowner, false AS puballtables, false AS pubinsert, "
    "false AS pubupdate, false AS pubdelete, false AS pubtruncate, false AS pubviaroot",
    "pg_publication_rel": "0 AS oid, 0 AS prpubid, 0 AS prrelid, '' AS prqual, [0] AS prattrs",
    "pg_publication_namespace": "0 AS oid, 0 AS pnpubid, 0 AS pnnspid",
    "pg_inherits": "0 AS inhrelid, 0 AS inhparent, 0 AS inhseqno, false AS inhdetachpending",
    "pg_trigger": "0 AS oid, 0 AS tgrelid, 0 AS tgparentid, '' AS tgname, 0 AS tgfoid, 0 AS tgtype, "
    "'' AS tgenabled, false AS tgisinternal, 0 AS tgconstrrelid, 0 AS tgconstrindid, 0 AS tgconstraint",
    "pg_rewrite": "0 AS oid, '' AS rulename, 0 AS ev_class, '' AS ev_type, '' AS ev_enabled, false AS is_instead",
    "pg_partitioned_table": "0 AS partrelid, '' AS partstrat, 0 AS partnatts, 0 AS partdefid",
    "pg_foreign_table": "0 AS ftrelid, 0 AS ftserver, [''] AS ftoptions",
    "pg_extension": "0 AS oid, '' AS extname, 0 AS extowner, 0 AS extnamespace, false AS extrelocatable, "
    "'' AS extversion",
    "pg_event_trigger": "0 AS oid, '' AS evtname, '' AS evtevent, 0 AS evtowner, 0 AS evtfoid, '' AS evtenabled",
}


# information_schema.columns' data_type / udt_name as PostgreSQL names them, by DuckDB's name.
_INFO_TYPES = {
    "VARCHAR": ("text", "text"), "BIGINT": ("bigint", "int8"), "INTEGER": ("integer", "int4"),
    "SMALLINT": ("smallint", "int2"), "DOUBLE": ("double precision", "float8"), "FLOAT": ("real", "float4"),
    "BOOLEAN": ("boolean", "bool"), "DATE": ("date", "date"), "TIME": ("time without time zone", "time"),
    "TIMESTAMP": ("timestamp without time zone", "timestamp"),
    "TIMESTAMP WITH TIME ZONE": ("timestamp with time zone", "timestamptz"), "BLOB": ("bytea", "bytea"),
    "INTERVAL": ("interval", "interval"), "UUID": ("uuid", "uuid"), "JSON": ("json", "json"),
}  # fmt: skip


def _overlay_views(database: str) -> dict[str, str]:
    """`schema.name` in OVERLAY_CATALOG -> its query: the catalog relations clients read,
    with the columns DuckDB's emulation lacks, listing only schema public of `database`."""
    db = _literal(database)
    ours = f"{OVERLAY_CATALOG}.pg"
    public = f"(SELECT oid FROM duckdb_schemas() WHERE database_name = {db} AND schema_name = 'public')"
    pg_catalog = "(SELECT oid FROM duckdb_schemas() WHERE database_name = 'system' AND schema_name = 'pg_catalog')"
    settings = " UNION ALL ".join(
        f"SELECT {_literal(k)} AS name, {_literal(v)} AS setting, '' AS short_desc, 'string' AS vartype, "
        "'' AS unit, 'user' AS context, 'default' AS source"
        for k, v in SETTINGS.items()
    )
    types = " ".join(f"WHEN {_literal(d)} THEN {_literal(p)}" for d, (p, _) in _INFO_TYPES.items())
    udts = " ".join(f"WHEN {_literal(d)} THEN {_literal(u)}" for d, (_, u) in _INFO_TYPES.items())
    return {
        "pg.pg_namespace": f"""
            SELECT oid, schema_name AS nspname, 10 AS nspowner, CAST(NULL AS VARCHAR[]) AS nspacl
            FROM duckdb_schemas()
            WHERE (database_name = {db} AND schema_name = 'public')
               OR (database_name = 'system' AND schema_name IN ('pg_catalog', 'information_schema'))""",
        "pg.pg_class": f"""
            SELECT * REPLACE (CAST(NULL AS VARCHAR[]) AS reloptions, 'd' AS relreplident, 10 AS relowner, 0 AS relam,
                              CAST(NULL AS VARCHAR[]) AS relacl, CAST(NULL AS VARCHAR) AS relpartbound),
                   false AS relforcerowsecurity
            FROM system.pg_catalog.pg_class WHERE relnamespace = {public}""",
        "pg.pg_attribute": f"""
            SELECT a.* REPLACE (CASE a.atttypid WHEN 1043 THEN 25 ELSE a.atttypid END AS atttypid,
                                CAST(t.typlen AS SMALLINT) AS attlen, 'p' AS attstorage, 'i' AS attalign,
                                '' AS attcompression, CAST(NULL AS VARCHAR[]) AS attacl,
                                CAST(NULL AS VARCHAR[]) AS attoptions, CAST(NULL AS VARCHAR[]) AS attfdwoptions,
                                CAST(NULL AS VARCHAR) AS attmissingval)
            FROM system.pg_catalog.pg_attribute a LEFT JOIN system.pg_catalog.pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid IN (SELECT oid FROM {ours}.pg_class)""",
        "pg.pg_database": f"""
            SELECT database_oid AS oid, database_name AS datname, 10 AS datdba, 6 AS encoding,
                   'c' AS datlocprovider, false AS datistemplate, true AS datallowconn, -1 AS datconnlimit,
                   0 AS dattablespace, 'C' AS datcollate, 'C' AS datctype, CAST(NULL AS VARCHAR) AS daticulocale,
                   CAST(NULL AS VARCHAR) AS daticurules, CAST(NULL AS VARCHAR) AS datcollversion,
                   CAST(NULL AS VARCHAR[]) AS datacl
            FROM duckdb_databases() WHERE database_name = {db}""",
        "pg.pg_type": f"""
            SELECT * REPLACE ({pg_catalog} AS typnamespace, coalesce(typrelid, 0) AS typrelid,
                              coalesce(typbasetype, 0) AS typbasetype, coalesce(typtypmod, -1) AS typtypmod,
                              coalesce(typnotnull, false) AS typnotnull, coalesce(typelem, 0) AS typelem)
            FROM (SELECT * FROM system.pg_catalog.pg_type
                  UNION ALL BY NAME SELECT 25 AS oid, 'text' AS typname, -1 AS typlen, 'b' AS typtype,
                                           'S' AS typcategory
                  UNION ALL BY NAME SELECT 114 AS oid, 'json' AS typname, -1 AS typlen, 'b' AS typtype,
                                           'U' AS typcategory)""",
        "pg.pg_proc": "SELECT * FROM system.pg_catalog.pg_proc WHERE false",
        "pg.pg_tables": "SELECT * FROM system.pg_catalog.pg_tables WHERE schemaname = 'public'",
        "pg.pg_views": "SELECT * FROM system.pg_catalog.pg_views WHERE schemaname = 'public'",
        "pg.pg_settings": settings,
        **{f"pg.{name}": f"SELECT {columns} WHERE false" for name, columns in _EMPTY.items()},
        "pg.pg_roles": """
            SELECT 10 AS oid, 'tidegate' AS rolname, false AS rolsuper, true AS rolinherit,
                   false AS rolcreaterole, false AS rolcreatedb, true AS rolcanlogin, false AS rolreplication,
                   -1 AS rolconnlimit, CAST(NULL AS TIMESTAMP) AS rolvaliduntil, false AS rolbypassrls,
                   CAST(NULL AS VARCHAR[]) AS rolconfig""",
        "pg.pg_user": """
            SELECT 'tidegate' AS usename, 10 AS usesysid, false AS usecreatedb, false AS usesuper,
                   false AS userepl, false AS usebypassrls, CAST(NULL AS TIMESTAMP) AS valuntil,
                   CAST(NULL AS VARCHAR[]) AS useconfig""",
        "info.tables": f"""
            SELECT * FROM system.information_schema.tables
            WHERE table_catalog = {db} AND table_schema = 'public'""",
        "info.columns": f"""
            SELECT * REPLACE (CASE data_type {types} ELSE lower(data_type) END AS data_type,
                              CASE data_type {udts} ELSE lower(data_type) END AS udt_name)
            FROM system.information_schema.columns
            WHERE table_catalog = {db} AND table_schema = 'public'""",
        "info.schemata": f"""
            SELECT * REPLACE ('tidegate' AS schema_owner) FROM system.information_schema.schemata
            WHERE catalog_name = {db} AND schema_name = 'public'""",
        "info.views": f"""
            SELECT * FROM system.information_schema.views
            WHERE table_catalog = {db} AND table_schema = 'public'""",
    }


def _overlay(connection: duckdb.DuckDBPyConnection, database: str) -> None:
    connection.execute(f"ATTACH ':memory:' AS {OVERLAY_CATALOG}")
    connection.execute(f"CREATE SCHEMA {OVERLAY_CATALOG}.pg")
    connection.execute(f"CREATE SCHEMA {OVERLAY_CATALOG}.info")
    for name, query in _overlay_views(database).items():
        connection.execute(f"CREATE VIEW {OVERLAY_CATALOG}.{name} AS {query}")
