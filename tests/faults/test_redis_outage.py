"""Redis (the shared rate-limit store) stopped under load: 503 rate_limiter_unavailable with
Retry-After while it is down (fail closed, never unlimited), never a 500; the server serves
again by itself when Redis is back. And the first concurrent requests after a start never
get a 500 (the Redis client is built at start-up, not lazily by racing threads).

The Redis here is the suite's own redis-server on a free port, never the shared one.
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
from figures import report
from server import init_home
from traffic import START, Traffic, check_answers, wait_for_events

pytestmark = pytest.mark.slow

BURST = 24


def first_requests_at_once(srv) -> Counter:
    """BURST requests released together, the moment the server is up."""
    barrier = threading.Barrier(BURST)
    statuses: list[int | None] = []

    def one():
        barrier.wait(timeout=30)
        try:
            statuses.append(httpx.get(srv.url + "/api/v1/keys", headers=srv.headers(), timeout=30).status_code)
        except httpx.HTTPError:
            statuses.append(None)

    threads = [threading.Thread(target=one) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return Counter(statuses)


def list_keys(client, index, n):
    return client.get("/api/v1/keys", params={"limit": 1})


def test_redis_outage_is_503_then_recovers_and_first_requests_never_fail(private_redis, tmp_path):
    srv = init_home(tmp_path, redis_url=private_redis.url)
    try:
        for start in range(2):
            srv.start(workers=2, timeout=START)
            statuses = first_requests_at_once(srv)
            assert statuses == Counter({200: BURST}), f"start {start}: {statuses}\n{srv.logs()[-3000:]}"
            if start == 0:
                srv.stop()
        _, secret = srv.new_admin_key(10_000)
        with Traffic(srv.url, srv.headers(secret), list_keys) as traffic:
            outage = traffic.through_outage(private_redis.stop, private_redis.start, 2.0, srv.logs)
        answers = traffic.snapshot()
        figures = check_answers(answers, outage, {"rate_limiter_unavailable"})
        # The key was identified before the limiter failed: refused requests are audited too.
        figures |= wait_for_events(srv, [a.request_id for a in answers], [])
        figures["outage_s"] = round(outage.up_at - outage.down_at, 2)
        report("redis stop under load", figures)
    finally:
        srv.stop()
