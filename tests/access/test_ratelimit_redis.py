"""Rate limits in Redis (`ratelimit.RedisWindows`): concurrent requests of a process share
one round trip, and the limits still hold exactly: never one request more than the limit,
a request refused by its owner's ceiling counts on no counter, Redis down refuses (503)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis

from tidegate.access import ratelimit
from tidegate.errors import RateLimited

REDIS_URL = os.environ.get("TIDEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")  # (as conftest)


@pytest.fixture(scope="module")
def store():
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unavailable: {exc}")
    return client


def new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def many(n: int, *args) -> list[BaseException | None]:
    return await asyncio.gather(*(ratelimit.enforce_async(*args) for _ in range(n)), return_exceptions=True)


def test_concurrent_requests_share_trips_and_never_pass_the_limit(store):
    key = new("key")
    windows = ratelimit._redis(REDIS_URL)
    trips = windows.batches.trips
    results = asyncio.run(many(40, REDIS_URL, key, 7))
    assert results.count(None) == 7
    refused = [r for r in results if r is not None]
    assert len(refused) == 33 and all(isinstance(r, RateLimited) and r.code == "rate_limit_exceeded" for r in refused)
    # When a request may pass again: within this window, or up to a minute into the next (a
    # full window still weighs there, the sliding window counter).
    assert all(1 <= int(r.headers["Retry-After"]) <= 120 for r in refused)
    assert windows.batches.trips - trips < 40  # shared round trips, not one each
    # A refused request is not counted: the counter holds exactly the 7 let through.
    (counter,) = store.scan_iter(match=f"*{key}*")
    assert int(store.get(counter)) == 7


def test_the_owner_ceiling_is_all_or_nothing_across_keys(store):
    owner, keys = new("user"), [new("key"), new("key")]

    async def twelve():
        asks = (ratelimit.enforce_async(REDIS_URL, keys[i % 2], 100, owner, 5) for i in range(12))
        return await asyncio.gather(*asks, return_exceptions=True)

    results = asyncio.run(twelve())
    assert results.count(None) == 5
    assert {r.code for r in results if r is not None} == {"user_rate_limit_exceeded"}
    counted = sum(int(store.get(k)) for key in keys for k in store.scan_iter(match=f"*{key}*"))
    assert counted == 5  # the 7 refused by the owner's ceiling used none of their keys' counts


def test_the_blocking_and_the_async_paths_share_one_count(store):
    key = new("key")
    for _ in range(3):
        ratelimit.enforce(REDIS_URL, key, 5)
    assert asyncio.run(many(5, REDIS_URL, key, 5)).count(None) == 2
    with pytest.raises(RateLimited):
        ratelimit.enforce(REDIS_URL, key, 5)


def test_redis_down_refuses_every_waiting_request_with_503():
    down = "redis://127.0.0.1:1/0"  # a closed port on loopback
    results = asyncio.run(many(10, down, new("key"), 1000))
    assert all(isinstance(r, ratelimit.LimiterUnavailable) for r in results), results
    assert {r.code for r in results} == {"rate_limiter_unavailable"}
    assert len({id(r) for r in results}) == 10  # one exception object per request
