"""The sign-in backoff counters themselves, in memory and in Redis (no browser)."""

from __future__ import annotations

import os
import uuid

import pytest

from tidegate.web import throttle

REDIS_URL = os.environ.get("TIDEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return None
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis unavailable ({exc}) -- but CI=true requires it", pytrace=False)
        pytest.skip(f"Redis unavailable: {exc}")
    return REDIS_URL


def test_five_failures_lock_the_email_and_success_clears_it(store):
    email, ip = f"{uuid.uuid4().hex}@x.test", f"10.{uuid.uuid4().int % 250}.0.1"
    for _ in range(5):
        assert throttle.locked_for(store, email, ip) == 0
        throttle.failed(store, email, ip)
    wait = throttle.locked_for(store, email, ip)
    assert 1 <= wait <= 60
    # Another account from the same address is not locked by it.
    assert throttle.locked_for(store, f"other-{email}", ip) == 0
    throttle.succeeded(store, email)
    assert throttle.locked_for(store, email, ip) == 0


def test_the_wait_grows_with_more_failures(store):
    email, ip = f"{uuid.uuid4().hex}@x.test", f"10.{uuid.uuid4().int % 250}.1.1"
    for _ in range(10):
        throttle.failed(store, email, ip)
    # Ten failures: the fifteen-minute tier is full, so the wait is longer than a minute.
    assert throttle.locked_for(store, email, ip) > 60


def test_many_failures_from_one_ip_lock_that_ip(store):
    ip = f"10.{uuid.uuid4().int % 250}.2.1"
    for n in range(20):
        throttle.failed(store, f"user{n}-{uuid.uuid4().hex}@x.test", ip)
    assert throttle.locked_for(store, f"fresh-{uuid.uuid4().hex}@x.test", ip) > 0
