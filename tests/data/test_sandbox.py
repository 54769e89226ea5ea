"""run_query: read-only SQL over `data` (already filtered); everything else refused."""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
import pytest

from tidegate.data import engine, sandbox
from tidegate.errors import InvalidRequest

from .conftest import ALLOW, current, readable, rf


@pytest.fixture
def version(Session, make_source, tmp_path):
    engine.clear_cache()
    (tmp_path / "secret.csv").write_text("x\n42\n")
    source = make_source(
        pa.table(
            {
                "id": [1, 2, 3, 4],
                "region": ["EU", "US", "EU", "APAC"],
                "amount": [10.0, 20.0, 30.0, 40.0],
                "day": pa.array([dt.date(2024, 1, d) for d in (1, 2, 3, 4)], pa.date32()),
                "tags": ['{"a": 1}', '{"a": 2}', None, '{"b": 3}'],
            }
        )
    )
    return current(Session, source.id)


FORBIDDEN = {
    # statements that are not a single SELECT
    "insert": "INSERT INTO data VALUES (5, 'X', 1.0, DATE '2024-01-01', NULL)",
    "update": "UPDATE data SET amount = 0",
    "delete": "DELETE FROM data",
    "create_table": "CREATE TABLE t AS SELECT * FROM data",
    "create_macro": "CREATE MACRO m(x) AS x + 1",
    "drop": "DROP TABLE data",
    "alter": "ALTER TABLE data ADD COLUMN y INT",
    "attach": "ATTACH '/tmp/other.db' AS other",
    "detach": "DETACH other",
    "copy_to": "COPY data TO '/tmp/out.csv'",
    "copy_select_to": "COPY (SELECT * FROM data) TO '/tmp/out.parquet' (FORMAT parquet)",
    "copy_from": "COPY data FROM '/etc/passwd'",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET threads = 64",
    "set_access": "SET enable_external_access = true",
    "reset": "RESET memory_limit",
    "pragma": "PRAGMA version",
    "pragma_table_info": "PRAGMA table_info('data')",
    "call": "CALL pragma_version()",
    "export": "EXPORT DATABASE '/tmp/dump'",
    "import": "IMPORT DATABASE '/tmp/dump'",
    "checkpoint": "CHECKPOINT",
    "use": "USE memory",
    "describe": "DESCRIBE data",
    "summarize": "SUMMARIZE data",
    "show_tables": "SHOW TABLES",
    "explain": "EXPLAIN SELECT * FROM data",
    "prepare": "PREPARE p AS SELECT * FROM data",
    "execute": "EXECUTE p",
    "create_secret": "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "begin": "BEGIN TRANSACTION",
    "vacuum": "VACUUM",
    "two_statements": "SELECT * FROM data; DROP TABLE data",
    "two_selects": "SELECT 1; SELECT 2",
    "select_into": "SELECT * INTO t FROM data",
    # other relations
    "other_table": "SELECT * FROM sources",
    "schema_qualified": "SELECT * FROM main.data",
    "catalog_qualified": "SELECT * FROM memory.main.data",
    "temp_qualified": "SELECT * FROM temp.main.data",
    "information_schema": "SELECT * FROM information_schema.tables",
    "pg_catalog": "SELECT * FROM pg_catalog.pg_tables",
    "sqlite_master": "SELECT * FROM sqlite_master",
    "duckdb_tables_view": "SELECT * FROM duckdb_tables",
    "file_as_table": "SELECT * FROM '/etc/passwd'",
    "quoted_file_as_table": 'SELECT * FROM "secret.csv"',
    "parquet_glob_as_table": "SELECT * FROM 'data/**/*.parquet'",
    "join_other": "SELECT * FROM data JOIN users ON true",
    "subquery_other": "SELECT * FROM data WHERE id IN (SELECT id FROM api_keys)",
    "cte_over_other": "WITH data2 AS (SELECT * FROM organizations) SELECT * FROM data2",
    "cte_out_of_scope": "SELECT * FROM (WITH t AS (SELECT 1 AS x) SELECT * FROM t) a, t",
    "cte_file_out_of_scope": 'SELECT * FROM (WITH "secret.csv" AS (SELECT 1 AS x) SELECT * FROM "secret.csv") a, '
    '"secret.csv" b',
    "python_variable": "SELECT * FROM table_",
    "union_other": "SELECT id FROM data UNION SELECT id FROM users",
    "time_travel": "SELECT * FROM data AT (VERSION => 1)",
    # table functions
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('/etc/hosts')",
    "read_parquet": "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "read_json": "SELECT * FROM read_json('/tmp/x.json')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "glob": "SELECT * FROM glob('/*')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "range": "SELECT * FROM range(10)",
    "generate_series": "SELECT * FROM generate_series(1, 10)",
    "query": "SELECT * FROM query('SELECT 1')",
    "query_table": "SELECT * FROM query_table('data')",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "duckdb_functions": "SELECT * FROM duckdb_functions()",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "duckdb_extensions": "SELECT * FROM duckdb_extensions()",
    "pragma_function": "SELECT * FROM pragma_table_info('data')",
    "unnest_in_from": "SELECT * FROM data, unnest([1, 2])",
    "lateral_read": "SELECT * FROM data, LATERAL (SELECT * FROM read_csv('/etc/passwd'))",
    "read_in_subquery": "SELECT * FROM data WHERE region IN (SELECT * FROM read_csv('/etc/passwd'))",
    "read_in_cte": "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "describe_in_from": "SELECT * FROM (DESCRIBE data)",
    "summarize_in_from": "FROM (SUMMARIZE data)",
    "show_in_from": "SELECT * FROM (SHOW TABLES)",
    # scalar functions reaching outside the data
    "getenv": "SELECT getenv('HOME')",
    "current_setting": "SELECT current_setting('memory_limit')",
    "getvariable": "SELECT getvariable('x')",
    "current_schema": "SELECT current_schema()",
    "current_database": "SELECT current_database()",
    "current_user": "SELECT current_user",
    "version": "SELECT version()",
    "read_text_scalar": "SELECT read_text('/etc/passwd')",
    "nextval": "SELECT nextval('seq')",
    "setseed": "SELECT setseed(0.5)",
    "sleep": "SELECT sleep_ms(100000)",
    "pg_sleep": "SELECT pg_sleep(100)",
    "repeat_bomb": "SELECT repeat('x', 1000000000)",
    "json_execute": "SELECT * FROM json_execute_serialized_sql('{}')",
    "json_serialize_sql": "SELECT json_serialize_sql('SELECT 1')",
    "list_aggregate_by_name": "SELECT list_aggregate([1], 'getenv')",
    "error_fn": "SELECT error('boom')",
    "write_log": "SELECT write_log('x')",
    "qualified_function": "SELECT main.lower(region) FROM data",
    "catalog_function": "SELECT system.main.lower(region) FROM data",
    "unknown_function": "SELECT frobnicate(region) FROM data",
    "function_in_cte": "WITH x AS (SELECT getenv('HOME') AS h) SELECT * FROM x",
    "function_in_where": "SELECT * FROM data WHERE region = current_setting('threads')",
    "function_in_lambda": "SELECT list_transform([1], x -> getenv('HOME'))",
    # parameters and variables
    "positional_parameter": "SELECT * FROM data WHERE id = ?",
    "numbered_parameter": "SELECT * FROM data WHERE id = $1",
    "named_parameter": "SELECT * FROM data WHERE id = $id",
    # comment and quoting tricks
    "comment_then_statement": "SELECT 1 /* x */; DROP TABLE data",
    "line_comment_smuggle": "SELECT * FROM data -- harmless\n; ATTACH 'x.db'",
    "dollar_quoted_smuggle": "SELECT $$x$$; INSTALL httpfs",
    # not SQL at all
    "empty": "",
    "blank": "   ;  ",
    "garbage": "this is not sql",
    "unbalanced": "SELECT (1",
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_forbidden_construct_is_refused_before_anything_runs(version, name):
    engine.clear_cache()
    before = engine.cache_stats()
    sql = FORBIDDEN[name]
    with pytest.raises(InvalidRequest) as info:
        engine.run_query(readable(version, ALLOW), sql, page=1, page_size=10)
    assert info.value.code == "invalid_query" and info.value.status == 400
    assert info.value.message  # precise, human-readable
    after = engine.cache_stats()
    assert (after["misses"], after["entries"]) == (before["misses"], 0)  # no data was even read
    with pytest.raises(InvalidRequest):
        sandbox.validate_query(sql)


LAYER_TWO = [
    "cte_out_of_scope",
    "cte_file_out_of_scope",
    "read_csv",
    "read_in_subquery",
    "getenv",
    "function_in_lambda",
    "schema_qualified",
    "catalog_qualified",
    "positional_parameter",
    "numbered_parameter",
    "describe_in_from",
    "summarize_in_from",
    "unnest_in_from",
    "time_travel",
    "file_as_table",
    "json_serialize_sql",
    "qualified_function",
    "catalog_function",
    "other_table",
    "cte_over_other",
    "duckdb_settings",
    "two_statements",
    "insert",
    "attach",
    "copy_to",
    "pragma",
    "set",
    "lateral_read",
    "range",
]


@pytest.mark.parametrize("name", sorted(n for n in FORBIDDEN if FORBIDDEN[n].strip(" ;")))
def test_sqlglot_layer_refuses_on_its_own(name):
    with pytest.raises(InvalidRequest) as info:
        sandbox._check_sqlglot(FORBIDDEN[name].strip().rstrip(";"))
    assert info.value.code == "invalid_query"


@pytest.mark.parametrize("name", LAYER_TWO)
def test_duckdb_parser_layer_refuses_on_its_own(name):
    """The second check (DuckDB's own parse tree) does not rely on sqlglot having caught it."""
    cursor = sandbox._connection().cursor()
    try:
        with pytest.raises(InvalidRequest) as info:
            sandbox._check_duckdb(cursor, FORBIDDEN[name])
        assert info.value.code == "invalid_query"
    finally:
        cursor.close()


def test_duckdb_parser_layer_accepts_the_allowed_queries():
    cursor = sandbox._connection().cursor()
    try:
        for sql, _ in ALLOWED.values():
            sandbox._check_duckdb(cursor, sql.rstrip(";"))
    finally:
        cursor.close()


def test_sql_length_limit(version):
    long_sql = "SELECT * FROM data WHERE " + " OR ".join(["id = 1"] * 2000)
    assert len(long_sql) > sandbox.MAX_SQL_LENGTH
    with pytest.raises(InvalidRequest) as info:
        engine.run_query(readable(version, ALLOW), long_sql, page=1, page_size=10)
    assert info.value.code == "invalid_query" and "10,000" in info.value.message
    limit_sql = "SELECT * FROM data --" + "x" * (sandbox.MAX_SQL_LENGTH - 21)
    assert len(limit_sql) == sandbox.MAX_SQL_LENGTH
    assert engine.run_query(readable(version, ALLOW), limit_sql, page=1, page_size=10)[1] == 4


def test_sql_must_be_text(version):
    with pytest.raises(InvalidRequest) as info:
        engine.run_query(readable(version, ALLOW), {"sql": 1}, page=1, page_size=10)
    assert info.value.code == "invalid_query"


ALLOWED = {
    "star": ("SELECT * FROM data", 4),
    "trailing_semicolon": ("SELECT * FROM data;", 4),
    "from_first": ("FROM data SELECT id", 4),
    "where_like": ("SELECT id FROM data WHERE region LIKE 'E%' OR region ILIKE 'ap%'", 3),
    "group_by": ("SELECT region, sum(amount) AS total, count(*) AS n FROM data GROUP BY region ORDER BY region", 3),
    "group_by_all": ("SELECT region, avg(amount) FROM data GROUP BY ALL", 3),
    "having": ("SELECT region FROM data GROUP BY region HAVING count(*) > 1", 1),
    "cte": ("WITH eu AS (SELECT * FROM data WHERE region = 'EU') SELECT count(*) FROM eu", 1),
    "cte_named_like_table": ("WITH users AS (SELECT * FROM data) SELECT * FROM users", 4),
    "nested_ctes": (
        "WITH a AS (SELECT * FROM data), b AS (SELECT * FROM a WHERE id > 1) "
        "SELECT * FROM (WITH c AS (SELECT * FROM b) SELECT * FROM c)",
        3,
    ),
    "recursive_cte": ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", 5),
    "self_join": ("SELECT a.id, b.id FROM data a JOIN data b ON a.region = b.region AND a.id < b.id", 1),
    "union": ("SELECT id FROM data UNION ALL SELECT id FROM data", 8),
    "subquery": ("SELECT * FROM data WHERE amount > (SELECT avg(amount) FROM data)", 2),
    "exists": ("SELECT * FROM data WHERE EXISTS (SELECT 1 FROM data d2 WHERE d2.id = data.id + 1)", 3),
    "any_all": ("SELECT * FROM data WHERE amount >= ALL (SELECT amount FROM data) OR id = ANY (SELECT 1)", 2),
    "pivot": ("SELECT * FROM data PIVOT (sum(amount) FOR region IN ('EU', 'US'))", 4),
    "window": ("SELECT id, row_number() OVER (PARTITION BY region ORDER BY amount DESC) AS rn FROM data", 4),
    "qualify": ("SELECT * FROM data QUALIFY row_number() OVER (PARTITION BY region ORDER BY id) = 1", 3),
    "dates": (
        "SELECT date_trunc('month', day) AS m, strftime(day, '%Y') AS y, extract(dow FROM day) AS d, "
        "day + INTERVAL 1 DAY AS next FROM data",
        4,
    ),
    "strings": (
        "SELECT upper(region), lower(region), length(region), substr(region, 1, 1), "
        "concat(region, '-', id), replace(region, 'E', 'e'), trim(' x '), region || '!' FROM data",
        4,
    ),
    "math": (
        "SELECT round(amount / 3, 2), abs(-amount), ceil(amount / 7), floor(amount / 7), "
        "sqrt(amount), power(2, 3), greatest(1, 2), least(1, 2) FROM data",
        4,
    ),
    "case_cast": (
        "SELECT CASE WHEN amount > 15 THEN 'big' ELSE 'small' END, CAST(id AS VARCHAR), "
        "id::DOUBLE, TRY_CAST(region AS INTEGER), coalesce(tags, '{}'), nullif(id, 2) FROM data",
        4,
    ),
    "json": ("SELECT json_extract_string(tags, '$.a') FROM data", 4),
    "lists": ("SELECT list(region), array_agg(id ORDER BY id), string_agg(region, ',') FROM data", 1),
    "distinct_limit": ("SELECT DISTINCT region FROM data ORDER BY region LIMIT 2", 2),
    "values": ("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(x, y)", 2),
    "pivot_free": ("SELECT count(*) FILTER (WHERE region = 'EU') AS eu FROM data", 1),
    "exclude": ("SELECT * EXCLUDE (tags) FROM data", 4),
    "regexp": ("SELECT regexp_matches(region, '^E'), regexp_replace(region, 'U', 'u') FROM data", 4),
    "comments": ("-- leading\nSELECT /* inline */ id FROM data -- trailing", 4),
    "quoted_data": ('SELECT * FROM "data"', 4),
    "upper_case_data": ("SELECT * FROM DATA", 4),
    "no_from": ("SELECT 1 AS one, now() IS NOT NULL AS t", 1),
    "median_quantile": ("SELECT median(amount), quantile_cont(amount, 0.9), stddev(amount) FROM data", 1),
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_queries_run(version, name):
    sql, expected_total = ALLOWED[name]
    rows, total, columns = engine.run_query(readable(version, ALLOW), sql, page=1, page_size=100)
    assert total == expected_total and len(rows) == expected_total
    assert columns and all(set(r) == set(columns) for r in rows)


def test_query_sees_only_the_filtered_rows(version):
    eu = rf(region={"EU"})
    attempts = [
        "SELECT count(*) AS n FROM data",
        "SELECT count(*) AS n FROM data WHERE region <> 'EU' OR true",
        "WITH all_rows AS (SELECT * FROM data) SELECT count(*) AS n FROM all_rows",
        "SELECT count(*) AS n FROM data a, data b WHERE a.id = b.id",
    ]
    for sql in attempts:
        assert engine.run_query(readable(version, eu), sql, page=1, page_size=10)[0] == [{"n": 2}]
    rows, total, _ = engine.run_query(readable(version, eu), "SELECT DISTINCT region FROM data", page=1, page_size=10)
    assert rows == [{"region": "EU"}] and total == 1


def test_paging_of_query_results(version):
    sql = "SELECT id FROM data ORDER BY id DESC"
    assert engine.run_query(readable(version, ALLOW), sql, page=1, page_size=3) == (
        [{"id": 4}, {"id": 3}, {"id": 2}],
        4,
        ["id"],
    )
    assert engine.run_query(readable(version, ALLOW), sql, page=2, page_size=3) == ([{"id": 1}], 4, ["id"])
    assert engine.run_query(readable(version, ALLOW), sql, page=3, page_size=3) == ([], 4, ["id"])
    # the query's own LIMIT applies before paging
    assert engine.run_query(readable(version, ALLOW), sql + " LIMIT 2", page=1, page_size=10)[1] == 2


def test_results_are_json_friendly(version):
    rows, _, columns = engine.run_query(
        readable(version, ALLOW),
        "SELECT (SELECT sum(id) FROM data) AS s, 1.25::DECIMAL(10,2) AS d, INTERVAL 1 DAY AS i, 'ab'::BLOB AS b, "
        "[1, 2] AS l, {'k': 1} AS st, id, id FROM data WHERE id = 1",
        page=1,
        page_size=10,
    )
    assert columns == ["s", "d", "i", "b", "l", "st", "id", "id_1"]
    row = rows[0]
    assert row["s"] == 10 and type(row["s"]) is int  # HUGEINT arrives as Decimal
    assert row["d"] == 1.25 and isinstance(row["d"], float)
    assert isinstance(row["i"], str) and isinstance(row["b"], str)
    assert row["l"] == [1, 2] and row["st"] == {"k": 1} and row["id"] == row["id_1"] == 1


@pytest.mark.parametrize(
    "sql,fragment",
    [
        ("SELECT nope FROM data", "nope"),
        ("SELECT 1 / 'x'", "failed"),
        ("SELECT CAST('x' AS INTEGER)", "failed"),
    ],
)
def test_runtime_errors_are_invalid_query(version, sql, fragment):
    with pytest.raises(InvalidRequest) as info:
        engine.run_query(readable(version, ALLOW), sql, page=1, page_size=10)
    assert info.value.code == "invalid_query" and fragment in info.value.message


def test_long_query_is_interrupted(Session, make_source):
    engine.clear_cache()
    source = make_source(pa.table({"n": list(range(3000))}))
    version = current(Session, source.id)
    sandbox.configure(timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(InvalidRequest) as info:
            engine.run_query(
                readable(version, ALLOW),
                "SELECT count(*) FROM data a, data b, data c WHERE a.n + b.n > c.n",
                page=1,
                page_size=1,
            )
        assert info.value.code == "query_timeout"
        assert time.monotonic() - started < 10
    finally:
        sandbox.configure(timeout=10.0)
    assert engine.run_query(readable(version, ALLOW), "SELECT count(*) AS n FROM data", page=1, page_size=1)[0] == [
        {"n": 3000}
    ]


def test_sandbox_connection_itself_is_locked_down():
    conn = sandbox._connection()
    cursor = conn.cursor()
    try:
        for statement in (
            "SET enable_external_access = true",
            "SET threads = 64",
            "SELECT * FROM read_csv('/etc/passwd')",
            "INSTALL httpfs",
        ):
            with pytest.raises(Exception):  # noqa: B017 - DuckDB's own refusal, whatever its class
                cursor.execute(statement)
    finally:
        cursor.close()


def test_data_registered_on_one_cursor_is_invisible_to_another():
    conn = sandbox._connection()
    first, second = conn.cursor(), conn.cursor()
    try:
        first.register("data", pa.table({"secret": [1]}))
        with pytest.raises(Exception):  # noqa: B017
            second.sql("SELECT * FROM data").fetchall()
    finally:
        first.close()
        second.close()


def test_queries_from_many_threads_each_see_their_own_data(Session, make_source):
    import threading

    engine.clear_cache()
    source = make_source(pa.table({"region": ["EU", "US", "APAC"] * 100, "n": list(range(300))}))
    version = current(Session, source.id)
    errors = []

    def worker(region):
        try:
            for _ in range(5):
                rows, total, _ = engine.run_query(
                    readable(version, rf(region={region})),
                    "SELECT DISTINCT region, count(*) OVER () AS c FROM data",
                    page=1,
                    page_size=10,
                )
                assert rows == [{"region": region, "c": 100}] and total == 1
                assert engine.distinct_values(readable(version, rf(region={region})), "region", 5) == [region]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in ["EU", "US", "APAC"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_memory_hungry_query_is_refused(Session, make_source):
    engine.clear_cache()
    source = make_source(pa.table({"n": list(range(3000))}))
    version = current(Session, source.id)
    sandbox.configure(memory_limit="30MB")
    try:
        with pytest.raises(InvalidRequest) as info:
            engine.run_query(
                readable(version, ALLOW),
                "SELECT string_agg(a.n::VARCHAR || b.n::VARCHAR, ',') AS s FROM data a, data b",
                page=1,
                page_size=1,
            )
        assert info.value.code == "query_too_large"
    finally:
        sandbox.configure(memory_limit="1GB")
