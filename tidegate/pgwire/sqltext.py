"""What a client's statement is, before anything runs: a query, a harmless session command
(SET, SHOW, BEGIN ...), a cursor command, or a write to refuse; and a query's text made
ready for the sandbox (its `$n` parameters inlined as literals, `public.` dropped).

PostgreSQL syntax is read with sqlglot's postgres dialect and written back as DuckDB's:
the sandbox then checks that exact text with both of its parsers, as for any query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# Catalog relations answered by views of ours (`catalog.build` makes them, in catalog
# OVERLAY_CATALOG): DuckDB's emulation lacks columns clients read, and lists more than the
# key's tables. A reference to one is rewritten to ours (schema `pg` or `info`).
OVERLAY_CATALOG = "tidegate_catalog"
PG_OVERLAYS = frozenset(
    "pg_class pg_namespace pg_database pg_attribute pg_type pg_proc pg_settings pg_tables pg_views pg_roles pg_user "
    "pg_policy pg_statistic_ext pg_publication pg_publication_rel pg_publication_namespace pg_inherits "
    "pg_collation pg_opclass pg_index pg_constraint pg_attrdef pg_description pg_sequence pg_trigger pg_rewrite pg_partitioned_table pg_foreign_table pg_extension pg_event_trigger".split()
)
INFO_OVERLAYS = frozenset("tables columns schemata views".split())
_FIRST_WORDS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)(?:\s+([A-Za-z_]+))?", re.S)
# Session and transaction commands, answered without running anything (reads and writes
# nothing): the tag PostgreSQL answers each with.
HARMLESS = {
    "set": "SET",
    "reset": "RESET",
    "begin": "BEGIN",
    "start": "START TRANSACTION",
    "commit": "COMMIT",
    "end": "COMMIT",
    "rollback": "ROLLBACK",
    "abort": "ROLLBACK",
    "savepoint": "SAVEPOINT",
    "release": "RELEASE",
    "discard": "DISCARD ALL",
    "deallocate": "DEALLOCATE",
    "listen": "LISTEN",
    "unlisten": "UNLISTEN",
}
WRITES = frozenset(
    "insert update delete merge upsert copy create alter drop truncate grant revoke vacuum analyze cluster "
    "reindex refresh comment lock call do import attach detach install load pragma export checkpoint "
    "security reassign prepare execute notify".split()
)
QUERIES = frozenset({"select", "with", "values", "table"})


@dataclass(frozen=True)
class CopyOut:
    """How `COPY (SELECT ...) TO STDOUT` writes rows: PostgreSQL's text or CSV format."""

    csv: bool = False
    header: bool = False
    delimiter: str = "\t"


@dataclass(frozen=True)
class Statement:
    kind: str  # query | harmless | show | declare | fetch | close | write | unsupported | empty
    text: str
    tag: str = ""
    name: str = ""  # SHOW's setting, a cursor's name
    count: int | None = None  # FETCH's row count (None: ALL)
    query: str = ""  # DECLARE's and COPY's query
    copy: CopyOut | None = None


def split_statements(sql: str) -> list[str]:
    """The statements of a simple Query message, split at top-level semicolons."""
    try:
        tokens = sqlglot.tokenize(sql, read="postgres")
    except sqlglot.errors.SqlglotError:
        return [sql] if sql.strip() else []
    parts, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            parts.append(sql[start : token.start])
            start = token.end + 1
    parts.append(sql[start:])
    return [p for p in (part.strip() for part in parts) if p]


_DECLARE = re.compile(
    r"^\s*declare\s+(\"[^\"]+\"|\w+)\s+(?:binary\s+)?(?:(?:no\s+)?scroll\s+)?cursor\s+"
    r"(?:(?:with|without)\s+hold\s+)?for\s+(.*)$",
    re.I | re.S,
)
_FETCH = re.compile(
    r"^\s*(fetch|move)\s+(?:(forward|next)\s+)?(all|\d+)?\s*(?:from|in)?\s*(\"[^\"]+\"|\w+)\s*;?\s*$", re.I | re.S
)
_CLOSE = re.compile(r"^\s*close\s+(\"[^\"]+\"|\w+)\s*;?\s*$", re.I)


def _name(raw: str) -> str:
    return raw[1:-1] if raw.startswith('"') else raw.lower()


