"""Read-only SQL over one relation, `data`: the caller's rows, already filtered.

A query is accepted only if two independent parsers agree that it is harmless:

1. sqlglot (duckdb dialect): exactly one statement, a SELECT (CTEs, joins, unions allowed);
   tables only `data` or the query's own CTE names as DuckDB scopes them (a CTE's body does
   not see itself: `WITH pg_settings AS (SELECT * FROM pg_settings)` names the catalog
   view, and is refused), never qualified; no table functions, no
   SELECT INTO, no parameters, no DESCRIBE/SUMMARIZE/PRAGMA/..., and every function on
   `ALLOWED_FUNCTIONS`.
2. DuckDB's own parser (`json_serialize_sql`, which parses without running) on the exact
   text that will run: the same rules, checked on the tree DuckDB will execute, so a
   difference between the two parsers cannot smuggle anything through.

Only then does it run, on a DuckDB connection that has no file, network or extension access
(`enable_external_access=false`, autoload/autoinstall off), a memory limit, few threads
and a locked configuration, where every built-in catalog view and catalog table function is
shadowed by an empty one (`_hide_catalog`); DuckDB messages reach the caller without server
paths (`public_message`); `data` is the filtered Arrow table registered on a per-query
cursor (invisible to other cursors); a timer interrupts it after `timeout` seconds.

Any refusal is InvalidRequest `invalid_query` (or, while running, `query_timeout` /
`query_too_large`, and `result_too_large` / `value_too_large` as the page is read) and nothing
has run or nothing is returned.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from tidegate.data import querycost
from tidegate.errors import InvalidRequest

MAX_SQL_LENGTH = 10_000
RELATION = "data"
_WRAP_ALIAS = "__tidegate_q"

_AGGREGATES = """
any_value approx_count_distinct approx_quantile arbitrary arg_max arg_min argmax argmin max_by min_by
array_agg avg mean bit_and bit_or bit_xor bool_and bool_or corr count count_star count_if countif
covar_pop covar_samp entropy favg first last fsum sumkahan kahan_sum geomean geometric_mean
group_concat histogram kurtosis kurtosis_pop list listagg mad max min median mode product quantile
quantile_cont quantile_disc regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx
regr_sxy regr_syy sem skewness stddev stddev_pop stddev_samp string_agg sum var_pop var_samp variance
weighted_avg wavg grouping grouping_id
"""
_WINDOW = "row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value"
_CONDITIONAL = "coalesce ifnull nullif if greatest least"
_STRING = """
ascii bit_length char_length character_length chr concat concat_ws contains ends_with suffix starts_with
prefix format printf hamming mismatches instr position strpos jaccard jaro_similarity
jaro_winkler_similarity damerau_levenshtein levenshtein editdist3 lcase lower ucase upper left right
left_grapheme right_grapheme len length length_grapheme strlen octet_length lpad rpad ltrim rtrim trim
md5 md5_number sha1 sha256 hash nfc_normalize regexp_extract regexp_extract_all regexp_full_match
regexp_matches regexp_replace regexp_split_to_array regexp_escape replace reverse split split_part
str_split string_split string_split_regex str_split_regex string_to_array strip_accents substr substring
substring_grapheme translate unicode ord to_base64 base64 from_base64 to_hex hex unhex from_hex
url_encode url_decode like_escape ilike_escape not_like_escape not_ilike_escape array_to_string
format_bytes
"""
_MATH = """
abs acos acosh asin asinh atan atan2 atanh cbrt ceil ceiling cos cosh cot degrees radians even exp
factorial floor fmod gamma lgamma gcd lcm greatest_common_divisor least_common_multiple isfinite isinf
isnan ln log log10 log2 mod pi pow power random round round_even roundbankers sign signbit sin sinh
sqrt tan tanh trunc xor bit_count divide add subtract multiply nextafter
"""
_DATETIME = """
age century current_date current_localtime current_localtimestamp date_add date_diff datediff date_part
datepart date_sub datesub date_trunc datetrunc day dayname dayofmonth dayofweek dayofyear decade epoch
epoch_ms epoch_ns epoch_us era get_current_time get_current_timestamp hour isodow isoyear julian
last_day make_date make_time make_timestamp make_timestamptz microsecond millennium millisecond minute
month monthname nanosecond now quarter second strftime strptime time_bucket timezone timezone_hour
timezone_minute to_centuries to_days to_decades to_hours to_microseconds to_millennia to_milliseconds
to_minutes to_months to_quarters to_seconds to_timestamp to_weeks to_years today transaction_timestamp
try_strptime week weekday weekofyear year yearweek days_in_month current_timestamp
"""
_NESTED = """
list_value array_value list_extract list_element array_extract element_at list_contains list_has
array_contains array_has list_has_any list_has_all array_has_any array_has_all list_position
list_indexof array_position array_indexof list_slice array_slice list_sort array_sort list_reverse_sort
array_reverse_sort list_distinct array_distinct list_unique array_unique list_transform array_transform
list_apply array_apply apply list_filter array_filter filter list_concat list_cat array_concat array_cat
list_append list_prepend array_append array_prepend array_push_back array_push_front array_length
cardinality flatten list_zip array_zip unnest struct_pack struct_extract struct_insert row map
map_extract map_keys map_values map_entries map_from_entries map_contains list_sum list_avg list_min
list_max list_count list_first list_last list_median list_mode list_reduce array_reduce reduce
list_select array_select list_where array_where list_grade_up array_grade_up list_intersect
array_intersect list_reverse array_reverse list_string_agg list_product list_stddev_samp list_var_samp
"""
_JSON = """
json_extract json_extract_string json_extract_path json_extract_path_text json_value json_exists
json_valid json_array_length json_keys json_type json_contains json_structure json_object json_array
json_quote to_json json json_merge_patch row_to_json array_to_json json_pretty json_group_array
json_group_object from_json json_transform
"""
_MISC = "typeof uuid gen_random_uuid uuidv4 uuidv7 cast try_cast extract columns exists any all some try"

# Functions a query may call, by the name DuckDB sees. Everything else is refused, notably:
# read_*/glob/query/query_table/range/generate_series (table functions), getenv,
# current_setting, getvariable, current_schema(s)/current_database/version, duckdb_*/pragma_*,
# nextval/setval, setseed, sleep_ms/pg_sleep, repeat, json_*_sql (which parse or RUN SQL),
# aggregate/list_aggregate (call a function by its name), write_log, error.
ALLOWED_FUNCTIONS = frozenset(
    " ".join([_AGGREGATES, _WINDOW, _CONDITIONAL, _STRING, _MATH, _DATETIME, _NESTED, _JSON, _MISC]).split()
)

# sqlglot node types never allowed anywhere in the tree.
_FORBIDDEN_NODES: tuple[type, ...] = tuple(
    getattr(exp, name)
    for name in (
        "Into",
        "Command",
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "Copy",
        "Pragma",
        "Set",
        "Use",
        "Attach",
        "Detach",
        "Install",
        "Describe",
        "Summarize",
        "Show",
        "Transaction",
        "Commit",
        "Rollback",
        "Placeholder",
        "Parameter",
        "SessionParameter",
        "LoadData",
        "Kill",
        "Export",
        "Grant",
        "Revoke",
        "Cache",
        "Uncache",
        "Refresh",
        "Analyze",
        "Lateral",
        "TableFromRows",
        "Version",
        "HistoricalData",
    )
    if hasattr(exp, name)
)
_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)
_FIRST_WORD = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.S)
_FUNC_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_OPERATOR = re.compile(r"^[^A-Za-z0-9_\s]+$|^(IS (NOT )?DISTINCT FROM)$")
# DuckDB table-reference node types that may appear in a query.
_TABLE_REF_TYPES = {"BASE_TABLE", "SUBQUERY", "JOIN", "EXPRESSION_LIST", "PIVOT", "EMPTY", "EMPTY_FROM"}


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest("invalid_query", message)


class QueryRefused(InvalidRequest):
    """`invalid_query` for text that does not parse, with where the parser stopped
    (`where`: "at line L, column C" or "near position N"), when it knows."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__("invalid_query", message)
        self.where = where


