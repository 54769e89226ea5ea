"""Issue 8 §5: the sandbox shows nothing but `data`.

`WITH pg_settings AS (SELECT * FROM pg_settings) ...` read DuckDB's settings (server paths):
the CTE's own body does not see the CTE, so its `pg_settings` was the catalog view. Every
catalog view the issue names is tried here in every shape a reference can take; each must be
refused (400 invalid_query) or read only `data`'s rows, by each parser layer on its own, and
the connection the query runs on has nothing else to see even without the parsers.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from tidegate.data import sandbox
from tidegate.errors import InvalidRequest

CATALOG = [
    "pg_settings",
    "sqlite_master",
    "sqlite_schema",
    "duckdb_views",
    "duckdb_columns",
    "duckdb_types",
    "pg_proc",
    "duckdb_settings",
    "duckdb_tables",
    "pg_tables",
    "pg_class",
    "pg_namespace",
]

SHAPES = {
    "plain": "SELECT * FROM {n}",
    "from_first": "FROM {n}",
    "cte_shadow": "WITH {n} AS (SELECT * FROM {n}) SELECT * FROM {n}",
    "cte_shadow_quoted": 'WITH "{n}" AS (SELECT * FROM "{n}") SELECT * FROM "{n}"',
    "cte_shadow_upper": "WITH {N} AS (SELECT * FROM {N}) SELECT * FROM {n}",
    "cte_shadow_mixed_case": "WITH {n} AS (SELECT * FROM {N}) SELECT * FROM {N}",
    "cte_shadow_materialized": "WITH {n} AS MATERIALIZED (SELECT * FROM {n}) SELECT * FROM {n}",
    "cte_after_data_cte": "WITH d AS (SELECT * FROM data), {n} AS (SELECT * FROM {n}) SELECT * FROM {n}",
    "cte_forward_reference": "WITH a AS (SELECT * FROM {n}), {n} AS (SELECT * FROM data) SELECT * FROM a",
    "cte_nested": "WITH a AS (WITH {n} AS (SELECT * FROM {n}) SELECT * FROM {n}) SELECT * FROM a",
    "cte_in_subquery": "SELECT * FROM data WHERE region IN (WITH {n} AS (SELECT * FROM {n}) SELECT 'x' FROM {n})",
    "recursive_anchor": (
        "WITH RECURSIVE {n} AS (SELECT * FROM {n} UNION ALL SELECT * FROM {n} WHERE false) SELECT * FROM {n}"
    ),
    "recursive_plain": "WITH RECURSIVE {n} AS (SELECT * FROM {n}) SELECT * FROM {n}",
    "alias_as_data": "SELECT * FROM {n} AS data",
    "quoted": 'SELECT * FROM "{n}"',
    "upper": "SELECT * FROM {N}",
    "schema_main": "SELECT * FROM main.{n}",
    "schema_pg_catalog": "SELECT * FROM pg_catalog.{n}",
    "catalog_system": "SELECT * FROM system.main.{n}",
    "catalog_temp": "SELECT * FROM temp.main.{n}",
    "subquery": "SELECT * FROM data WHERE region IN (SELECT CAST(1 AS VARCHAR) FROM {n})",
    "scalar_subquery": "SELECT (SELECT count(*) FROM {n}) AS c FROM data",
    "exists": "SELECT * FROM data WHERE EXISTS (SELECT 1 FROM {n})",
    "union": "SELECT region FROM data UNION ALL SELECT CAST(1 AS VARCHAR) FROM {n}",
    "join": "SELECT * FROM data JOIN {n} ON true",
    "positional_join": "SELECT * FROM data POSITIONAL JOIN {n}",
    "lateral": "SELECT * FROM data, LATERAL (SELECT * FROM {n}) AS x",
    "derived_table": "SELECT * FROM (SELECT * FROM {n}) AS data",
    "table_function": "SELECT * FROM {n}()",
}

FUNCTIONS = [
    "SELECT * FROM duckdb_settings()",
    "SELECT current_setting('home_directory') FROM data",
    "SELECT current_setting('temp_directory') AS t FROM data",
    "SELECT getenv('HOME') FROM data",
    "SELECT getenv('TIDEGATE_HOME') FROM data",
    "SELECT * FROM pragma_version()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM information_schema.columns",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM range(10)",
    "SELECT * FROM data, duckdb_settings() AS s",
    "SELECT * FROM query('SELECT * FROM pg_settings')",
    "SELECT json_serialize_sql('SELECT 1') FROM data",
    "SELECT * FROM data WHERE region = (SELECT value FROM duckdb_settings() LIMIT 1)",
]

ATTACKS = {
    f"{shape}:{name}": sql.format(n=name, N=name.upper()) for shape, sql in SHAPES.items() for name in CATALOG
} | {f"function:{i}": f for i, f in enumerate(FUNCTIONS)}

DATA = pa.table({"region": ["EU", "US"], "amount": [1, 2]})
DATA_ROWS = [{"region": "EU", "amount": 1}, {"region": "US", "amount": 2}]


def _run(sql: str):
    query = sandbox.validate_query(sql)
    return sandbox.execute(query, DATA, page=1, page_size=1000)


@pytest.mark.parametrize("sql", ATTACKS.values(), ids=list(ATTACKS))
def test_no_catalog_reference_reads_anything_but_data(sql):
    try:
        rows, _, _ = _run(sql)
    except InvalidRequest as refused:
        assert refused.code == "invalid_query" and refused.status == 400
        return
    # Only a query that read nothing but data may run (none of the attacks above does today).
    assert all(set(row) <= {"region", "amount"} for row in rows), rows
    assert all(row in DATA_ROWS for row in rows)


CATALOG_SHAPES = [sql for key, sql in ATTACKS.items() if key.startswith(("cte_", "recursive_", "plain:"))]


@pytest.mark.parametrize("sql", CATALOG_SHAPES)
def test_each_parser_refuses_catalog_references_on_its_own(sql):
    with pytest.raises(InvalidRequest):
        sandbox._check_sqlglot(sql)
    cursor = sandbox._connection().cursor()
    try:
        with pytest.raises(InvalidRequest):
            sandbox._check_duckdb(cursor, sql)
    finally:
        cursor.close()


@pytest.mark.parametrize("name", CATALOG)
def test_the_connection_itself_shows_no_catalog(name):
    """Even SQL that skipped both parsers finds the catalog empty on the sandbox connection."""
    cursor = sandbox._connection().cursor()
    try:
        cursor.register("data", DATA)
        for sql in (
            f"SELECT * FROM {name}",
            f"WITH {name} AS (SELECT * FROM {name}) SELECT * FROM {name}",
            "SELECT * FROM duckdb_settings()",
            "SELECT * FROM pragma_version()",
        ):
            try:
                rows = cursor.sql(sql).fetchall()
            except Exception:  # noqa: BLE001 - a table function called with no arguments may not bind
                continue
            assert rows == [], (sql, rows[:3])
        assert cursor.sql("SELECT count(*) FROM data").fetchall() == [(2,)]
    finally:
        cursor.close()


LEGITIMATE = {
    "cte_named_like_catalog_over_data": ("WITH pg_settings AS (SELECT * FROM data) SELECT * FROM pg_settings", 2),
    "cte_named_data": ("WITH data AS (SELECT * FROM data WHERE amount > 1) SELECT * FROM data", 1),
    "cte_chain": ("WITH a AS (SELECT * FROM data), b AS (SELECT * FROM a) SELECT * FROM b", 2),
    "alias_like_catalog": ("SELECT sqlite_master.region FROM data AS sqlite_master", 2),
    "derived_alias": ("SELECT * FROM (SELECT * FROM data) AS duckdb_views", 2),
    "recursive": ("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT r.n FROM r", 3),
    "nested_scope": (
        "WITH a AS (SELECT * FROM data) SELECT * FROM a WHERE region IN "
        "(WITH b AS (SELECT * FROM a) SELECT region FROM b)",
        2,
    ),
}


@pytest.mark.parametrize("sql,count", LEGITIMATE.values(), ids=list(LEGITIMATE))
def test_the_query_own_ctes_over_data_still_work(sql, count):
    _, total, _ = _run(sql)
    assert total == count


def test_messages_carry_no_server_path(monkeypatch, tmp_path):
    home = tmp_path / "tidegate-home"
    monkeypatch.setattr(sandbox, "_server_home", str(home))  # Settings.home, as create_app hands it over
    message = sandbox.public_message(f'IO Error: Cannot open file "{home}/data/org_1/x.parquet" and /srv/a/b')
    assert str(home) not in message and "/srv/a" not in message and "<server path>" in message
    assert sandbox.public_message("Division by zero in 1 / 2") == "Division by zero in 1 / 2"
    with pytest.raises(InvalidRequest) as refused:
        _run(f"SELECT CAST('{home}/secret.db' AS INTEGER) AS v FROM data")
    assert str(home) not in refused.value.message and "<server path>" in refused.value.message


def test_over_http_nothing_but_data_and_no_server_path(client, org, settings):
    """Every attack through the API: 400 or data rows only, and no response names TIDEGATE_HOME."""
    headers = org.headers(org.key_for(org.admin_id, rate_limit_per_minute=10_000))
    source = client.post("/api/v1/sources", json={"name": "s", "rows": DATA.to_pylist()}, headers=headers).json()["id"]
    home = str(settings.home)
    attacks = list(ATTACKS.values()) + [
        f"SELECT CAST('{home}/x' AS INTEGER) FROM data",
        f"SELECT * FROM read_parquet('{home}/data/*.parquet')",
    ]
    for sql in attacks:
        response = client.post(f"/api/v1/sources/{source}/query", json={"sql": sql}, headers=headers)
        assert response.status_code in (200, 400), (sql, response.text)
        assert home not in response.text, (sql, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["code"] == "invalid_query"
        else:
            assert all(row in DATA_ROWS for row in response.json()["data"]), (sql, response.text)
