"""Connectors against a real PostgreSQL server and real SQLite files; secrets at rest."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import uuid

import psycopg
import pytest

from tidegate.catalog.models import Source
from tidegate.data import connectors, egress, ingest
from tidegate.errors import InvalidRequest

PG_URL = os.environ.get("TIDEGATE_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
PASSWORD = "pw-S3CRET-do-not-leak"


def refused(fn, *args, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# ---------------------------------------------------------------------------------------
# Registry and configuration
# ---------------------------------------------------------------------------------------


def test_registry_lists_both_connectors():
    listed = {c["id"]: c for c in connectors.list_connectors()}
    assert set(listed) == {"postgresql", "sqlite"}
    assert listed["postgresql"]["service"] == "postgresql" and listed["postgresql"]["status"] == "available"
    assert listed["postgresql"]["secret_fields"] == ["password"]


def test_password_in_config_is_moved_to_the_secret():
    public, secret = connectors.split_config(
        "postgresql", {"host": "db", "database": "d", "user": "u", "table": "t", "password": PASSWORD}
    )
    assert "password" not in public and secret == {"password": PASSWORD}
    assert public == {"host": "db", "database": "d", "user": "u", "table": "t", "port": 5432, "connect_timeout": 10}


@pytest.mark.parametrize(
    "connector_type,config,code",
    [
        ("mysql", {}, "unknown_connector"),
        ("postgresql", [], "invalid_connector_config"),
        ("postgresql", {"host": "h", "database": "d", "user": "u"}, "invalid_connector_config"),  # no table/query
        (
            "postgresql",
            {"host": "h", "database": "d", "user": "u", "table": "t", "query": "select 1"},
            "invalid_connector_config",
        ),
        ("postgresql", {"database": "d", "user": "u", "table": "t"}, "invalid_connector_config"),
        (
            "postgresql",
            {"host": "h", "database": "d", "user": "u", "table": "t", "port": 70000},
            "invalid_connector_config",
        ),
        (
            "postgresql",
            {"host": "h", "database": "d", "user": "u", "table": "t", "sslmode": "sometimes"},
            "invalid_connector_config",
        ),
        (
            "postgresql",
            {"host": "h", "database": "d", "user": "u", "table": "t", "dsn": "x"},
            "invalid_connector_config",
        ),
        ("postgresql", {"host": 5, "database": "d", "user": "u", "table": "t"}, "invalid_connector_config"),
        (
            "postgresql",
            {"host": "/var/run/postgresql", "database": "d", "user": "u", "table": "t"},
            "invalid_connector_config",
        ),
        ("postgresql", {"host": "a,b", "database": "d", "user": "u", "table": "t"}, "invalid_connector_config"),
        (
            "postgresql",
            {"host": "h", "database": "d", "user": "u", "table": "t", "password": 123},
            "invalid_connector_config",
        ),
        ("sqlite", {"table": "t"}, "invalid_connector_config"),
        ("sqlite", {"path": "relative.db", "table": "t"}, "invalid_connector_config"),
    ],
)
def test_bad_configuration_is_refused(connector_type, config, code):
    assert refused(connectors.pull, connector_type, config, None).code == code


def test_secret_encryption_round_trip_and_key_binding():
    key = b"a" * 64
    token = connectors.encrypt_secret({"password": PASSWORD}, key)
    assert PASSWORD not in token
    assert connectors.decrypt_secret(token, key) == {"password": PASSWORD}
    assert connectors.encrypt_secret({"password": PASSWORD}, key) != token  # randomized
    assert refused(connectors.decrypt_secret, token, b"b" * 64).code == "connector_secret_unreadable"
    assert connectors.decrypt_secret(None, key) == {}


def test_configure_source_stores_only_the_encrypted_secret():
    key = b"k" * 64
    source = Source(id="src_x", org_id="org_x", name="n", created_by="usr_x")
    connectors.configure_source(
        source, "postgresql", {"host": "h", "database": "d", "user": "u", "table": "t", "password": PASSWORD}, key
    )
    assert source.service == source.connector_id == "postgresql"
    assert "password" not in source.connector_config and PASSWORD not in repr(source)
    assert PASSWORD not in source.connector_secret_encrypted
    # an update without a password keeps the stored one
    connectors.configure_source(source, "postgresql", {"host": "h2", "database": "d", "user": "u", "table": "t"}, key)
    assert connectors.decrypt_secret(source.connector_secret_encrypted, key) == {"password": PASSWORD}
    assert source.connector_config["host"] == "h2"


# ---------------------------------------------------------------------------------------
# PostgreSQL (a real server; own database, dropped afterwards)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server():
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    name = f"tg_conn_{uuid.uuid4().hex[:10]}"
    role = f"tg_role_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'")
    conninfo = psycopg.conninfo.conninfo_to_dict(PG_URL)
    with psycopg.connect(**{**conninfo, "dbname": name}, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE orders (
                id bigint PRIMARY KEY, region text, amount numeric(10, 2), qty integer, paid boolean,
                day date, at timestamp, at_tz timestamptz, meta jsonb, ref uuid, note varchar(20)
            )""")
        conn.execute("""
            INSERT INTO orders VALUES
            (1, 'EU', 10.50, 2, true, '2024-01-01', '2024-01-01 10:00:00', '2024-01-01 12:00:00+02', '{"a": 1}',
             '6f1c2a50-0000-4000-8000-000000000001', 'first'),
            (2, 'US', NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL),
            (3, 'EU', 3, 7, NULL, '2024-03-01', '2024-03-01 00:00:00', '2024-03-01 00:00:00+00', '[1, 2]',
             NULL, 'third')""")
        conn.execute("CREATE SCHEMA sales")
        conn.execute('CREATE TABLE sales."Odd ""Name""" (x int)')
        conn.execute('INSERT INTO sales."Odd ""Name""" VALUES (42)')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    config = {
        "host": conninfo.get("host", "127.0.0.1"),
        "port": int(conninfo.get("port", 5432)),
        "database": name,
        "user": conninfo.get("user", "root"),
    }
    yield {"config": config, "role": role, "name": name}
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    admin.close()