class UnknownTable(InvalidRequest):
    """`invalid_query` for a table that is none of the readable relations nor a CTE in scope."""

    def __init__(self, message: str, table: str):
        super().__init__("invalid_query", message)
        self.table = table


@dataclass(frozen=True)
class Relations:
    """The tables a query may read by name (lower case), besides its own CTEs: `data` for
    /query, a project's sources and earlier steps for a step (`validate_query(relations=)`)."""

    names: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> Relations:
        return cls(frozenset(name.lower() for name in names))

    @property
    def single(self) -> bool:
        return self.names == frozenset({RELATION})

    def listing(self) -> str:
        return ", ".join(f'"{name}"' for name in sorted(self.names)) or "no table"

    def hint(self) -> str:
        return 'query the relation "data"' if self.single else f"read only {self.listing()} by name"

    def over(self) -> str:
        return ' over "data"' if self.single else ""

    def the_relations(self) -> str:
        return 'the relation "data"' if self.single else f"the tables {self.listing()}"


DATA_ONLY = Relations(frozenset({RELATION}))


# An absolute path of two or more segments (`/srv/tidegate/data`, `C:\\x\\y`): in a DuckDB
# message it names a file of this server, never the caller's concern.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:/[\w.~-]+){2,}/?|[A-Za-z]:\\[^\s'\"]+")


