"""Connectors reach only where an admin allowed (issue 8, section 4).

No test here sends traffic anywhere but loopback: non-loopback addresses are only ever
data. `psycopg.connect` and Python sockets are intercepted so that a connection attempt
the policy should have stopped fails the test instead of leaving the machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sqlite3
import time
import uuid

import psycopg
import pytest

from tidegate.data import connectors, egress
from tidegate.errors import InvalidRequest

PG_URL = os.environ.get("TIDEGATE_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
BASE = {"database": "d", "user": "u", "table": "t", "connect_timeout": 2}


class ConnectAttempted(AssertionError):
    pass


@pytest.fixture
def no_connections(monkeypatch):
    """Any connection attempt fails the test; psycopg.connect calls are recorded first."""
    calls: list[dict] = []

    def fake_connect(*args, **kwargs):
        calls.append(kwargs)
        raise ConnectAttempted(f"psycopg.connect was called: {kwargs.get('hostaddr')}")

    def no_socket(*args, **kwargs):
        raise ConnectAttempted("a socket connection was attempted")

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    return calls


@pytest.fixture
def fake_dns(monkeypatch):
    """getaddrinfo answers from a table (answers are consumed one per lookup, the last repeats)."""
    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


@pytest.fixture(autouse=True)
def own_database(monkeypatch):
    """tidegate's own database for these tests (changed by the tests that need another)."""
    monkeypatch.setattr(egress, "_own_database_url", lambda: "sqlite:////nonexistent/tidegate.db")
    egress.configure("")  # TIDEGATE_CONNECTOR_ALLOW unset: public addresses only
    yield
    egress.configure("")


def pull_pg(host, port=5432, **config):
    return connectors.pull("postgresql", {**BASE, "host": host, "port": port, **config}, None)


def refusal(fn, *args, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# ---------------------------------------------------------------------------------------
# Default policy: public addresses only, refused before any connection
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "::1",
        "localhost",
        "0.0.0.0",
        "::",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.10",
        "169.254.169.254",
        "100.64.0.1",
        "fe80::1",
        "fd00::1",
        "224.0.0.1",
        "255.255.255.255",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::a00:1",
    ],
)
def test_default_policy_refuses_internal_addresses_before_connecting(no_connections, host):
    error = refusal(pull_pg, host)
    assert error.code == "connector_host_not_allowed"
    assert no_connections == []


def test_a_name_resolving_to_loopback_is_refused(no_connections, fake_dns):
    answers, _ = fake_dns
    answers["db.example.com"] = [["127.0.0.1"]]
    assert refusal(pull_pg, "db.example.com").code == "connector_host_not_allowed"
    answers["mixed.example.com"] = [["93.184.216.34", "10.1.2.3"]]  # every address must pass
    assert refusal(pull_pg, "mixed.example.com").code == "connector_host_not_allowed"
    assert no_connections == []


def test_public_address_is_allowed_and_connected_by_checked_address(no_connections, fake_dns):
    answers, _ = fake_dns
    answers["db.example.com"] = [["93.184.216.34"]]
    with pytest.raises(ConnectAttempted):
        pull_pg("db.example.com")
    assert [(c["host"], c["hostaddr"], c["port"]) for c in no_connections] == [
        ("db.example.com", "93.184.216.34", 5432)
    ]


def test_dns_rebinding_cannot_redirect_the_connection(no_connections, fake_dns):
    # First answer public (checked), every later answer loopback: the connection must go to
    # the checked address, resolved once, never to a second answer.
    answers, lookups = fake_dns
    answers["rebind.example.com"] = [["93.184.216.34"], ["127.0.0.1"]]
    with pytest.raises(ConnectAttempted):
        pull_pg("rebind.example.com")
    assert lookups == ["rebind.example.com"]
    assert no_connections[0]["hostaddr"] == "93.184.216.34"


def test_unresolvable_name_and_every_connection_failure_answer_alike(monkeypatch, fake_dns):
    answers, _ = fake_dns
    answers["db.example.com"] = [["93.184.216.34"]]
    messages = set()

    for failure in (
        "connection refused",
        "timeout expired",
        "No route to host",
        'password authentication failed for user "u"',
    ):

        def fail(*args, failure=failure, **kwargs):
            raise psycopg.OperationalError(failure)

        monkeypatch.setattr(psycopg, "connect", fail)
        error = refusal(pull_pg, "db.example.com")
        assert error.code == "connector_unreachable"
        messages.add(error.message)
    assert len(messages) == 1 and "refused" not in messages.pop()
    error = refusal(pull_pg, "no-such-host.invalid")
    assert error.code == "connector_unreachable"