@pytest.fixture
def pg(pg_server, monkeypatch):
    """The test server, explicitly allowed by the egress policy (loopback is refused by default)."""
    config = pg_server["config"]
    egress.configure(f"{config['host']}:{config['port']},{config['host']}:1")  # TIDEGATE_CONNECTOR_ALLOW
    yield pg_server
    egress.configure("")


def test_postgresql_table_with_declared_types(pg):
    table = connectors.pull("postgresql", {**pg["config"], "table": "orders"}, {"password": PASSWORD})
    assert ingest.columns_of(table) == [
        {"name": "id", "type": "integer"},
        {"name": "region", "type": "string"},
        {"name": "amount", "type": "float"},
        {"name": "qty", "type": "integer"},
        {"name": "paid", "type": "boolean"},
        {"name": "day", "type": "date"},
        {"name": "at", "type": "timestamp"},
        {"name": "at_tz", "type": "timestamp"},
        {"name": "meta", "type": "string"},
        {"name": "ref", "type": "string"},
        {"name": "note", "type": "string"},
    ]
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert rows[0] == {
        "id": 1,
        "region": "EU",
        "amount": 10.5,
        "qty": 2,
        "paid": True,
        "day": dt.date(2024, 1, 1),
        "at": dt.datetime(2024, 1, 1, 10),
        "at_tz": dt.datetime(2024, 1, 1, 10),
        "meta": '{"a":1}',
        "ref": "6f1c2a50-0000-4000-8000-000000000001",
        "note": "first",
    }
    assert rows[1]["amount"] is None and rows[1]["paid"] is False


def test_postgresql_query_and_schema_qualified_table(pg):
    table = connectors.pull(
        "postgresql",
        {**pg["config"], "query": "SELECT region, count(*) AS n FROM orders GROUP BY region ORDER BY region"},
        None,
    )
    assert table.to_pylist() == [{"region": "EU", "n": 2}, {"region": "US", "n": 1}]
    odd = connectors.pull("postgresql", {**pg["config"], "schema": "sales", "table": 'Odd "Name"'}, None)
    assert odd.to_pylist() == [{"x": 42}]


def test_postgresql_with_a_password_user(pg):
    config = {**pg["config"], "user": pg["role"], "table": "orders", "password": PASSWORD}
    assert connectors.pull("postgresql", config, None).num_rows == 3


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM orders RETURNING *",
        "UPDATE orders SET region = 'X' RETURNING id",
        "SELECT 1; DELETE FROM orders",
        "CREATE TABLE pwned AS SELECT 1",
    ],
)
def test_postgresql_query_mode_cannot_write(pg, query):
    error = refused(connectors.pull, "postgresql", {**pg["config"], "query": query}, None)
    assert error.code == "connector_error"
    assert connectors.pull("postgresql", {**pg["config"], "table": "orders"}, None).num_rows == 3