def classify(sql: str) -> Statement:
    text = sql.strip().rstrip(";").strip()
    if text.startswith("("):
        return Statement("query", text)
    match = _FIRST_WORDS.match(text)
    if not text or not match:
        return Statement("empty" if not text.strip("; \n\t") else "unsupported", text)
    word = match.group(1).lower()
    if word in QUERIES:
        return Statement("query", text)
    if word == "show":
        return Statement("show", text, tag="SHOW", name=text.split(None, 1)[1].strip().strip('"').lower())
    if word in HARMLESS:
        return Statement("harmless", text, tag=HARMLESS[word])
    if word == "declare":
        declared = _DECLARE.match(text)
        if not declared:
            return Statement("unsupported", text)
        return Statement("declare", text, tag="DECLARE CURSOR", name=_name(declared.group(1)), query=declared.group(2))
    if word in ("fetch", "move"):
        fetched = _FETCH.match(text)
        if not fetched:
            return Statement("unsupported", text)
        count = None if (fetched.group(3) or "1").lower() == "all" else int(fetched.group(3) or 1)
        return Statement("fetch", text, tag=fetched.group(1).upper(), name=_name(fetched.group(4)), count=count)
    if word == "close":
        closed = _CLOSE.match(text)
        if not closed:
            return Statement("unsupported", text)
        return Statement("close", text, tag="CLOSE CURSOR", name=_name(closed.group(1)))
    if word == "copy":
        return _copy(text)
    if word in WRITES:
        return Statement("write", text)
    return Statement("unsupported", text)


_COPY = re.compile(
    r"^\s*copy\s+(?:\((?P<query>.*)\)|(?P<table>\"[^\"]+\"|[\w.]+)\s*(?:\((?P<columns>[^)]*)\))?)\s*"
    r"to\s+stdout\b\s*(?:with\b)?\s*(?P<options>.*)$",
    re.I | re.S,
)
_COPY_FORMAT = re.compile(r"\b(?:format\s+)?(csv|text|binary)\b", re.I)
_COPY_HEADER = re.compile(r"\bheader\b(?:\s+(true|on|1|false|off|0)\b)?", re.I)
_COPY_DELIMITER = re.compile(r"\bdelimiter\s+(?:as\s+)?'(.)'", re.I)


def _copy(text: str) -> Statement:
    """`COPY (query) TO STDOUT [options]` or `COPY table [(columns)] TO STDOUT`: a query whose
    rows are written in COPY's format. Any other COPY (FROM, to a file) writes: refused."""
    match = _COPY.match(text)
    if not match:
        return Statement("write", text)
    options = match.group("options").strip().strip("()")
    formats = [f.lower() for f in _COPY_FORMAT.findall(options)]
    if "binary" in formats:
        return Statement("unsupported", text)
    header = _COPY_HEADER.search(options)
    delimiter = _COPY_DELIMITER.search(options)
    csv = "csv" in formats
    copy = CopyOut(
        csv=csv,
        header=header is not None and (header.group(1) or "true").lower() in ("true", "on", "1"),
        delimiter=delimiter.group(1) if delimiter else ("," if csv else "\t"),
    )
    query = match.group("query")
    if query is None:
        query = f"SELECT {match.group('columns') or '*'} FROM {match.group('table')}"
    return Statement("copy", text, tag="COPY", query=query.strip(), copy=copy)


# -- making a query ready -----------------------------------------------------------------


class NotAQuery(ValueError):
    """The text is not one SELECT we can read (sqlglot's message, or why)."""


@dataclass(frozen=True)
class PreparedQuery:
    sql: str  # DuckDB's dialect, parameters inlined, `public.` dropped
    tables: frozenset[str]  # lower-case names it reads (not its own CTEs)
    reads_catalog: bool  # names pg_catalog / information_schema / pg_* relations


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(repr(value) if isinstance(value, float) else str(value))
    return exp.Literal.string(str(value))


def _placeholder_index(node: exp.Expression) -> int | None:
    name = node.name if isinstance(node, exp.Placeholder) else node.this.name if isinstance(node, exp.Parameter) else ""
    return int(name) - 1 if str(name).isdigit() else None