_server_home = ""  # Settings.home, handed over at start-up (configure_server_home)


def configure_server_home(home: str | os.PathLike[str]) -> None:
    global _server_home
    _server_home = str(home)


def _server_paths() -> list[str]:
    """Directories of this server a message must not reveal, longest first."""
    paths = {_server_home, os.getcwd(), tempfile.gettempdir(), sys.prefix, str(Path.home())}
    return sorted((p.rstrip("/") for p in paths if p and p.strip("/")), key=len, reverse=True)


def public_message(message: str) -> str:
    """A DuckDB message fit for the caller: no server path in it (issue 8 §5)."""
    for path in _server_paths():
        message = message.replace(path, "<server path>")
    return _ABSOLUTE_PATH.sub("<server path>", message)


@dataclass(frozen=True)
class ValidatedQuery:
    """A query both parsers accepted. `sql` is the user's text without trailing semicolons."""

    sql: str
    cte_names: frozenset[str]
    relations: frozenset[str] = frozenset({RELATION})  # the tables it was accepted to read

    def count_sql(self) -> str:
        return f"SELECT count(*) AS n FROM (\n{self.sql}\n) AS {_WRAP_ALIAS}"

    def page_sql(self, limit: int, offset: int) -> str:
        return f"SELECT * FROM (\n{self.sql}\n) AS {_WRAP_ALIAS} LIMIT {int(limit)} OFFSET {int(offset)}"


# ---------------------------------------------------------------------------------------
# Layer 1: sqlglot
# ---------------------------------------------------------------------------------------


def _func_name(node: exp.Func) -> str | None:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    try:
        rendered = node.sql(dialect="duckdb", comments=False)
    except Exception:  # noqa: BLE001 - a generator gap is a refusal, not a crash
        raise _refuse(f"Unsupported SQL construct: {node.key}.") from None
    match = _FUNC_NAME.match(rendered)
    return match.group(1).lower() if match else None  # syntax forms (CASE, CAST ...) checked by DuckDB


def _ctes_in_scope(node: exp.Expression) -> set[str]:
    """CTE names visible where `node` is, as DuckDB binds them.

    The main query of a WITH sees all its CTEs; a CTE's own body sees only those defined
    BEFORE it, never itself (so `WITH pg_settings AS (SELECT * FROM pg_settings)` reads the
    catalog view: that inner name is not a CTE, and is refused); only the recursive term
    (right of the UNION) of a WITH RECURSIVE CTE sees the CTE itself.
    """
    names: set[str] = set()
    path: list[exp.Expr | exp.Expression] = [node]
    current = node.parent
    while current is not None:
        with_clause = current.args.get("with_") or current.args.get("with")  # key name varies by version
        if isinstance(with_clause, exp.With):
            ctes = list(with_clause.expressions)
            index = next((i for i, c in enumerate(ctes) if len(path) >= 2 and c is path[-2]), None)
            if path[-1] is with_clause and index is not None:
                cte = ctes[index]
                names.update(c.alias_or_name.lower() for c in ctes[:index])
                body = cte.this
                if (
                    with_clause.args.get("recursive")
                    and isinstance(body, exp.Union)
                    and len(path) >= 4
                    and path[-3] is body
                    and path[-4] is body.expression
                ):
                    names.add(cte.alias_or_name.lower())
            else:
                names.update(cte.alias_or_name.lower() for cte in ctes)
        path.append(current)
        current = current.parent
    return names


def _parse_position(exc: sqlglot.errors.SqlglotError) -> str | None:
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    line, column = first.get("line"), first.get("col")
    return f"at line {line}, column {column}" if isinstance(line, int) and isinstance(column, int) else None


