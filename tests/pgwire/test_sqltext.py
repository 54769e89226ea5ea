"""Statements read before anything runs, and the catalog connection's limits (no server)."""

from __future__ import annotations

import pytest

from tidegate.data import sandbox
from tidegate.errors import InvalidRequest
from tidegate.pgwire import catalog, sqltext


@pytest.mark.parametrize(
    "sql,kind",
    [
        ("SELECT 1", "query"),
        ("  with x as (select 1) select * from x", "query"),
        ("(SELECT 1)", "query"),
        ("/* hi */ INSERT INTO t VALUES (1)", "write"),
        ("COPY t FROM STDIN", "write"),
        ("create table t (a int)", "write"),
        ("DROP TABLE t", "write"),
        ("SET search_path TO public", "harmless"),
        ("BEGIN", "harmless"),
        ("SHOW transaction isolation level", "show"),
        ('DECLARE "c1" CURSOR WITHOUT HOLD FOR SELECT 1', "declare"),
        ('FETCH FORWARD 100 FROM "c1"', "fetch"),
        ("CLOSE c1", "close"),
        ("EXPLAIN SELECT 1", "unsupported"),
        (";", "empty"),
    ],
)
def test_statements_are_classified_before_anything_runs(sql, kind):
    assert sqltext.classify(sql).kind == kind


def test_a_simple_query_splits_at_top_level_semicolons_only():
    assert sqltext.split_statements("SET a = 'x;y'; SELECT ';' ; ") == ["SET a = 'x;y'", "SELECT ';'"]


def test_parameters_are_inlined_as_literals_never_as_sql():
    prepared = sqltext.prepare("SELECT * FROM t WHERE a = $1 AND b = $2", ["x' OR '1'='1", 3])
    assert prepared.sql == "SELECT * FROM t WHERE a = 'x'' OR ''1''=''1' AND b = 3"
    with pytest.raises(sqltext.NotAQuery):
        sqltext.prepare("SELECT $3", [1])


def test_public_and_the_database_qualifier_are_dropped_other_schemas_are_not():
    prepared = sqltext.prepare("SELECT * FROM acme.public.sales JOIN public.b USING (x)", (), frozenset({"acme"}))
    assert prepared.tables == {"sales", "b"} and "public" not in prepared.sql
    other = sqltext.prepare("SELECT * FROM other.public.sales", (), frozenset({"acme"}))
    assert other.tables == frozenset() and "other.public.sales" in other.sql  # the sandbox refuses it
    assert sqltext.prepare("SELECT * FROM pg_catalog.pg_class").reads_catalog


def test_psql_catalog_syntax_is_read():
    prepared = sqltext.prepare(
        "SELECT c.oid::pg_catalog.regclass FROM pg_catalog.pg_class c "
        "WHERE c.relname OPERATOR(pg_catalog.~) '^(s)$' COLLATE pg_catalog.default"
    )
    assert "COLLATE" not in prepared.sql and "OPERATOR" not in prepared.sql and "REGCLASS" not in prepared.sql.upper()


def _catalog_run(sql: str):
    connection = catalog.build("acme", [("sales", [("region", 25), ("amount", 20)])])
    return catalog.run(connection, sqltext.prepare(sql).sql, budget=sandbox.Budget.starting_now(5), cancel=None)


def test_the_catalog_connection_holds_the_keys_tables_empty():
    assert _catalog_run("SELECT count(*) AS n FROM sales").to_pylist() == [{"n": 0}]
    tables = _catalog_run("SELECT table_catalog, table_schema, table_name FROM information_schema.tables")
    assert tables.to_pylist() == [{"table_catalog": "acme", "table_schema": "public", "table_name": "sales"}]
    # pg_catalog relations clients read are ours: only schema public's tables, with the columns psql reads
    classes = _catalog_run(
        "SELECT c.relname, c.relforcerowsecurity, n.nspname FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    )
    assert classes.to_pylist() == [{"relname": "sales", "relforcerowsecurity": False, "nspname": "public"}]
    columns = _catalog_run(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS t FROM pg_catalog.pg_attribute a "
        "WHERE a.attnum > 0 ORDER BY a.attnum"
    )
    assert columns.to_pylist() == [{"attname": "region", "t": "text"}, {"attname": "amount", "t": "bigint"}]
    assert _catalog_run("SELECT datname, datcollate FROM pg_database").to_pylist() == [
        {"datname": "acme", "datcollate": "C"}
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM generate_series(1, 10), read_text('/etc/passwd')",
        "SELECT current_setting('temp_directory')",
        "CREATE TABLE x (a int)",
        "SELECT 1; SELECT 2",
        "ATTACH '/tmp/x.db'",
    ],
)
def test_the_catalog_connection_refuses_files_introspection_and_writes(sql):
    with pytest.raises((InvalidRequest, sqltext.NotAQuery)):
        _catalog_run(sql)