@pytest.mark.parametrize(
    "change",
    [
        {"database": "no_such_database_xyz"},
        {"user": "no_such_role_xyz"},
        {"port": 1},  # nothing listens there
        {"host": "no-such-host.invalid"},
    ],
)
def test_postgresql_connection_failures_never_show_the_password(pg, change):
    config = {**pg["config"], "table": "orders", "password": PASSWORD, **change, "connect_timeout": 3}
    error = refused(connectors.pull, "postgresql", config, None)
    assert error.code == "connector_unreachable"
    assert PASSWORD not in error.message and PASSWORD not in str(error) and PASSWORD not in repr(error.args)
    # One message for every failure (no name, nothing listening, bad database, bad user):
    # the answer tells a port scan nothing but what was asked.
    assert error.message == (
        f"Could not connect to the database at {config['host']}:{config['port']}; "
        "check the host, port, database, user and password."
    )


def test_postgresql_errors_are_scrubbed_of_the_password(pg):
    # A driver message that would echo the secret (here through an identifier) is scrubbed.
    error = refused(connectors.pull, "postgresql", {**pg["config"], "table": PASSWORD}, {"password": PASSWORD})
    assert error.code == "connector_error" and PASSWORD not in error.message and "***" in error.message


def test_postgresql_missing_table(pg):
    error = refused(connectors.pull, "postgresql", {**pg["config"], "table": "nope"}, None)
    assert error.code == "connector_error" and "nope" in error.message


# ---------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_file(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    path = allowed / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE items (id INTEGER, name TEXT, price REAL, added TEXT, "we""ird" TEXT)')
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
            [(1, "pen", 1.5, "2024-01-01", "a"), (2, "ink", None, "2024-02-01", None), (3, "cap", 2.0, None, "c")],
        )
    (tmp_path / "outside.db").write_bytes(path.read_bytes())
    connectors.configure(sqlite_dirs=[allowed])
    yield path
    connectors.configure(sqlite_dirs=[])
    conn.close()


def test_sqlite_table_and_query(sqlite_file):
    table = connectors.pull("sqlite", {"path": str(sqlite_file), "table": "items"}, None)
    assert ingest.columns_of(table) == [
        {"name": "id", "type": "integer"},
        {"name": "name", "type": "string"},
        {"name": "price", "type": "float"},
        {"name": "added", "type": "date"},
        {"name": 'we"ird', "type": "string"},
    ]
    assert table.num_rows == 3
    summary = connectors.pull(
        "sqlite", {"path": str(sqlite_file), "query": "SELECT count(*) AS n, max(price) AS top FROM items"}, None
    )
    assert summary.to_pylist() == [{"n": 3, "top": 2.0}]


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM items",
        "INSERT INTO items (id) VALUES (9)",
        "ATTACH DATABASE '/etc/passwd' AS x",
        "PRAGMA table_info(items)",
        "SELECT * FROM items; DELETE FROM items",
        "SELECT load_extension('/tmp/evil.so')",
        "CREATE TABLE t (x)",
    ],
)
def test_sqlite_is_read_only_and_sandboxed(sqlite_file, query):
    error = refused(connectors.pull, "sqlite", {"path": str(sqlite_file), "query": query}, None)
    assert error.code == "connector_error"
    assert connectors.pull("sqlite", {"path": str(sqlite_file), "table": "items"}, None).num_rows == 3


def test_sqlite_path_must_be_allowed(sqlite_file, tmp_path):
    outside = tmp_path / "outside.db"
    assert refused(connectors.pull, "sqlite", {"path": str(outside), "table": "items"}, None).code == "connector_error"
    sneaky = sqlite_file.parent / ".." / "outside.db"
    assert refused(connectors.pull, "sqlite", {"path": str(sneaky), "table": "items"}, None).code == "connector_error"
    link = sqlite_file.parent / "link.db"
    link.symlink_to(outside)
    assert refused(connectors.pull, "sqlite", {"path": str(link), "table": "items"}, None).code == "connector_error"
    missing = sqlite_file.parent / "missing.db"
    assert refused(connectors.pull, "sqlite", {"path": str(missing), "table": "items"}, None).code == "connector_error"
    connectors.configure(sqlite_dirs=[])
    assert (
        refused(connectors.pull, "sqlite", {"path": str(sqlite_file), "table": "items"}, None).code == "connector_error"
    )


def test_sqlite_not_a_database(sqlite_file):
    junk = sqlite_file.parent / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    error = refused(connectors.pull, "sqlite", {"path": str(junk), "table": "items"}, None)
    assert error.code == "connector_error"