def _check_sqlglot(sql: str, relations: Relations = DATA_ONLY) -> frozenset[str]:
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise QueryRefused(f"Could not parse the query: {message[:300]}", _parse_position(exc)) from None
    if len(statements) != 1:
        raise _refuse("Exactly one SQL statement is allowed.")
    root = statements[0]
    if not isinstance(root, _ROOTS):
        first = _FIRST_WORD.match(sql)
        what = first.group(1).upper() if first else root.key.upper()
        raise _refuse(f"Only SELECT queries are allowed; this is {what}.")
    cte_names = frozenset(cte.alias_or_name.lower() for cte in root.find_all(exp.CTE))
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            if isinstance(node, (exp.Placeholder, exp.Parameter, exp.SessionParameter)):
                raise _refuse("Query parameters and session variables are not allowed.")
            if isinstance(node, exp.Into):
                raise _refuse("SELECT INTO is not allowed: queries are read-only.")
            raise _refuse(f"{node.key.upper()} is not allowed: only read-only SELECT queries{relations.over()}.")
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                if isinstance(node.this, exp.Func):
                    raise _refuse(f"Table functions are not allowed; {relations.hint()}.")
                raise _refuse(f"Only {relations.the_relations()} (and the query's own CTEs) can be queried.")
            if node.args.get("db") or node.args.get("catalog"):
                raise _refuse(
                    f'Qualified table names are not allowed ("{node.sql(dialect="duckdb")}"); {relations.hint()}.'
                )
            if node.name.lower() not in relations.names and node.name.lower() not in _ctes_in_scope(node):
                raise _unknown_table(node.name, relations)
        elif isinstance(node, exp.Unnest) and isinstance(node.parent, (exp.From, exp.Join)):
            raise _refuse(f"Table functions are not allowed; {relations.hint()}.")
        elif isinstance(node, exp.Func):
            if isinstance(node.parent, exp.Dot) and node.parent.expression is node:
                raise _refuse("Qualified function names are not allowed.")
            name = _func_name(node)
            if name is not None and name not in ALLOWED_FUNCTIONS:
                raise _refuse(f"Function {name}() is not allowed in queries.")
        elif isinstance(node, exp.Column) and (node.args.get("catalog") or node.args.get("db")):
            raise _refuse("Catalog- or schema-qualified column references are not allowed.")
    return cte_names


def _unknown_table(name: str, relations: Relations) -> UnknownTable:
    return UnknownTable(
        f'Unknown table "{name}": only {relations.listing()} (and the query\'s own CTEs) can be queried.', name
    )


# ---------------------------------------------------------------------------------------
# Layer 2: DuckDB's own parse tree of the exact text that will run
# ---------------------------------------------------------------------------------------


def _walk_duckdb(node: Any, scope: frozenset[str], relations: Relations = DATA_ONLY) -> None:
    """Check DuckDB's parse tree; `scope` = CTE names visible at this point."""
    if isinstance(node, list):
        for item in node:
            _walk_duckdb(item, scope, relations)
        return
    if not isinstance(node, dict):
        return
    done = {"cte_map"}
    cte_map = node.get("cte_map")
    if cte_map is not None:
        # Each CTE sees the ones before it, never itself (a self-reference binds to the
        # catalog); the node's own query sees them all.
        for entry in (cte_map.get("map") if isinstance(cte_map, dict) else None) or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise _refuse("Unsupported WITH clause.")
            _walk_duckdb(entry.get("value"), scope, relations)
            scope = scope | {entry["key"].lower()}
    if node.get("type") == "RECURSIVE_CTE_NODE":
        # Only the recursive term (right) reads the CTE itself; the anchor (left) would
        # read a catalog entry of the same name.
        _walk_duckdb(node.get("left"), scope, relations)
        _walk_duckdb(node.get("right"), scope | {str(node.get("cte_name") or "").lower()}, relations)
        done |= {"left", "right"}
    if node.get("class") == "PARAMETER":
        raise _refuse("Query parameters are not allowed.")
    if "function_name" in node:
        name = str(node.get("function_name") or "")
        if node.get("schema") or node.get("catalog"):
            raise _refuse("Qualified function names are not allowed.")
        if node.get("is_operator") is True:
            if not _OPERATOR.match(name):
                raise _refuse(f"Operator {name!r} is not allowed.")
        elif name.lower() not in ALLOWED_FUNCTIONS:
            raise _refuse(f"Function {name}() is not allowed in queries.")
    kind = node.get("type") if "class" not in node and isinstance(node.get("type"), str) else None
    if kind in ("TABLE_FUNCTION", "SHOW_REF"):
        raise _refuse(
            f"Table functions are not allowed; {relations.hint()}."
            if kind == "TABLE_FUNCTION"
            else "DESCRIBE, SUMMARIZE and SHOW are not allowed in queries."
        )
    if kind == "BASE_TABLE":
        if node.get("schema_name") or node.get("catalog_name"):
            raise _refuse(f"Qualified table names are not allowed; {relations.hint()}.")
        if node.get("at_clause"):
            raise _refuse("AT (time travel) clauses are not allowed.")
        table = str(node.get("table_name") or "").lower()
        if table not in relations.names and table not in scope:
            raise _unknown_table(str(node.get("table_name")), relations)
    elif kind is not None and "sample" in node and "modifiers" not in node and kind not in _TABLE_REF_TYPES:
        raise _refuse(f"{kind.replace('_', ' ').title()} is not allowed in queries.")
    for name, value in node.items():
        if name not in done and isinstance(value, (dict, list)):
            _walk_duckdb(value, scope, relations)


