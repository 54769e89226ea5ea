"""Rate limits in Redis (`ratelimit.RedisWindows`): concurrent requests of a process share
one round trip, and the limits still hold exactly: never one request more than the limit,
a request refused by its owner's ceiling counts on no counter, Redis down refuses (503)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
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


# -- room taken ahead: a busy key does not pay a trip per request ------------------------------


def counted(store, key: str) -> int:
    return sum(int(store.get(k) or 0) for k in store.scan_iter(match=f"*{key}*"))


async def one_by_one(windows: ratelimit.RedisWindows, counters, n: int) -> list[ratelimit.Refusal]:
    return [await windows.hit(counters) for _ in range(n)]


def test_a_busy_key_is_counted_ahead_in_few_trips_and_unspent_room_goes_back(store):
    key = new("key")
    windows = ratelimit.RedisWindows(REDIS_URL)
    counters = ((f"{ratelimit.KEY_NAMESPACE}/{key}", 10_000),)
    trips = windows.batches.trips
    results = asyncio.run(one_by_one(windows, counters, 300))
    assert results == [None] * 300
    assert windows.batches.trips - trips < 30  # one by one, yet not a trip each
    assert windows.local_hits >= 270
    # Every request allowed was counted in Redis before it was allowed (with room ahead).
    held = counted(store, key) - 300
    assert 0 <= held <= ratelimit.MAX_GRANT
    # Once its time is up the unspent room is given back, with the next trip.
    time.sleep(ratelimit.GRANT_SECONDS + ratelimit.SWEEP_SECONDS)
    other = ((f"{ratelimit.KEY_NAMESPACE}/{new('key')}", 10_000),)
    assert asyncio.run(windows.hit(other)) is None
    assert counted(store, key) == 300


def test_a_low_limit_is_never_counted_ahead(store):
    key = new("key")
    windows = ratelimit.RedisWindows(REDIS_URL)
    counters = ((f"{ratelimit.KEY_NAMESPACE}/{key}", ratelimit.GRANT_SHARE - 1),)
    results = asyncio.run(one_by_one(windows, counters, 20))
    assert results[: ratelimit.GRANT_SHARE - 1] == [None] * (ratelimit.GRANT_SHARE - 1)
    assert all(r is not None and r[0] == 0 for r in results[ratelimit.GRANT_SHARE - 1 :])
    assert windows.local_hits == 0 and counted(store, key) == ratelimit.GRANT_SHARE - 1


_HAMMER = textwrap.dedent("""
    import asyncio, sys, time
    from tidegate.access import ratelimit
    url, name, owner, limit, owner_limit, n = sys.argv[1:7]
    windows = ratelimit.RedisWindows(url)
    counters = ((name, int(limit)), (owner, int(owner_limit)))
    async def run():
        allowed = 0
        for _ in range(int(n) // 8):
            results = await asyncio.gather(*(windows.hit(counters) for _ in range(8)))
            allowed += results.count(None)
        return allowed
    print(asyncio.run(run()), windows.local_hits)
""")


def test_two_processes_never_pass_the_limit_together(store):
    """Two processes hammer one key (and its owner's ceiling) at once: together they are
    never allowed more than the limit, and the room one held unspent comes back."""
    key, owner, limit = new("key"), new("user"), 400
    if time.time() % ratelimit.PERIOD > ratelimit.PERIOD - 15:  # all in one window: exact sums below
        time.sleep(ratelimit.PERIOD - time.time() % ratelimit.PERIOD + 0.1)
    args = [REDIS_URL, f"{ratelimit.KEY_NAMESPACE}/{key}", f"{ratelimit.USER_NAMESPACE}/{owner}", str(limit)]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, *args, "100000", "600"], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [run.communicate(timeout=60)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    allowed = sum(int(out[0]) for out in outs)
    assert allowed <= limit
    assert sum(int(out[1]) for out in outs) > 0  # room was taken ahead and spent locally
    # What a process held unspent when it stopped is still counted (early refusals, never
    # extra passes): the counters never exceed the limit, and hold at least what passed.
    assert allowed <= counted(store, key) <= limit
    assert counted(store, owner) == counted(store, key)
    # A third process, once the others' room is back or spent, gets exactly what is left.
    windows = ratelimit.RedisWindows(REDIS_URL)
    counters = ((args[1], limit), (args[2], 100_000))
    before = counted(store, key)
    rest = asyncio.run(one_by_one(windows, counters, limit + 5 - before))
    assert rest.count(None) == limit - before and rest[-5:] == rest[limit - before :]
    assert all(r is not None and r[0] == 0 for r in rest[limit - before :])
    assert counted(store, key) == limit


def test_redis_down_refuses_once_the_room_already_counted_is_spent(store):
    key = new("key")
    windows = ratelimit.RedisWindows(REDIS_URL)
    counters = ((f"{ratelimit.KEY_NAMESPACE}/{key}", 10_000),)
    assert asyncio.run(one_by_one(windows, counters, 50)) == [None] * 50
    before = counted(store, key)
    windows.redis_url = "redis://127.0.0.1:1/0"  # Redis gone (a closed port), room still held
    windows._async.clear()

    async def after_outage(n: int) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for _ in range(n):
            try:
                out.append(await windows.hit(counters) and None)
            except ratelimit.LimiterUnavailable as exc:
                out.append(exc)
        return out

    results = asyncio.run(after_outage(before - 50 + 5))
    passed = results.count(None)
    assert passed == before - 50  # exactly the room counted before the outage, not one more
    assert all(isinstance(r, ratelimit.LimiterUnavailable) for r in results[passed:])
    time.sleep(ratelimit.GRANT_SECONDS)
    assert all(isinstance(r, ratelimit.LimiterUnavailable) for r in asyncio.run(after_outage(3)))


def test_room_is_never_spent_in_another_window(store):
    key = new("key")
    windows = ratelimit.RedisWindows(REDIS_URL, period=2.0)
    counters = ((f"{ratelimit.KEY_NAMESPACE}/{key}", 10_000),)
    # Start right after a window begins, so the warm-up stays inside it.
    time.sleep(2.0 - time.time() % 2.0 + 0.01)
    assert asyncio.run(one_by_one(windows, counters, 40)) == [None] * 40
    grant = windows._grants[counters]
    assert grant.left > 0 and grant.window == int(time.time() // 2.0)
    assert not windows._spend(counters, grant.window + 1, time.monotonic())
    assert not windows._spend(counters, grant.window, grant.expires)
