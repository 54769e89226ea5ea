"""Live connector sources (issue 13 §4) against this machine's PostgreSQL, in a scratch
database of this module's own: reads happen on the source at request time, the row filter
and the paging travel as bound parameters, /query is sandboxed, transpiled and wrapped, a
down source answers 503 and a slow one 504 within the timeout."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import psycopg
import pytest

from tests.security.test_security_sandbox import ATTACKS, DATA_ROWS, LEGITIMATE
from tests.server import scratch_postgres_database
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import egress, live
from tidegate.errors import InvalidRequest, ServiceUnavailable, UpstreamTimeout

ALL = RowFilter(clauses=())
US = RowFilter(clauses=(Clause("region", frozenset({"US"})),))


@pytest.fixture(scope="module")
def source_db():
    with scratch_postgres_database("tidegate_live") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE sales (region text, amount int)")
            conn.execute("INSERT INTO sales VALUES ('EU', 1), ('US', 2)")
            conn.execute("CREATE TABLE other_secret (v text)")
            conn.execute("CREATE SEQUENCE nope_seq")
            conn.execute("INSERT INTO other_secret VALUES ('do-not-leak')")
        parsed = urlparse(url)
        config = {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 5432,
            "database": parsed.path.lstrip("/"),
            "user": parsed.username or "root",
            "connect_timeout": 2,
        }
        yield {"url": url, "config": config}


def allow(source_db):
    host = source_db["config"]["host"]
    egress.configure(f"{host}:{source_db['config']['port']},{host}:1")
    live.configure(timeout_seconds=2, pool_size=2)


@pytest.fixture(scope="module")
def allowed(source_db):
    """The scratch server allowed by the egress policy (its port named: it is also tidegate's
    own database server in the test setup), plus port 1 for the "down" test."""
    allow(source_db)
    yield
    live.configure(timeout_seconds=30, pool_size=4)
    egress.configure("")


def read_page(t, row_filter, **paging):
    table, total = live.read_page(t, row_filter, **paging)
    return table.to_pylist(), total


def target(source_db, **config):
    merged = {**source_db["config"], "table": "sales", **config}
    if "query" in config:
        merged.pop("table")
    t = live.target_for_config("postgresql", merged, {})
    columns = live.read_columns(t)
    return live.Target("src_live_test", t.dialect, merged, {}, None, tuple((c["name"], c["type"]) for c in columns))


@pytest.fixture
def sales(source_db, allowed):
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("DELETE FROM sales")
        conn.execute("INSERT INTO sales VALUES ('EU', 1), ('US', 2)")
    return target(source_db)


@pytest.fixture
def sent(monkeypatch):
    """Every statement sent to the source, with its parameters (a logging hook on the dialect)."""
    log: list[tuple[str, list]] = []
    dialect = live.dialect_of("postgresql")
    cls = type(dialect)
    real_rows, real_stream = cls.rows, cls.stream

    def rows(self, connection, sql, params, timeout):
        log.append((sql, list(params)))
        return real_rows(self, connection, sql, params, timeout)

    def stream(self, connection, sql, params, timeout, batch):
        log.append((sql, list(params)))
        return real_stream(self, connection, sql, params, timeout, batch)

    monkeypatch.setattr(cls, "rows", rows)
    monkeypatch.setattr(cls, "stream", stream)
    return log


def test_columns_are_read_from_the_source(sales):
    assert sales.columns == (("region", "string"), ("amount", "integer"))


def test_rows_changed_behind_our_back_are_seen_by_the_next_read(sales, source_db):
    assert live.count(sales, ALL) == 2
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO sales VALUES ('US', 3), ('EU', 4)")
        conn.execute("UPDATE sales SET amount = 20 WHERE amount = 2")
    rows, total = read_page(sales, ALL, page=1, page_size=100)
    assert total == 4 and sorted(r["amount"] for r in rows) == [1, 3, 4, 20]
    assert live.count(sales, US) == 2
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute("DELETE FROM sales WHERE region = 'US'")
    assert read_page(sales, US, page=1, page_size=100) == ([], 0)


def test_the_row_filter_and_paging_are_bound_parameters(sales, sent):
    rows, total = read_page(sales, US, page=1, page_size=1)
    assert rows == [{"region": "US", "amount": 2}] and total == 1
    for sql, params in sent:
        assert "'US'" not in sql and "US" not in sql.replace("USING", "")  # never pasted into the SQL
        assert ["US"] in params
    assert sent[0][1] == [["US"], 1, 0]  # filter values, LIMIT, OFFSET
    assert "= ANY(%s)" in sent[0][0]


def test_a_filter_value_that_looks_like_sql_is_only_a_value(sales, source_db):
    evil = RowFilter(clauses=(Clause("region", frozenset({"US' OR '1'='1", "x'); DROP TABLE sales; --"})),))
    assert read_page(sales, evil, page=1, page_size=100) == ([], 0)
    assert live.count(sales, ALL) == 2  # the table is still there


def test_filters_fail_closed(sales, sent):
    assert live.count(sales, RowFilter.deny("no policy")) == 0
    assert live.count(sales, RowFilter(clauses=(Clause("nope", frozenset({"x"})),))) == 0
    assert live.count(sales, RowFilter(clauses=(Clause("region", frozenset()),))) == 0
    assert sent == []  # nothing was even asked of the source


def test_exports_and_distinct_values_are_filtered(sales):
    batches = list(live.batches(sales, US, 1))
    assert [r for b in batches for r in b.to_pylist()] == [{"region": "US", "amount": 2}]
    assert live.distinct_values(sales, US, "region", 10) == ["US"]
    assert live.distinct_values(sales, ALL, "region", 10) == ["EU", "US"]
    assert live.table(sales, US).num_rows == 1


def test_query_reads_data_filtered_before_anything_the_caller_wrote(sales, sent):
    rows, total, columns = live.run_query(
        sales, US, "SELECT region, sum(amount) AS s FROM data GROUP BY region", page=1, page_size=10
    )
    assert rows == [{"region": "US", "s": 2}] and total == 1 and columns == ["region", "s"]
    shadow = "WITH data AS (SELECT * FROM data) SELECT count(*) AS n FROM data"
    assert live.run_query(sales, US, shadow, page=1, page_size=10)[0] == [{"n": 1}]
    union = "SELECT region FROM data UNION ALL SELECT region FROM (SELECT * FROM data) AS sales"
    assert {r["region"] for r in live.run_query(sales, US, union, page=1, page_size=10)[0]} == {"US"}
    assert all("US" not in sql for sql, _ in sent)


HIDDEN_ROW_ORACLES = [
    # Each errors only on the EU row (amount 1), which a US reader must not learn exists.
    "SELECT * FROM data WHERE 1 / (CASE WHEN amount = 1 THEN 0 ELSE 1 END) = 1",
    "SELECT * FROM data WHERE CAST(CASE WHEN amount = 1 THEN 'x' ELSE '1' END AS INTEGER) = 1",
    "SELECT * FROM data AS d JOIN data AS e ON 1 / (CASE WHEN d.amount = 1 THEN 0 ELSE 1 END) = 1",
    "SELECT * FROM (SELECT * FROM data WHERE 1 / (CASE WHEN region = 'EU' THEN 0 ELSE 1 END) = 1) AS s",
]


# A filter of many values costs the planner more than a cheap predicate of the caller's,
# so without the fence PostgreSQL evaluates the caller's predicate first, on every row.
MANY_US = RowFilter(clauses=(Clause("region", frozenset({"US", *(f"other-{i}" for i in range(50))})),))


@pytest.mark.parametrize("sql", [*HIDDEN_ROW_ORACLES, "SELECT * FROM data WHERE amount / (amount - 1) = 2"])
@pytest.mark.parametrize("row_filter", [US, MANY_US], ids=["one_value", "many_values"])
def test_the_callers_expressions_never_see_filtered_out_rows(sales, sql, row_filter):
    rows, _, _ = live.run_query(sales, row_filter, sql, page=1, page_size=10)
    assert rows and all(row["region"] == "US" for row in rows)


@pytest.mark.parametrize("sql,count", LEGITIMATE.values(), ids=list(LEGITIMATE))
def test_legitimate_queries_run_on_the_source(sales, sql, count):
    assert live.run_query(sales, ALL, sql, page=1, page_size=100)[1] == count


@pytest.mark.parametrize("sql", ATTACKS.values(), ids=list(ATTACKS))
def test_every_sandbox_attack_fails_on_a_live_source_too(sales, sql):
    try:
        rows, _, _ = live.run_query(sales, ALL, sql, page=1, page_size=1000)
    except InvalidRequest as refused:
        assert refused.code == "invalid_query" and refused.status == 400
        return
    assert all(set(row) <= {"region", "amount"} for row in rows), rows
    assert all(row in DATA_ROWS for row in rows)


POSTGRES_ATTACKS = [
    "SELECT pg_sleep(10) FROM data",
    "SELECT pg_read_file('/etc/passwd') FROM data",
    "SELECT current_setting('data_directory') FROM data",
    "SELECT set_config('default_transaction_read_only', 'off', true) FROM data",
    "SELECT query_to_xml('select * from other_secret', true, true, '') FROM data",
    "SELECT version() FROM data",
    "SELECT current_user FROM data",
    "SELECT current_database() FROM data",
    "SELECT inet_server_addr() FROM data",
    "SELECT CAST('other_secret' AS regclass) FROM data",
    "SELECT 'other_secret'::regclass FROM data",
    "SELECT * FROM other_secret",
    "SELECT * FROM public.other_secret",
    "SELECT * FROM data, other_secret",
    "SELECT (SELECT v FROM other_secret) FROM data",
    "SELECT * FROM pg_catalog.pg_user",
    "SELECT * FROM information_schema.tables",
    "SELECT lo_import('/etc/passwd') FROM data",
    "SELECT dblink('x', 'y') FROM data",
    "SELECT txid_current() FROM data",
    "SELECT nextval('s') FROM data",
    "SELECT pg_terminate_backend(1) FROM data",
    "SELECT * FROM data; DELETE FROM sales",
    "DELETE FROM data",
    "SELECT * FROM data FOR UPDATE",
    "SELECT region INTO stolen FROM data",
    "SELECT '%s' AS a, '%(x)s' AS b, '%%' AS c FROM data",
]


@pytest.mark.parametrize("sql", POSTGRES_ATTACKS)
def test_postgresql_specific_attacks_are_refused_or_harmless(sales, source_db, sql):
    try:
        rows, _, _ = live.run_query(sales, US, sql, page=1, page_size=1000)
    except InvalidRequest as refused:
        assert refused.status == 400 and refused.code == "invalid_query"
        assert "do-not-leak" not in refused.message
    else:
        assert "do-not-leak" not in repr(rows) and "EU" not in repr(rows)
    assert live.count(sales, ALL) == 2  # nothing was written


def test_percent_signs_in_queries_are_text_not_parameters(sales):
    rows, _, _ = live.run_query(sales, US, "SELECT '%s' AS a, region LIKE 'U%' AS b FROM data", page=1, page_size=10)
    assert rows == [{"a": "%s", "b": True}]


def test_the_transaction_is_read_only_even_for_the_configured_query(source_db, allowed):
    writer = target(source_db, query="SELECT region, amount FROM sales")
    assert live.count(writer, ALL) == 2
    refused = target(source_db, query="SELECT 'x' AS region, 1 AS amount FROM (SELECT nextval('nope_seq')) AS s")
    with pytest.raises(InvalidRequest):
        live.count(refused, ALL)


def test_a_down_source_answers_503_quickly(source_db, allowed):
    down = live.Target(
        "src_down",
        live.dialect_of("postgresql"),
        {**source_db["config"], "port": 1, "table": "sales"},
        {},
        None,
        (("region", "string"), ("amount", "integer")),
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        read_page(down, ALL, page=1, page_size=10)
    assert info.value.status == 503 and info.value.code == "source_unavailable"
    assert time.monotonic() - started < 3


def test_a_slow_source_answers_504_within_the_timeout(source_db, allowed):
    slow = target(source_db, query="SELECT region, amount FROM sales, pg_sleep(10) AS s")
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        live.count(slow, ALL)
    assert info.value.status == 504 and info.value.code == "source_timeout"
    assert time.monotonic() - started < 4  # the timeout is 2 s
    assert live.count(target(source_db), ALL) == 2  # the pool recovered


def test_a_host_outside_the_egress_policy_is_refused(source_db):
    egress.configure("")  # public addresses only: loopback is not
    try:
        with pytest.raises(InvalidRequest) as info:
            live.read_columns(live.target_for_config("postgresql", {**source_db["config"], "table": "sales"}, {}))
        assert info.value.code == "connector_host_not_allowed"
    finally:
        allow(source_db)


def test_no_password_in_errors(source_db, allowed):
    secret = {"password": "pw-L1VE-do-not-leak"}
    t = live.Target(
        "src_pw",
        live.dialect_of("postgresql"),
        {**source_db["config"], "port": 1, "table": "t"},
        secret,
        "tok",
        (("x", "string"),),
    )
    with pytest.raises(ServiceUnavailable) as info:
        live.count(t, ALL)
    assert "pw-L1VE" not in info.value.message


def test_a_query_under_a_filter_that_denies_everything_reads_no_row(sales):
    denied = RowFilter.deny("no policy")
    assert live.run_query(sales, denied, "SELECT count(*) AS n FROM data", page=1, page_size=10)[0] == [{"n": 0}]
    with pytest.raises(InvalidRequest):
        live.run_query(sales, denied, "SELECT version() FROM data", page=1, page_size=10)  # refused all the same


def test_no_free_connection_answers_503_within_the_timeout(sales):
    live.configure(pool_size=1)
    try:
        with sales.pool().connection(2):  # the only connection, held
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                live.count(sales, ALL)
            assert info.value.code == "source_busy" and time.monotonic() - started < 3
        assert live.count(sales, ALL) == 2  # released: served again
    finally:
        live.configure(pool_size=2)
