"""Real clients against the endpoint: psycopg 3 (simple and extended protocol, server-side
cursors), psql, SQLAlchemy and pandas `read_sql` over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.pgwire.conftest import PRODUCTS, SALES, World


@pytest.fixture
def sales(world: World) -> World:
    world.source(SALES, "sales")
    world.source(PRODUCTS, "products")
    return world


def test_schema_listing_shows_the_keys_tables_in_public(sales: World):
    with sales.connect(sales.key()) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 2"
        ).fetchall()
        assert tables == [("public", "products"), ("public", "sales")]
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'sales' "
            "ORDER BY ordinal_position"
        ).fetchall()
        assert [c[0] for c in columns] == ["region", "product", "amount"]
        classes = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        assert classes == [("products",), ("sales",)]
        assert conn.execute("SELECT count(*) FROM pg_catalog.pg_index").fetchone() == (0,)
        assert conn.info.parameter_status("session_authorization").startswith("admin-")  # the key's owner
        row = conn.execute("SELECT current_database(), current_schema(), version()").fetchone()
        assert row[0] == sales.org_id and row[1] == "public" and row[2].startswith("PostgreSQL 16.0")


def test_a_join_of_two_sources_and_an_aggregate(sales: World):
    with sales.connect(sales.key()) as conn:
        joined = conn.execute(
            "SELECT s.region, p.label FROM public.sales s JOIN products p USING (product) "
            "WHERE s.amount >= 7 ORDER BY 1, 2"
        ).fetchall()
        assert joined == [("EU", "Cherries"), ("US", "Apples"), ("US", "Bananas")]
        totals = conn.execute("SELECT region, sum(amount)::int AS total FROM sales GROUP BY 1 ORDER BY 1").fetchall()
        assert totals == [("APAC", 1), ("EU", 12), ("US", 30)]


def test_extended_protocol_parameters_and_prepared_statements(sales: World):
    with sales.connect(sales.key()) as conn:
        query = "SELECT product, amount FROM sales WHERE region = %s AND amount > %s ORDER BY amount"
        assert conn.execute(query, ("US", 5)).fetchall() == [("a", 10), ("b", 20)]
        assert conn.execute(query, ("US", 5), prepare=True).fetchall() == [("a", 10), ("b", 20)]
        assert conn.execute(query, ("EU", 0), prepare=True).fetchall() == [("a", 5), ("c", 7)]
        # a quote in a parameter is a value, never SQL
        assert conn.execute("SELECT count(*) FROM sales WHERE region = %s", ("x' OR '1'='1",)).fetchone() == (0,)
        binary = conn.cursor(binary=True)
        assert binary.execute("SELECT amount, region FROM sales WHERE amount = %s", (20,)).fetchone() == (20, "US")


def test_a_large_result_streams_in_batches_through_a_server_side_cursor(world: World):
    world.big_source(1_000_000)
    with world.connect(world.key(), autocommit=False) as conn:
        with conn.cursor(name="big_cursor") as cursor:
            cursor.itersize = 10_000
            cursor.execute("SELECT n, label FROM big ORDER BY n")
            seen, total = 0, 0
            for n, label in cursor:
                assert label == f"row {n}"
                seen += 1
                total += n
        assert seen == 1_000_000 and total == sum(range(1_000_000))
        plain = conn.execute("SELECT n FROM big WHERE n < 3 ORDER BY n").fetchall()
        assert plain == [(0,), (1,), (2,)]


def test_session_commands_are_accepted_and_writes_refused(sales: World):
    with sales.connect(sales.key(), autocommit=False) as conn:
        conn.execute("SET search_path TO public")
        conn.execute("SET application_name = 'report'")
        assert conn.execute("SHOW transaction isolation level").fetchone() == ("read committed",)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        conn.commit()
        for sql in (
            "INSERT INTO sales VALUES ('US', 'z', 1)",
            "CREATE TABLE t (a int)",
            "COPY sales FROM STDIN",
            "DROP TABLE sales",
            "UPDATE sales SET amount = 0",
        ):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(sql)
            conn.rollback()
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)


def test_catalog_and_file_functions_stay_refused(sales: World):
    with sales.connect(sales.key()) as conn:
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM sales, read_parquet('/etc/passwd')",
            "SELECT * FROM duckdb_settings()",
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(sql).fetchall()


def test_psql_lists_and_queries(sales: World):
    env = {**os.environ, "PGPASSWORD": sales.key(), "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"}
    base = ["psql", "-h", "127.0.0.1", "-p", str(sales.port), "-U", "bi", "-d", sales.org_name, "-X", "-A", "-t"]

    def psql(command: str, environ: dict[str, str] = env) -> list[str]:
        done = subprocess.run([*base, "-c", command], env=environ, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr, (command, done.stderr)
        return done.stdout.split("\n")

    listed = psql(r"\dt")
    assert "public|products|table|tidegate" in listed and "public|sales|table|tidegate" in listed
    assert psql("SELECT region, count(*) FROM sales GROUP BY 1 ORDER BY 1")[:3] == ["APAC|1", "EU|2", "US|2"]
    # \d <table>, \d+, \l, \dn, \df: psql 15's own catalog queries, answered for the key's tables
    assert psql(r"\d sales")[:3] == ["region|text|||", "product|text|||", "amount|bigint|||"]
    assert psql(r"\d+ sales")[0].startswith("region|text|||")
    assert psql(r"\l")[0] == f"{sales.org_name}|tidegate|UTF8|C|C||libc|"
    assert psql(r"\dn")[0] == "public|tidegate" and psql(r"\dn")[1] == ""
    assert psql(r"\df") == [""]
    # a member's key lists, and describes, only what it may read
    member = sales.user()
    sales.source(SALES, "shared_sales", shared_with=[member])
    theirs = {**env, "PGPASSWORD": sales.key(member)}
    assert psql(r"\dt", theirs)[:2] == ["public|shared_sales|table|tidegate", ""]
    assert psql(r"\d shared_sales", theirs)[0] == "region|text|||"
    described = subprocess.run([*base, "-c", r"\d sales"], env=theirs, capture_output=True, text=True, timeout=60)
    assert "Did not find any relation" in described.stderr
    # \copy (select ...) to a file: COPY ... TO STDOUT, CSV with a header
    target = Path(sales.settings.home) / "export.csv"
    psql(rf"\copy (SELECT region, amount FROM sales WHERE amount > 5 ORDER BY amount) to '{target}' csv header")
    assert target.read_text() == "region,amount\nEU,7\nUS,10\nUS,20\n"


def test_copy_to_stdout_in_text_and_csv_formats(sales: World):
    with sales.connect(sales.key()) as conn:
        cursor = conn.cursor()
        query = (
            "SELECT region, NULLIF(product, 'c') AS p, 'a\tb,\"c\"' AS s FROM sales WHERE region = 'EU' ORDER BY 1, 2"
        )
        with cursor.copy(f"COPY ({query}) TO STDOUT") as copy:
            text = b"".join(bytes(block) for block in copy)
        assert text == b'EU\ta\ta\\tb,"c"\nEU\t\\N\ta\\tb,"c"\n'
        with cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
            csv = b"".join(bytes(block) for block in copy)
        assert csv == b'region,p,s\nEU,a,"a\tb,""c"""\nEU,,"a\tb,""c"""\n'
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), cursor.copy("COPY sales FROM STDIN") as copy:
            copy.write_row(("US", "z", 1))


