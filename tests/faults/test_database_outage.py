"""PostgreSQL stopped, or restarted, under load against `tidegate serve --workers 2`: only
503 (with Retry-After) while it is down, never a 500 or a dropped connection; the server
serves again by itself; every answered request's audit event reaches the database exactly
once. And the audit shipper keeps events while the database is down, across a restart of
the shipper and of the whole server.

The PostgreSQL here is the suite's private cluster (conftest.py), never the shared one.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from audit.test_audit_shipper import alive, make_requests, shipper_pid, stopped
from figures import report
from server import init_home
from traffic import RECOVERY_BOUND, START, Outage, Traffic, check_answers, wait_for_events

pytestmark = pytest.mark.slow


def list_keys(client, index, n):
    return client.get("/api/v1/keys", params={"limit": 1})


@pytest.fixture
def pg_home(postgres, tmp_path):
    srv = init_home(tmp_path, database_url=postgres.new_database())
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("fault", ["stop", "restart"])
def test_postgresql_outage_under_load_is_503_then_recovers_by_itself(postgres, pg_home, fault):
    srv = pg_home.start(workers=2, timeout=START)
    _, secret = srv.new_admin_key(10_000)
    with Traffic(srv.url, srv.headers(secret), list_keys) as traffic:
        assert traffic.wait_for(lambda a: a.status == 200, 20) is not None
        time.sleep(1.0)
        down_at = time.monotonic()
        if fault == "stop":
            postgres.stop()
            assert traffic.wait_for(lambda a: a.status == 503, 10) is not None, "no request noticed the outage"
            time.sleep(3.0)
            postgres.start()
        else:
            postgres.restart()
        up_at = time.monotonic()
        assert traffic.wait_for(lambda a: a.status == 200, RECOVERY_BOUND) is not None, srv.logs()[-3000:]
        time.sleep(1.5)
    answers = traffic.snapshot()
    figures = check_answers(answers, Outage(down_at, up_at), {"database_unavailable"})
    # A request refused while the key could not even be read has no key to record it under.
    figures |= wait_for_events(
        srv, [a.request_id for a in answers if a.status == 200], [a.request_id for a in answers if a.status == 503]
    )
    figures["outage_s"] = round(up_at - down_at, 2)
    report(f"postgresql {fault} under load", figures)


def audit_status(srv) -> dict:
    return json.loads(srv.cli("audit", "status", "--json").stdout)


def test_the_journal_keeps_events_while_postgresql_is_down_across_shipper_and_server_restarts(postgres, pg_home):
    srv = pg_home.start(workers=1, timeout=START)
    audit_dir = srv.home / "audit"
    with stopped(shipper_pid(srv), audit_dir / "ship.lock"):
        ids = make_requests(srv, 20)  # answered; their events only in the journal
        postgres.stop()
    time.sleep(2.5)  # the shipper has tried, and failed, a few rounds
    status = audit_status(srv)
    assert status["pending_events"] >= 20 and status["set_aside_events"] == 0, status
    assert not (audit_dir / "rejected.jsonl").exists()

    old = shipper_pid(srv)
    os.kill(old, signal.SIGKILL)  # the shipper dies while the database is down...
    deadline = time.monotonic() + 15
    while shipper_pid(srv) == old or not alive(shipper_pid(srv)):
        assert time.monotonic() < deadline, "the shipper was not restarted"
        time.sleep(0.1)
    time.sleep(1.0)
    srv.stop()  # ...and so does the whole server (its last shipping round fails too)
    status = audit_status(srv)
    assert status["pending_events"] >= 20 and status["set_aside_events"] == 0, status
    assert status["oldest_pending_age_seconds"] is not None

    postgres.start()
    back_at = time.monotonic()
    srv.start(workers=1, timeout=START)
    figures = wait_for_events(srv, ids, [])
    figures["shipped_s_after_database_back"] = round(time.monotonic() - back_at, 1)
    status = audit_status(srv)
    assert status["pending_events"] == 0 and status["torn_records"] == 0, status
    report("audit shipper with postgresql down, shipper and server restarted", figures)