# ---------------------------------------------------------------------------------------
# TIDEGATE_CONNECTOR_ALLOW: only what it lists
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allow,host,port,allowed",
    [
        ("127.0.0.1:5432", "127.0.0.1", 5432, True),
        ("127.0.0.1:5432", "127.0.0.1", 5433, False),
        ("127.0.0.1:5432", "127.0.0.2", 5432, False),
        ("127.0.0.1:5432", "93.184.216.34", 5432, False),  # set: public is no longer implied
        ("127.0.0.0/8", "127.9.9.9", 6000, True),
        ("10.0.0.0/8:5432", "10.2.3.4", 5432, True),
        ("10.0.0.0/8:5432", "10.2.3.4", 22, False),
        ("[::1]:5432", "::1", 5432, True),
        ("[::1]:5432", "127.0.0.1", 5432, False),
        ("fd00::/8", "fd12::1", 5432, True),
        ("public, 10.1.1.1", "93.184.216.34", 5432, True),
        ("public, 10.1.1.1", "10.1.1.1", 5432, True),
        ("public, 10.1.1.1", "10.1.1.2", 5432, False),
        ("localhost:5432", "localhost", 5432, True),
        ("localhost:5432", "127.0.0.1", 5432, False),  # a name entry allows that name only
    ],
)
def test_allowlist(monkeypatch, no_connections, allow, host, port, allowed):
    egress.configure(allow)
    if allowed:
        with pytest.raises(ConnectAttempted):
            pull_pg(host, port)
        assert no_connections[0]["port"] == port
    else:
        assert refusal(pull_pg, host, port).code == "connector_host_not_allowed"
        assert no_connections == []


@pytest.mark.parametrize("bad", ["10.0.0.1:99999", "[::1", "db:port", "a b", "10.0.0.0/8:x"])
def test_a_malformed_setting_fails_closed(monkeypatch, no_connections, bad):
    with pytest.raises(ValueError, match=egress.ENV):
        egress.configure(bad)
    assert refusal(pull_pg, "93.184.216.34").code == "connector_host_not_allowed"
    assert no_connections == []


def test_an_entry_naming_no_destination_allows_nothing():
    # The parser never makes one (every entry is public, a host or a network); built by hand,
    # it fails closed instead of raising.
    address = ipaddress.ip_address("10.0.0.1")
    assert not egress._entry_allows(egress.AllowEntry(), "10.0.0.1", 5432, address, (frozenset(), None))


def test_tidegates_own_database_server_is_refused(monkeypatch, no_connections):
    monkeypatch.setattr(egress, "_own_database_url", lambda: "postgresql+psycopg://tg@10.9.8.7:6543/tidegate")
    egress.configure("10.0.0.0/8")
    assert refusal(pull_pg, "10.9.8.7", 6543).code == "connector_host_not_allowed"
    with pytest.raises(ConnectAttempted):  # another port of that host: the network entry allows it
        pull_pg("10.9.8.7", 5432)
    egress.configure("10.0.0.0/8,10.9.8.7:6543")  # named with its port: the admin's choice
    with pytest.raises(ConnectAttempted):
        pull_pg("10.9.8.7", 6543)
    # A public metadata database: never "public", on any port.
    monkeypatch.setattr(egress, "_own_database_url", lambda: "postgresql+psycopg://tg@93.184.216.34:5432/tg")
    egress.configure("")
    calls = len(no_connections)
    for port in (5432, 5433):
        assert refusal(pull_pg, "93.184.216.34", port).code == "connector_host_not_allowed"
    assert len(no_connections) == calls


