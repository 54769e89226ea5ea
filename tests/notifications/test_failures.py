"""Failed-auth bursts: counted per key prefix in fixed windows, in memory or in Redis (shared
by every process: exactly one event per window), and never more than the display prefix kept."""

from __future__ import annotations

import dataclasses
import secrets
import threading

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import REDIS_URL
from tidegate.api.app import create_app
from tidegate.audit.models import AuditEvent
from tidegate.credentials import failures
from tidegate.credentials.failures import FailureBursts, prefix_of_attempt
from tidegate.db.engine import session_scope


def test_prefix_of_attempt_keeps_only_a_display_prefix():
    assert prefix_of_attempt("Bearer qk_ABCDEFGHIjklmnop") == "qk_ABCDEFGHI"
    for header in (
        None,
        "",
        "Basic qk_ABCDEFGHIjkl",
        "Bearer es_ABCDEFGHIjkl",
        "Bearer qk_AB",
        "Bearer qk_ABC/EFGHIjk",
    ):
        assert prefix_of_attempt(header) is None, header


def test_local_windows_count_and_restart():
    bursts = FailureBursts(None, threshold=3, window_seconds=60)
    assert [bursts.count("qk_AAAAAAAAA", now=120.0 + i) for i in range(4)] == [1, 2, 3, 4]
    assert bursts.count("qk_AAAAAAAAA", now=180.0) == 1  # the next window
    assert bursts.count("qk_BBBBBBBBB", now=121.0) == 1  # another prefix


def test_redis_counts_are_shared_so_one_burst_is_recorded_once(settings, org):
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unavailable ({exc})")
    key = org.key_for(org.admin_id, ["data:read"])
    prefix = key[:12]
    workers = [FailureBursts(REDIS_URL, threshold=5, window_seconds=3600) for _ in range(4)]  # four "processes"
    recorded = []
    barrier = threading.Barrier(4)

    def fail(bursts):
        barrier.wait()
        recorded.extend(bursts.note(settings.database_url, prefix) for _ in range(5))

    threads = [threading.Thread(target=fail, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorded.count(True) == 1
    with session_scope(settings.database_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.action == "api_key.auth_failure_burst")
        ).all()
    assert len(events) == 1 and events[0].target_id is not None


def test_requests_from_outside_a_keys_allowlist_count_too(settings, org):
    settings = dataclasses.replace(settings, notify=dataclasses.replace(settings.notify, auth_failure_burst=2))
    key = org.key_for(org.admin_id, ["data:read"], ip_allowlist=["192.0.2.0/24"])
    ip = f"127.9.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    with TestClient(create_app(settings), client=(ip, 1)) as client:
        for _ in range(2):
            assert client.get("/api/v1/sources", headers=org.headers(key)).json()["error"]["code"] == "ip_not_allowed"
    with session_scope(settings.database_url) as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.action == "api_key.auth_failure_burst")
        ).all()
    assert event.details["key_prefix"] == key[:12]


def test_a_spray_of_prefixes_keeps_memory_bounded_and_a_prefix_under_attack_counted():
    bursts = FailureBursts(None, threshold=5, window_seconds=60)
    now = 1_000_000.0
    for _ in range(4):
        bursts.count("qk_TARGET000", now)
    for n in range(failures.MAX_PREFIXES * 2):  # one-off prefixes, as anyone can send
        bursts.count(f"qk_{n:09d}", now)
        if n % 1000 == 0:
            bursts.count("qk_TARGET000", now)  # the attacked prefix keeps failing meanwhile
    assert len(bursts._counts) == failures.MAX_PREFIXES
    assert bursts.count("qk_TARGET000", now) == 4 + failures.MAX_PREFIXES * 2 // 1000 + 1