def _check_duckdb(cursor: duckdb.DuckDBPyConnection, sql: str, relations: Relations = DATA_ONLY) -> None:
    raw = cursor.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        message = public_message(str(tree.get("error_message") or "syntax error").splitlines()[0])
        if "Only SELECT statements" in message:
            raise _refuse("Only SELECT queries are allowed.")
        position = str(tree.get("position") or "")
        where = f"near position {int(position) + 1}" if position.isdigit() else None
        raise QueryRefused(f"Could not parse the query: {message[:300]}", where)
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise _refuse("Exactly one SQL statement is allowed.")
    _walk_duckdb(statements, frozenset(), relations)


# ---------------------------------------------------------------------------------------
# The locked-down connection
# ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_conn: tuple[int, tuple[str, int], duckdb.DuckDBPyConnection] | None = None


@dataclass
class _Options:
    """This process's defaults for connections opened here (see `configure`)."""

    memory_limit: str = "1GB"
    threads: int = 2
    timeout: float = 10.0


_options = _Options()


def configure(*, memory_limit: str | None = None, threads: int | None = None, timeout: float | None = None) -> None:
    global _conn
    with _lock:
        if memory_limit is not None:
            _options.memory_limit = memory_limit
        if threads is not None:
            _options.threads = int(threads)
        if timeout is not None:
            _options.timeout = float(timeout)
        _conn = None