def test_api_refuses_a_loopback_connector_with_the_precise_code(client, org, monkeypatch):
    real_connect = psycopg.connect

    def connect(*args, **kwargs):
        # Connectors connect with keyword parameters (host=...); the server's own background
        # connections (its epoch lease listener) pass a conninfo string and are let through.
        if "host" in kwargs:
            pytest.fail("connected to the connector's host")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", connect)
    r = client.post(
        "/api/v1/sources",
        headers=org.headers(),
        json={
            "name": "pg",
            "connector_id": "postgresql",
            "config": {"host": "127.0.0.1", "database": "test", "user": "root", "table": "users"},
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "connector_host_not_allowed"


# ---------------------------------------------------------------------------------------
# Read-only and time-limited, against the local server (loopback, allowed explicitly)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database():
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    name = f"tg_egress_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(PG_URL)
    with psycopg.connect(**{**info, "dbname": name}, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        conn.execute("CREATE SEQUENCE s")
        # A write hidden in a function: only the read-only transaction stops it.
        conn.execute("CREATE FUNCTION wipe() RETURNS int LANGUAGE sql AS 'DELETE FROM t; SELECT 1'")
    yield {
        "host": info.get("host", "127.0.0.1"),
        "port": int(info.get("port", 5432)),
        "database": name,
        "user": info.get("user", "root"),
        "connect_timeout": 3,
    }
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def pg(pg_database, monkeypatch):
    egress.configure(f"{pg_database['host']}:{pg_database['port']}")
    return pg_database


@pytest.mark.parametrize(
    "query",
    [
        "SELECT wipe()",
        "SELECT nextval('s')",
        "SELECT set_config('default_transaction_read_only', 'off', false), nextval('s')",
    ],
)
def test_connector_reads_are_read_only(pg, query):
    error = refusal(connectors.pull, "postgresql", {**pg, "query": query}, None)
    assert error.code == "connector_error" and "read-only" in error.message
    assert connectors.pull("postgresql", {**pg, "table": "t"}, None).num_rows == 2


def test_statement_timeout_is_honored(pg, monkeypatch):
    monkeypatch.setattr(connectors, "_statement_timeout_seconds", 1)  # TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS
    began = time.monotonic()
    error = refusal(connectors.pull, "postgresql", {**pg, "query": "SELECT pg_sleep(10) AS x"}, None)
    assert error.code == "connector_timeout"
    assert time.monotonic() - began < 5
    # rows that trickle in are bounded as a whole too
    began = time.monotonic()
    error = refusal(
        connectors.pull, "postgresql", {**pg, "query": "SELECT pg_sleep(0.3) AS x FROM generate_series(1, 30)"}, None
    )
    assert error.code == "connector_timeout" and time.monotonic() - began < 5


def test_loopback_without_an_entry_is_refused_even_though_a_server_listens(pg_database, no_connections):
    error = refusal(connectors.pull, "postgresql", {**pg_database, "table": "t"}, None)
    assert error.code == "connector_host_not_allowed"
    assert no_connections == []


# ---------------------------------------------------------------------------------------
# SQLite connector: never tidegate's own database
# ---------------------------------------------------------------------------------------


def test_sqlite_connector_cannot_read_tidegates_own_database(tmp_path, monkeypatch, settings):
    shared = tmp_path / "shared"
    shared.mkdir()
    own = shared / "tidegate.db"
    with sqlite3.connect(own) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE users (email TEXT)")
        conn.execute("INSERT INTO users VALUES ('victim@other-tenant.example')")
        keep_open = sqlite3.connect(own)  # holds -wal and -shm in place
        keep_open.execute("SELECT * FROM users").fetchall()
    other = shared / "reports.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (email TEXT)")
    home = tmp_path / "home"
    home.mkdir()
    (home / "copy.db").write_bytes(other.read_bytes())
    os.link(own, shared / "innocent.db")
    (shared / "link.db").symlink_to(own)
    own_settings = dataclasses.replace(settings, home=home, database_url=f"sqlite:///{own}")
    monkeypatch.setattr("tidegate.config.get_settings", lambda: own_settings)
    connectors.configure(sqlite_dirs=[shared, home])
    try:
        for path in (own, shared / "innocent.db", shared / "link.db", home / "copy.db"):
            error = refusal(connectors.pull, "sqlite", {"path": str(path), "table": "users"}, None)
            assert error.code == "connector_error" and "victim" not in error.message
        if (shared / "tidegate.db-wal").exists():
            error = refusal(
                connectors.pull, "sqlite", {"path": str(shared / "tidegate.db-wal"), "table": "users"}, None
            )
            assert error.code == "connector_error"
        assert connectors.pull("sqlite", {"path": str(other), "table": "users"}, None).num_rows == 0
    finally:
        connectors.configure(sqlite_dirs=[])
        keep_open.close()


def test_sqlite_connector_time_limit(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    path = allowed / "x.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    connectors.configure(sqlite_dirs=[allowed])
    monkeypatch.setattr(connectors, "_statement_timeout_seconds", 1)  # TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS
    try:
        began = time.monotonic()
        query = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
        error = refusal(connectors.pull, "sqlite", {"path": str(path), "query": query}, None)
        assert error.code == "connector_error" and time.monotonic() - began < 5
    finally:
        connectors.configure(sqlite_dirs=[])
