"""Governance over the wire, identical to REST: authentication, the key re-read before every
statement, policies, other organizations, audit, rate limits, connection caps, cancel."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import psycopg
import pytest
from sqlalchemy import select

from tests.pgwire.conftest import SALES, World, make_world, startup_error
from tidegate.audit.models import AuditEvent
from tidegate.data import service as data_service
from tidegate.pgwire import runner


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


def _refused(world: World, secret: str, *, database: str | None = None, tls_on: bool = True) -> str:
    """The SQLSTATE a start-up with `secret` is refused with (and psycopg is refused too)."""
    with pytest.raises(psycopg.OperationalError):
        world.connect(secret, database=database, sslmode="require" if tls_on else "disable").close()
    error = startup_error(world.port, secret, database or world.org_id, tls_on=tls_on)
    assert error.get("S") == "FATAL", error
    return error["C"]


def test_a_bad_revoked_or_foreign_key_fails_authentication_and_nothing_else(world: World, pg_settings):
    world.source(SALES, "sales")
    other = make_world(pg_settings)
    revoked = world.key()
    world.revoke(revoked)
    walled = world.key(ip_allowlist=["10.9.8.0/24"])
    cases = {
        "malformed": "qk_not_a_key",
        "unknown": world.key()[:-4] + "AAAA",
        "revoked": revoked,
        "another organization's": other.key(),
        "outside its IP allowlist": walled,
    }
    messages = set()
    for what, secret in cases.items():
        assert _refused(world, secret) == "28P01", what
        messages.add(startup_error(world.port, secret, world.org_id)["M"])
    assert messages == {'password authentication failed for user "bi"'}  # the same, whatever the reason
    # the database may be named by id or name; an unknown one fails the same way
    assert _refused(world, world.key(), database="no-such-org") == "28P01"
    with world.connect(world.key(), database=world.org_name) as conn:
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)


def test_a_password_never_reaches_the_log(world: World, caplog):
    secret = world.key()
    # not UTF-8: the decoding error's message would quote the bytes
    error = startup_error(world.port, secret.encode() + b"\xff\xfe", world.org_id)
    assert error["S"] == "FATAL" and error["C"] == "08P01"
    assert startup_error(world.port, secret[:-3], world.org_id)["C"] == "28P01"
    assert secret[:-3] not in caplog.text and secret[:-3] not in "".join(str(r.args) for r in caplog.records)


def test_passwords_are_refused_without_tls(world: World):
    assert _refused(world, world.key(), tls_on=False) == "28000"
    assert "TLS is required" in startup_error(world.port, world.key(), world.org_id, tls_on=False)["M"]


def test_plain_loopback_is_accepted_only_when_allowed(pg_settings):
    allowed = replace(pg_settings, pg=replace(pg_settings.pg, allow_plain_loopback=True))
    with runner.serving(allowed, tls_on=False) as server:
        world = make_world(allowed)
        world.port = server.port
        world.source(SALES, "sales")
        with world.connect(world.key(), sslmode="disable") as conn:
            assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)


def test_a_policy_edit_is_seen_by_the_next_statement(world: World):
    member = world.user()
    world.source(SALES, "sales", shared_with=[member])
    policy = world.policy("region", ["US"], users=[member])
    with world.connect(world.key(member)) as conn:
        regions = "SELECT DISTINCT region FROM sales ORDER BY 1"
        assert conn.execute(regions).fetchall() == [("US",)]
        world.edit_policy(policy, "region", ["EU", "APAC"])
        assert conn.execute(regions).fetchall() == [("APAC",), ("EU",)]
        with conn.cursor().copy("COPY sales (region) TO STDOUT") as copy:  # COPY reads the same rows
            assert sorted(bytes(b"".join(copy)).split()) == [b"APAC", b"EU", b"EU"]


def test_a_revoked_key_is_cut_off_mid_session(world: World):
    world.source(SALES, "sales")
    secret = world.key()
    with world.connect(secret) as conn:
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)
        world.revoke(secret)
        with pytest.raises(psycopg.Error) as cut:
            conn.execute("SELECT count(*) FROM sales").fetchall()
        assert cut.value.sqlstate == "28000" and "revoked" in str(cut.value)
        assert conn.closed or conn.broken


def test_a_deactivated_creator_cuts_their_keys_off(world: World):
    member = world.user()
    world.source(SALES, "sales", shared_with=[member])
    with world.connect(world.key(member)) as conn:
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)
        world.deactivate(member)
        with pytest.raises(psycopg.Error) as cut:
            conn.execute("SELECT 1").fetchall()
        assert cut.value.sqlstate == "28000"


def test_another_organizations_tables_are_invisible(world: World, pg_settings):
    other = make_world(pg_settings)
    other.source(SALES, "secret_sales")
    world.source(SALES, "sales")
    with world.connect(world.key()) as conn:
        names = conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
        assert ("secret_sales",) not in names and ("sales",) in names
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM secret_sales").fetchall()


def test_a_member_sees_only_the_sources_shared_with_them(world: World):
    member = world.user()
    world.source(SALES, "shared", shared_with=[member])
    private = world.source(SALES, "private")
    with world.connect(world.key(member)) as conn:
        names = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        assert names == [("shared",)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM private").fetchall()
        # the connection reuses what it opened only until an access change: each is seen next
        with world.tx() as s:
            data_service.share_source(s, world.admin, private, member, "view")
        assert conn.execute("SELECT count(*) FROM private").fetchone() == (5,)
        with world.tx() as s:
            data_service.write_rows(
                s, world.admin, private, [{"region": "US", "product": "z", "amount": 1}], replace=False
            )
        assert conn.execute("SELECT count(*) FROM private").fetchone() == (6,)
        with world.tx() as s:
            data_service.unshare_source(s, world.admin, private, member)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM private").fetchall()


def test_name_clashes_get_a_suffix(world: World):
    world.source(SALES[:1], "sales")
    world.source(SALES, "Sales")
    with world.connect(world.key()) as conn:
        names = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        assert sorted(n for (n,) in names) == ["Sales_2", "sales"]  # created second: the suffix
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (1,)
        assert conn.execute('SELECT count(*) FROM "Sales_2"').fetchone() == (5,)


def test_every_statement_is_an_audit_event(world: World, endpoint):
    source_id = world.source(SALES, "sales")
    secret = world.key()
    with world.connect(secret, application_name="Production BI Tool") as conn:
        conn.execute("SELECT region FROM sales WHERE amount > 5").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT nope FROM sales").fetchall()
    endpoint.journal.flush()
    with world.tx() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.key_id == world.keys[secret]).order_by(AuditEvent.timestamp)
        ).all()
        rows = [(e.action, e.ip_address, e.user_agent, e.target_id, e.details) for e in events]
    assert len(rows) == 2
    action, ip, agent, target, details = rows[0]
    assert (action, ip, agent, target) == ("pgwire.statement", "127.0.0.1", "Production BI Tool", source_id)
    assert details["tables"] == ["sales"] and details["source_ids"] == [source_id]
    assert details["rows_returned"] == 3 and details["duration_ms"] >= 0 and details["sqlstate"] is None
    assert details["application_name"] == "Production BI Tool"
    assert rows[1][4]["sqlstate"] is not None and rows[1][4]["rows_returned"] == 0


def test_statements_count_against_the_keys_rate_limit(world: World):
    world.source(SALES, "sales")
    with world.connect(world.key(rate_limit_per_minute=3)) as conn:
        for _ in range(3):
            conn.execute("SELECT count(*) FROM sales").fetchall()
        with pytest.raises(psycopg.Error) as limited:
            conn.execute("SELECT count(*) FROM sales").fetchall()
        assert limited.value.sqlstate == "53400"


def test_connections_per_key_are_capped(world: World):
    secret = world.key()
    open_ = [world.connect(secret) for _ in range(3)]
    try:
        assert _refused(world, secret) == "53300"
        with world.connect(world.key()) as other:  # another key is not affected
            assert other.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in open_:
            conn.close()
    with world.connect(secret) as again:  # closed connections are released
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_authentication_attempts_are_rate_limited_per_client_ip(pg_settings):
    tight = replace(pg_settings, pg=replace(pg_settings.pg, auth_attempts_per_minute=2))
    with runner.serving(tight) as server:
        server.auth_namespace = f"pgwire-auth-test-{id(server)}:"
        world = make_world(tight)
        world.port = server.port
        secret = world.key()
        world.connect(secret).close()
        assert startup_error(world.port, "qk_wrong", world.org_id)["C"] == "28P01"
        assert _refused(world, secret) == "28P01"  # a good key too, once the IP is over its limit


def test_a_cancel_request_interrupts_the_running_query(world: World):
    world.big_source(100_000)
    with world.connect(world.key()) as conn:
        # cancel_safe: libpq 17's non-blocking cancel (the blocking one holds the GIL, and this
        # server runs in a thread of the test process)
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM big a, big b WHERE a.n + b.n = -1").fetchall()
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (100_000,)


def test_a_demoted_creator_loses_what_only_their_role_showed(world: World):
    second_admin = world.user(role="admin")
    world.source(SALES, "sales")  # the first admin's, shared with no one
    with world.connect(world.key(second_admin, scopes=["data:read"])) as conn:
        assert conn.execute("SELECT count(*) FROM sales").fetchone() == (5,)
        world.set_role(second_admin, "member")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT count(*) FROM sales").fetchall()


def test_the_statement_timeout_and_result_limits_apply(pg_settings):
    # The size limit gets a generous deadline of its own: on a loaded machine reading 50,000
    # rows may take longer than the 1 s the timeout check uses.
    for timeout, max_result_bytes in ((1.0, None), (30.0, 200_000)):
        limits = replace(pg_settings.query_limits, timeout_seconds=timeout)
        tight = replace(pg_settings, query_limits=limits)
        if max_result_bytes is not None:  # TIDEGATE_PG_MAX_RESULT_BYTES
            tight = replace(tight, pg=replace(tight.pg, max_result_bytes=max_result_bytes))
        with runner.serving(tight) as server:
            world = make_world(tight)
            world.port = server.port
            world.big_source(50_000)
            with world.connect(world.key()) as conn:
                if max_result_bytes is None:
                    started = time.monotonic()
                    with pytest.raises(psycopg.errors.QueryCanceled):
                        conn.execute("SELECT count(*) FROM big a, big b WHERE a.n + b.n = -1").fetchall()
                    assert time.monotonic() - started < 8
                else:
                    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
                        conn.execute("SELECT n, label FROM big").fetchall()
                    assert conn.execute("SELECT count(*) FROM big").fetchone() == (50_000,)


def test_rows_are_streamed_and_an_abandoned_cursor_frees_its_query(world: World, endpoint):
    world.big_source(50_000)
    with world.connect(world.key(), autocommit=False) as conn:
        with conn.cursor(name="few") as cursor:
            cursor.execute("SELECT n, label FROM big ORDER BY n")
            assert cursor.fetchmany(3) == [(0, "row 0"), (1, "row 1"), (2, "row 2")]
            # the query is still running in its worker, a few batches ahead of the client
            assert endpoint.pool.admitted()["total"] == 1
        deadline = time.monotonic() + 10
        while endpoint.pool.admitted()["total"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert endpoint.pool.admitted()["total"] == 0  # closed: the worker stopped, the slot is back
        conn.rollback()
        # an unnamed portal read in full, and the same worker serves the next statement
        assert len(conn.execute("SELECT n FROM big").fetchall()) == 50_000
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (50_000,)
    endpoint.journal.flush()
    with world.tx() as s:
        events = s.execute(
            select(AuditEvent.action, AuditEvent.details)
            .where(AuditEvent.org_id == world.org_id, AuditEvent.action.like("pgwire.%"))
            .order_by(AuditEvent.timestamp)
        ).all()
    declared = [(a, d["rows_returned"]) for a, d in events if d["operation"] == "pgwire_declare"]
    # audited before its first row was sent (rows unknown: it was still computing), then the
    # rows its client got before it closed the cursor (psycopg fetched 3)
    assert declared == [("pgwire.statement", None), ("pgwire.statement_end", 3)]
    queried = [(a, d["rows_returned"]) for a, d in events if d["operation"] == "pgwire_query"]
    assert queried == [("pgwire.statement", None), ("pgwire.statement_end", 50_000), ("pgwire.statement", 1)]