def open_connection(*, memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A new locked-down database. Its memory limit is the ceiling of what runs on it: a
    query pool opens one per worker thread, so that each running query has its own."""
    connection = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
            "python_enable_replacements": False,
            "memory_limit": memory_limit or _options.memory_limit,
            "threads": threads or _options.threads,
        },
    )
    connection.execute("SET enable_progress_bar = false")  # not a connect option; nothing to print to
    connection.execute("SET lock_configuration = true")
    _hide_catalog(connection)
    return connection


def _connection() -> duckdb.DuckDBPyConnection:
    global _conn
    key = (_options.memory_limit, _options.threads)
    with _lock:
        if _conn is None or _conn[0] != os.getpid() or _conn[1] != key:
            _conn = (os.getpid(), key, open_connection())
        return _conn[2]


# Catalog table functions shadowed too (settings, secrets, files, memory, versions).
_CATALOG_FUNCTIONS = ("duckdb\\_%", "pragma\\_%", "which_secret")


def _hide_catalog(connection: duckdb.DuckDBPyConnection) -> None:
    """Defense in depth behind the parsers: an unqualified catalog name reads nothing.

    DuckDB resolves an unqualified name in `main` before its built-in schemas, so an empty
    view in `main` named after each built-in view (pg_settings, sqlite_master,
    duckdb_views ...) and an empty table macro named after each catalog table function
    (duckdb_settings() ...) leave a query that got past both parsers nothing to read but
    `data`. (`data` itself is a temporary view of the query's cursor, found first.)
    """
    views = connection.sql(
        "SELECT DISTINCT view_name FROM duckdb_views() WHERE internal AND schema_name IN ('main', 'pg_catalog')"
    ).fetchall()
    like = " OR ".join("function_name LIKE ? ESCAPE '\\'" for _ in _CATALOG_FUNCTIONS)
    functions = connection.sql(
        f"SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table' AND ({like})",
        params=list(_CATALOG_FUNCTIONS),
    ).fetchall()
    empty = "SELECT NULL::VARCHAR AS hidden WHERE false"
    for (name,) in views:
        connection.execute(f'CREATE VIEW main."{name.replace(chr(34), chr(34) * 2)}" AS {empty}')
    for (name,) in functions:
        connection.execute(f'CREATE MACRO main."{name.replace(chr(34), chr(34) * 2)}"() AS TABLE {empty}')


def _shifted(where: str | None, lead: str) -> str | None:
    """A parser position in the stripped text, as a position in the text as given."""
    if not where or not lead:
        return where
    if where.startswith("near position "):
        return f"near position {int(where.rsplit(' ', 1)[1]) + len(lead)}"
    line, column = (int(part.rsplit(" ", 1)[1]) for part in where.removeprefix("at ").split(", "))
    if line == 1:
        column += len(lead) - (lead.rfind("\n") + 1)
    return f"at line {line + lead.count(chr(10))}, column {column}"


def validate_query(sql: Any, relations: Relations = DATA_ONLY) -> ValidatedQuery:
    """Both parser checks; raises InvalidRequest(`invalid_query`) before anything runs.
    `relations`: the tables it may read (default: only `data`, as /query)."""
    try:
        return _validate(sql, relations)
    except QueryRefused as exc:
        lead = sql[: len(sql) - len(sql.lstrip())] if isinstance(sql, str) else ""
        exc.where = _shifted(exc.where, lead)
        raise


def _validate(sql: Any, relations: Relations) -> ValidatedQuery:
    if not isinstance(sql, str):
        raise _refuse("sql must be a string.")
    if len(sql) > MAX_SQL_LENGTH:
        raise _refuse(f"The query is {len(sql)} characters long; at most {MAX_SQL_LENGTH:,} are allowed.")
    if "\x00" in sql:
        raise _refuse("The query contains a NUL character.")
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise _refuse("The query is empty.")
    cte_names = _check_sqlglot(text, relations)
    query = ValidatedQuery(sql=text, cte_names=cte_names, relations=relations.names)
    cursor = _connection().cursor()
    try:
        _check_duckdb(cursor, text, relations)
        # The wrapped forms are what actually runs: check them too.
        _check_duckdb(cursor, query.count_sql(), relations)
        _check_duckdb(cursor, query.page_sql(1, 0), relations)
    finally:
        cursor.close()
    return query


def referenced_tables(sql: str) -> frozenset[str]:
    """The table names `sql` reads (lower case), not counting its own CTEs in scope; empty
    if it does not parse. (What it may read is `validate_query`'s to decide.)"""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError:
        return frozenset()
    names: set[str] = set()
    for statement in statements:
        for table in statement.find_all(exp.Table):
            if isinstance(table.this, exp.Identifier) and table.name.lower() not in _ctes_in_scope(table):
                names.add(table.name.lower())
    # And what DuckDB's own parser sees (less its CTE names), so that a table one parser
    # misses is still given its rows rather than left to resolve to anything else.
    cursor = _connection().cursor()  # only parses the text
    try:
        tree = json.loads(cursor.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchall()[0][0])
    finally:
        cursor.close()
    tables: set[str] = set()
    ctes: set[str] = set()
    _duckdb_tables(tree, tables, ctes)
    return frozenset(names | (tables - ctes))


def _duckdb_tables(node: Any, tables: set[str], ctes: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _duckdb_tables(item, tables, ctes)
        return
    if not isinstance(node, dict):
        return
    if "class" not in node and node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
        tables.add(node["table_name"].lower())
    cte_map = node.get("cte_map")
    for entry in (cte_map.get("map") if isinstance(cte_map, dict) else None) or []:
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            ctes.add(entry["key"].lower())
    for value in node.values():
        if isinstance(value, (dict, list)):
            _duckdb_tables(value, tables, ctes)


def check_cost(query: ValidatedQuery) -> None:
    """`querycost.check` on the query (`query_too_expensive`), as /query does before running."""
    cursor = _connection().cursor()  # only parses the text
    try:
        querycost.check(cursor, query.sql)
    finally:
        cursor.close()


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if type(value).__name__ == "MonthDayNano":  # an Arrow interval (a namedtuple)
        months, days, nanos = value
        return f"P{months}M{days}DT{nanos / 1e9:g}S"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if (
            value
            and isinstance(value[0], tuple)
            and len(value[0]) == 2
            and all(isinstance(item, tuple) and len(item) == 2 for item in value)
        ):
            return {str(k): _jsonable(v) for k, v in value}  # an Arrow map
        return [_jsonable(v) for v in value]
    return value


def _needs_conversion(t: pa.DataType) -> bool:
    if (
        pa.types.is_decimal(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_interval(t)
        or pa.types.is_duration(t)
        or pa.types.is_map(t)
    ):
        return True
    if pa.types.is_nested(t):
        return any(_needs_conversion(t.field(i).type) for i in range(t.num_fields))
    return False


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        candidate = name
        while candidate in seen:
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
        seen.setdefault(candidate, 1)
        out.append(candidate)
    return out


# What runs a validated query over a table: `execute` here, or a query worker (querypool).
Execute = Callable[..., tuple[list[dict[str, Any]], int, list[str]]]

DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_VALUE_BYTES = 16 * 1024 * 1024
_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Budget:
    """What one query may use: a wall-clock deadline (time.monotonic) and result sizes."""

    timeout: float  # seconds, as configured: what refusals name
    deadline: float
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    @classmethod
    def starting_now(cls, timeout: float | None = None, **sizes: int) -> Budget:
        seconds = _options.timeout if timeout is None else float(timeout)
        return cls(timeout=seconds, deadline=time.monotonic() + seconds, **sizes)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timed_out(self) -> InvalidRequest:
        return InvalidRequest("query_timeout", f"The query ran longer than {self.timeout:g} seconds and was stopped.")

    def check_time(self) -> None:
        if self.remaining() <= 0:
            raise self.timed_out()


def _interrupt(cursor: duckdb.DuckDBPyConnection) -> None:
    try:
        cursor.interrupt()
    except duckdb.Error:
        pass  # the query ended (and its cursor closed) just before


def execute(
    query: ValidatedQuery,
    table: pa.Table,
    *,
    page: int,
    page_size: int,
    timeout: float | None = None,
    budget: Budget | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Run a validated query over `table` (registered as `data`); one page of its result
    as (rows, total rows of the result, column names). See `run`."""
    result, total = run(
        query, table, page=page, page_size=page_size, timeout=timeout, budget=budget, connection=connection
    )
    rows, columns = rows_of(result)
    return rows, total, columns


def run(
    query: ValidatedQuery,
    table: pa.Table,
    *,
    page: int,
    page_size: int,
    timeout: float | None = None,
    budget: Budget | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> tuple[pa.Table, int]:
    """Run a validated query over `table` (registered as `data`): one page of its result as
    Arrow, and the total rows of the result. A query worker process runs this part.

    A timer interrupts DuckDB at the budget's deadline; the page is read in batches and
    refused (`result_too_large` / `value_too_large`) as soon as it outgrows the budget,
    before the rest is produced. `connection`: where to run (default: the shared one).
    """
    budget = budget or Budget.starting_now(timeout)
    if table.num_columns == 0:
        raise _refuse("This source has no columns yet, so there is nothing to query.")
    budget.check_time()
    cursor = (connection or _connection()).cursor()
    timer = threading.Timer(max(budget.remaining(), 0.0), _interrupt, [cursor])
    timer.daemon = True
    timer.start()
    try:
        cursor.register(RELATION, table)
        total = int(cursor.sql(query.count_sql()).fetchall()[0][0])
        reader = cursor.sql(query.page_sql(page_size, (page - 1) * page_size)).to_arrow_reader(_BATCH_ROWS)
        result = _read_capped(reader, budget)
    except duckdb.InterruptException:
        raise budget.timed_out() from None
    except duckdb.OutOfMemoryException:
        raise InvalidRequest("query_too_large", "The query needs more memory than queries may use.") from None
    except duckdb.Error as exc:
        message = public_message(str(exc).split("\n")[0])[:400]
        raise _refuse(f"The query failed: {message}") from None
    finally:
        timer.cancel()
        try:
            cursor.close()
        except duckdb.Error:
            pass
    budget.check_time()  # an interrupt that came as the last batch was read
    return result, total


def rows_of(result: pa.Table) -> tuple[list[dict[str, Any]], list[str]]:
    """A query's result page as JSON-ready rows, and its column names (made unique)."""
    columns = _unique_names(result.column_names)
    if columns != result.column_names:
        result = result.rename_columns(columns)
    rows = result.to_pylist()
    if any(_needs_conversion(f.type) for f in result.schema):
        rows = [{k: _jsonable(v) for k, v in row.items()} for row in rows]
    return rows, columns


def result_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        "result_too_large",
        f"The query's result is larger than {_mib(limit)}, the most a "
        "query may return; select fewer columns or rows (LIMIT, page_size).",
    )


def _mib(size: int) -> str:
    return f"{size / 1048576:g} MiB" if size >= 1048576 else f"{size:,} bytes"


def _read_capped(reader: pa.RecordBatchReader, budget: Budget) -> pa.Table:
    """The reader's batches as one table, refused as soon as they outgrow the budget."""
    batches, size = [], 0
    for batch in reader:
        _check_values(batch, budget.max_value_bytes)
        size += batch.nbytes
        if size > budget.max_result_bytes:
            raise result_too_large(budget.max_result_bytes)
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=reader.schema)


def _check_values(batch: pa.RecordBatch, limit: int) -> None:
    """No single text or binary value over `limit` bytes (nested values count in the total)."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = column.type
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_string_view(kind)
            or pa.types.is_binary_view(kind)
        ):
            continue
        longest = pc.max(pc.binary_length(column)).as_py()
        if longest is not None and longest > limit:
            raise InvalidRequest(
                "value_too_large",
                f"A value of column {name!r} is {_mib(longest)}; a query may return values of at most {_mib(limit)}.",
            )


# ---------------------------------------------------------------------------------------
# Running over several named tables (a project's step), for the whole result
# ---------------------------------------------------------------------------------------

# Run whole: the result of a validated query over named tables (`run_tables`, or a worker's).
ExecuteTables = Callable[..., pa.Table]

# How often a running query looks at its cancel event (an interrupt lands within a chunk).
_CANCEL_POLL_SECONDS = 0.05


def cancelled() -> InvalidRequest:
    return InvalidRequest("run_cancelled", "The run was cancelled.")


def too_many_rows(limit: int) -> InvalidRequest:
    return InvalidRequest(
        "result_too_large",
        f"The result has more than {limit:,} rows, the most a step may return; aggregate or LIMIT it.",
    )


def _watch(
    cursor: duckdb.DuckDBPyConnection, budget: Budget, cancel: threading.Event | None, done: threading.Event
) -> None:
    """Interrupt `cursor` at the budget's deadline, or as soon as `cancel` is set."""
    while not done.is_set():
        remaining = budget.remaining()
        if remaining <= 0 or (cancel is not None and cancel.is_set()):
            _interrupt(cursor)
            return
        done.wait(remaining if cancel is None else min(remaining, _CANCEL_POLL_SECONDS))


def run_tables(
    query: ValidatedQuery,
    tables: Mapping[str, pa.Table],
    *,
    budget: Budget | None = None,
    cancel: threading.Event | None = None,
    max_rows: int | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The whole result of a validated query over `tables` (each registered under its name,
    case-insensitively, on a cursor of its own), capped at `max_rows` and the budget's sizes
    (`result_too_large` / `value_too_large`). Interrupted at the deadline (`query_timeout`)
    or when `cancel` is set (`run_cancelled`). A query worker process runs this part too.

    Only the tables the query was accepted to read (`query.relations`) are registered: it is
    `stream_tables`, collected."""
    budget = budget or Budget.starting_now()
    if cancel is not None and cancel.is_set():
        raise cancelled()
    stream = stream_tables(query, tables, budget=budget, cancel=cancel, max_rows=max_rows, connection=connection)
    schema = next(stream)
    result = pa.Table.from_batches(list(stream), schema=schema)
    if cancel is not None and cancel.is_set():
        raise cancelled()
    budget.check_time()
    if max_rows is not None and result.num_rows > max_rows:
        raise too_many_rows(max_rows)
    return result


def stream_tables(
    query: ValidatedQuery,
    tables: Mapping[str, pa.Table],
    *,
    budget: Budget,
    cancel: threading.Event | None = None,
    max_rows: int | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
    batch_rows: int = _BATCH_ROWS,
) -> Generator[pa.Schema | pa.RecordBatch, None, None]:
    """`run_tables`' result as it is computed: its schema, then its record batches (DuckDB's
    Arrow reader: only the batch at hand is held), under the same refusals: a value over the
    budget's size, a total past its result size (`result_too_large`), the deadline
    (`query_timeout`) or `cancel` (`run_cancelled`), both interrupted by a watcher thread.
    With `max_rows`, at most one row more than that is read (the caller tells "too many").
    The caller pulls at its own pace."""
    registered = {name.lower(): table for name, table in tables.items() if name.lower() in query.relations}
    for name, table in registered.items():
        if table.num_columns == 0:
            raise _refuse(f'Table "{name}" has no columns yet, so there is nothing to query.')
    budget.check_time()
    cursor = (connection or _connection()).cursor()
    done = threading.Event()
    threading.Thread(target=_watch, args=(cursor, budget, cancel, done), daemon=True).start()
    sql = query.page_sql(max_rows + 1, 0) if max_rows is not None else query.sql
    try:
        for name, table in registered.items():
            cursor.register(name, table)
        reader = cursor.sql(sql).to_arrow_reader(batch_rows)
        yield reader.schema
        size = 0
        for batch in reader:
            _check_values(batch, budget.max_value_bytes)
            size += batch.nbytes
            if size > budget.max_result_bytes:
                raise result_too_large(budget.max_result_bytes)
            yield batch
    except duckdb.InterruptException:
        if cancel is not None and cancel.is_set():
            raise cancelled() from None
        raise budget.timed_out() from None
    except duckdb.OutOfMemoryException:
        raise InvalidRequest("query_too_large", "The query needs more memory than queries may use.") from None
    except (duckdb.Error, pa.ArrowException) as exc:
        if cancel is not None and cancel.is_set():
            raise cancelled() from None
        if budget.remaining() <= 0:  # interrupted while the reader ran: Arrow reports it its way
            raise budget.timed_out() from None
        message = public_message(str(exc).split("\n")[0])[:400]
        raise _refuse(f"The query failed: {message}") from None
    finally:
        done.set()
        try:
            cursor.close()
        except duckdb.Error:
            pass