def test_sqlalchemy_reads_through_the_psycopg_dialect(sales: World):
    url = sa.engine.URL.create(
        "postgresql+psycopg",
        username="bi",
        password=sales.key(),
        host="127.0.0.1",
        port=sales.port,
        database=sales.org_id,
        query={"sslmode": "require"},
    )
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT product, label FROM products ORDER BY product")).all()
            assert [tuple(r) for r in rows] == [("a", "Apples"), ("b", "Bananas"), ("c", "Cherries")]
            inspector = sa.inspect(conn)
            assert sorted(inspector.get_table_names()) == ["products", "sales"]
            columns = inspector.get_columns("sales")
            assert [(c["name"], type(c["type"])) for c in columns] == [
                ("region", sa.TEXT),
                ("product", sa.TEXT),
                ("amount", sa.BIGINT),
            ]
            assert inspector.get_pk_constraint("sales")["constrained_columns"] == []
            assert inspector.get_indexes("sales") == [] and inspector.get_foreign_keys("sales") == []
            assert inspector.get_schema_names() == ["information_schema", "public"]
    finally:
        engine.dispose()


# pandas lives apart from the server's virtualenv (Makefile `clients`): a BI user's client.
PYCLIENTS = Path(__file__).resolve().parents[2] / "build" / "pyclients"
READ_SQL = """
import json, sys
import pandas as pd
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1], poolclass=sa.pool.NullPool)
with engine.connect() as conn:
    frame = pd.read_sql(sa.text("SELECT region, sum(amount)::int AS total FROM sales GROUP BY 1 ORDER BY 1"), conn)
print(json.dumps({"version": pd.__version__, "records": frame.to_dict("records")}))
"""


def test_pandas_read_sql_through_sqlalchemy(sales: World):
    assert (PYCLIENTS / "pandas").is_dir(), "make clients installs pandas into build/pyclients"
    url = sa.engine.URL.create(
        "postgresql+psycopg",
        username="analyst",
        password=sales.key(),
        host="127.0.0.1",
        port=sales.port,
        database=sales.org_id,
        query={"sslmode": "require"},
    ).render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(PYCLIENTS)}
    out = subprocess.run([sys.executable, "-c", READ_SQL, url], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["version"].startswith("2.")
    assert result["records"] == [
        {"region": "APAC", "total": 1},
        {"region": "EU", "total": 12},
        {"region": "US", "total": 30},
    ]