_RENAMED = {"json_build_object": "tidegate_json_build_object"}  # (a macro: `catalog._MACROS`)
# psql's `OPERATOR(pg_catalog.~)`: the operator itself (the text is parsed and checked after).
_OPERATOR = re.compile(r"OPERATOR\s*\(\s*pg_catalog\s*\.\s*([^\s()\w]+)\s*\)", re.I)


def prepare(sql: str, params: Sequence[Any] = (), database_names: frozenset[str] = frozenset()) -> PreparedQuery:
    sql = _OPERATOR.sub(lambda m: f" {m.group(1)} ", sql)
    try:
        trees = [t for t in sqlglot.parse(sql, read="postgres") if t is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise NotAQuery(str(exc).split("\n")[0]) from None
    if len(trees) != 1:
        raise NotAQuery("Send one statement at a time.")
    tree = trees[0]

    def inline(node: exp.Expression) -> exp.Expression:
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            index = _placeholder_index(node)
            if index is None or index >= len(params) or index < 0:
                raise NotAQuery(f"There is no parameter {node.sql()}.")
            return _literal(params[index])
        if isinstance(node, exp.Anonymous) and node.name.lower() in _RENAMED:
            node.set("this", _RENAMED[node.name.lower()])  # PostgreSQL's name of a DuckDB function
            return node
        if isinstance(node, exp.Collate):
            # `COLLATE pg_catalog.default` (psql): DuckDB has no such collation
            return node.this.transform(inline)  # type: ignore[no-any-return]
        if isinstance(node, exp.Cast) and node.to.sql(dialect="postgres").lower().split(".")[-1].startswith("reg"):
            # regtype/regclass/...: DuckDB has no such types; the oid stays
            return node.this.transform(inline)  # type: ignore[no-any-return]
        if isinstance(node, exp.Cast) and node.to.sql(dialect="postgres").lower().startswith("pg_catalog."):
            try:  # `::pg_catalog.text`: DuckDB knows the type by its bare name only
                node.set("to", exp.DataType.build(node.to.sql(dialect="postgres")[11:], dialect="postgres"))
            except (sqlglot.errors.SqlglotError, ValueError):
                pass
            return node
        if (
            isinstance(node, exp.Dot)
            and isinstance(node.this, exp.Identifier)
            and node.this.name.lower() in CATALOG_SCHEMAS
            and isinstance(node.expression, exp.Func)
        ):
            # `pg_catalog.version()`: DuckDB reads the prefix as an argument (its arguments inlined too)
            return node.expression.transform(inline)  # type: ignore[no-any-return]
        return node

    tree = tree.transform(inline)
    for column in tree.find_all(exp.Column):
        if column.args.get("db") is not None and column.text("db").lower() in CATALOG_SCHEMAS:
            column.set("db", None)  # `pg_catalog.pg_namespace.nspname`: the relation is named by its name
            column.set("catalog", None)
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    tables: set[str] = set()
    catalog = False
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Func) and table.db.lower() == "pg_catalog":
            table.set("db", None)  # `pg_catalog.generate_series(...)`: DuckDB knows the bare name
        schema, name = table.db.lower(), table.name.lower()
        if not name:
            continue
        if schema in CATALOG_SCHEMAS or (not schema and (name.startswith("pg_") or name in CATALOG_SCHEMAS)):
            catalog = True
            if not table.catalog or table.catalog.lower() in database_names:
                _overlay(table, schema, name)
            if not table.alias and isinstance(table.this, exp.Identifier):  # `pg_class.oid` still names it
                table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name)))
            continue
        if schema == "public" and (not table.catalog or table.catalog.lower() in database_names):
            table.set("db", None)
            table.set("catalog", None)
        if not table.db and name not in ctes:
            tables.add(name)
    return PreparedQuery(tree.sql(dialect="duckdb"), frozenset(tables), catalog)


def _overlay(table: exp.Table, schema: str, name: str) -> None:
    """`pg_catalog.pg_class` (or `pg_class`) -> ours, `information_schema.tables` -> ours."""
    if schema in ("", "pg_catalog") and name in PG_OVERLAYS:
        ours = "pg"
    elif schema == "information_schema" and name in INFO_OVERLAYS:
        ours = "info"
    else:
        return
    table.set("catalog", exp.to_identifier(OVERLAY_CATALOG))
    table.set("db", exp.to_identifier(ours))
