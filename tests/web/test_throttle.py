"""The sign-in throttle's counters themselves, in memory and in Redis, on a test clock.

The sign-in page on top of them: tests/web/test_signin_security.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest

from tidegate.web import throttle
from tidegate.web.throttle import MemoryStore, Policy, RedisStore, SignInPaused, SigninThrottle

REDIS_URL = os.environ.get("TIDEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
A, B = "org_a", "org_b"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def redis_or_skip():
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis unavailable ({exc}) -- but CI=true requires it", pytrace=False)
        pytest.skip(f"Redis unavailable: {exc}")


@pytest.fixture
def namespace():
    """Keys of one test under their own prefix, deleted afterwards."""
    name = f"test-signin-{uuid.uuid4().hex}"
    yield name
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        keys = list(client.scan_iter(f"{name}:*"))
        if keys:
            client.delete(*keys)
    except Exception:  # noqa: BLE001  (no Redis: nothing to clean)
        pass


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """A factory of stores sharing one set of counters (two workers of one deployment)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    redis_or_skip()
    return lambda: RedisStore(throttle.redis_client(REDIS_URL))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def gate(make_store, clock, namespace) -> SigninThrottle:
    return SigninThrottle(make_store(), clock=clock, namespace=namespace)


def fail(gate: SigninThrottle, ip: str, orgs=(A,), email="victim@x.test", times: int = 1, spacing: float = 0) -> None:
    for _ in range(times):
        gate.clock.advance(spacing)  # spaced out: not slowed down by the account's failures
        gate.begin(orgs, email, ip)  # counted; no success follows


def paused_for(gate: SigninThrottle, ip: str, orgs=(A,), email="victim@x.test") -> int:
    with pytest.raises(SignInPaused) as paused:
        gate.begin(orgs, email, ip)
    return paused.value.wait


def test_five_failures_lock_that_triple_for_the_window_and_only_it(gate, clock):
    fail(gate, "10.0.0.1", times=5)
    assert 899 <= paused_for(gate, "10.0.0.1") <= 900
    clock.advance(600)
    assert 299 <= paused_for(gate, "10.0.0.1") <= 300  # refused attempts do not extend the lock
    # Another IP, another account from the same IP, the same email in another org: open.
    assert gate.begin([A], "victim@x.test", "10.0.0.2").open_orgs == {A}
    assert gate.begin([A], "other@x.test", "10.0.0.1").open_orgs == {A}
    assert gate.begin([B], "victim@x.test", "10.0.0.1").open_orgs == {B}
    clock.advance(301)
    assert gate.begin([A], "victim@x.test", "10.0.0.1").open_orgs == {A}


def test_a_success_resets_only_its_own_triple(gate, clock):
    fail(gate, "10.0.0.1", times=4, spacing=30)
    fail(gate, "10.0.0.2", times=4, spacing=30)
    attempt = gate.begin([A], "victim@x.test", "10.0.0.1")
    gate.succeeded(attempt, [A])
    fail(gate, "10.0.0.1", times=4, spacing=30)  # its counter started again from zero
    clock.advance(30)
    assert gate.begin([A], "victim@x.test", "10.0.0.1").open_orgs == {A}
    # The other IP's counter was not touched: its fifth failure locks it.
    fail(gate, "10.0.0.2", spacing=30)
    paused_for(gate, "10.0.0.2")


def test_a_success_in_another_org_does_not_reset_the_victims_counter(gate, clock):
    # The email has a user in A (the victim) and in B (made by the attacker, who knows its password).
    fail(gate, "10.0.0.9", orgs=(A, B), times=4)
    attempt = gate.begin([A, B], "victim@x.test", "10.0.0.9")
    assert attempt.open_orgs == {A, B}
    gate.succeeded(attempt, [B])  # B's password: a success for B, a fifth failure for A
    after = gate.begin([A, B], "victim@x.test", "10.0.0.9")
    assert after.open_orgs == {B} and 890 <= after.closed_wait <= 900  # A stays locked for this IP
    gate.succeeded(after, [B])
    again = gate.begin([A, B], "victim@x.test", "10.0.0.9")
    assert again.open_orgs == {B} and again.closed_wait > 0
    # Locked entirely after five failures of both: a success elsewhere changes nothing for A.
    fail(gate, "10.0.0.8", orgs=(A, B), times=5)
    clock.advance(60)  # past the accounts' slow-down, well inside the lock
    other_ip = gate.begin([B], "victim@x.test", "10.0.0.7")
    gate.succeeded(other_ip, [B])
    paused_for(gate, "10.0.0.8", orgs=(A, B))


def test_failures_from_five_ips_lock_nobody_out(gate):
    for n in range(5):
        fail(gate, f"10.1.0.{n}")
    assert gate.begin([A], "victim@x.test", "10.1.0.99").open_orgs == {A}


def test_account_slow_down_bounds_guessing_from_many_ips_but_the_user_gets_in(gate, clock):
    policy = gate.policy
    for n in range(policy.slow_after):  # ten failures, each from a fresh IP
        fail(gate, f"10.2.0.{n}")
    # The real user, from a clean IP, is slowed (a couple of seconds), not locked out.
    wait = paused_for(gate, "192.0.2.10")
    assert 1 <= wait <= policy.first_delay
    clock.advance(wait)
    attempt = gate.begin([A], "victim@x.test", "192.0.2.10")
    gate.succeeded(attempt, [A])
    # An attacker with a fresh IP for every guess, trying every second for half an hour.
    allowed = 0
    for second in range(1800):
        try:
            gate.begin([A], "victim@x.test", f"10.3.{second // 250}.{second % 250}")
            allowed += 1
        except SignInPaused as paused:
            assert paused.wait <= policy.max_delay
        clock.advance(1)
    # The delays grow 2, 4, 8, 16 s, then at most one guess every 30 s.
    assert allowed <= 4 + 1800 / policy.max_delay + 1
    assert allowed >= 1800 / policy.max_delay - 5  # a slow-down, not a lockout
    # Still no lockout for the real user: at most max_delay to wait.
    wait = paused_for(gate, "192.0.2.10")
    assert wait <= policy.max_delay
    clock.advance(wait)
    gate.succeeded(gate.begin([A], "victim@x.test", "192.0.2.10"), [A])


def test_an_attackers_ips_cannot_take_the_turns_of_the_real_user_from_a_clean_ip(gate, clock):
    attackers = [f"10.11.0.{n}" for n in range(12)]
    allowed = {"attacker": 0, "user": 0}
    refused_user = []
    for second in range(1800):  # half an hour: an attacker's IP tries every second
        try:
            gate.begin([A], "victim@x.test", attackers[second % len(attackers)])
            allowed["attacker"] += 1
        except SignInPaused:
            pass
        if second >= 600 and second % 60 == 0:  # once the attacker's IPs have all failed once
            try:  # the real user, each time from an IP that has not failed
                gate.succeeded(gate.begin([A], "victim@x.test", f"192.0.2.{second // 60}"), [A])
                allowed["user"] += 1
            except SignInPaused as paused:
                refused_user.append(paused.wait)
        clock.advance(1)
    assert refused_user == [] and allowed["user"] == 20
    # Two lanes: at most two guesses per 30 s (after the first ten and the growing delays).
    assert allowed["attacker"] <= 10 + 8 + 2 * 1800 / gate.policy.max_delay


def test_a_success_does_not_reset_the_account_slow_down(gate, clock):
    for n in range(gate.policy.slow_after + 3):
        clock.advance(gate.policy.max_delay)
        fail(gate, f"10.4.0.{n}")
    clock.advance(gate.policy.max_delay)
    gate.succeeded(gate.begin([A], "victim@x.test", "192.0.2.20"), [A])
    fail(gate, "10.4.1.1")
    # Fourteen failures: the next attempt waits 30 s. Reset to zero, it would not wait at all.
    assert 29 <= paused_for(gate, "10.4.1.2") <= 30


def test_an_unknown_email_is_throttled_exactly_like_a_real_one(gate):
    fail(gate, "10.5.0.1", orgs=(A,), email="real@x.test", times=5)
    fail(gate, "10.5.0.1", orgs=(), email="nobody@x.test", times=5)
    assert paused_for(gate, "10.5.0.1", orgs=(A,), email="real@x.test") == paused_for(
        gate, "10.5.0.1", orgs=(), email="nobody@x.test"
    )


def test_many_failures_from_one_ip_lock_that_ip_for_every_account(gate):
    for n in range(gate.policy.ip_lock_after):
        fail(gate, "10.6.0.1", email=f"user{n}@x.test")
    assert paused_for(gate, "10.6.0.1", email="fresh@x.test") > 0
    assert gate.begin([A], "fresh@x.test", "10.6.0.2").open_orgs == {A}


def test_concurrent_guesses_cannot_slip_past_the_lock_together(make_store, clock, namespace):
    # Two workers (two store clients), 40 simultaneous guesses from one IP.
    gates = [SigninThrottle(make_store(), clock=clock, namespace=namespace) for _ in range(2)]
    allowed, start = [], threading.Barrier(40)

    def guess(n: int):
        start.wait()
        try:
            gates[n % 2].begin([A], "victim@x.test", "10.7.0.1")
            allowed.append(n)
        except SignInPaused:
            pass

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(allowed) == gates[0].policy.lock_after


def test_counts_are_shared_between_workers_through_redis(clock, namespace):
    redis_or_skip()
    first, second = (
        SigninThrottle(RedisStore(throttle.redis_client(REDIS_URL)), clock=clock, namespace=namespace) for _ in range(2)
    )
    fail(first, "10.8.0.1", times=3)
    fail(second, "10.8.0.1", times=2)
    paused_for(first, "10.8.0.1")
    paused_for(second, "10.8.0.1")
    # Emails and addresses are not stored in Redis in the clear.
    client = redis_or_skip()
    keys = [k.decode() for k in client.scan_iter(f"{namespace}:*")]
    assert keys and not any("victim" in k or "10.8.0.1" in k for k in keys)


def test_redis_down_refuses_quickly(namespace):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gate = SigninThrottle(RedisStore(throttle.redis_client(f"redis://127.0.0.1:{port}/0")), namespace=namespace)
    started = time.monotonic()
    with pytest.raises(throttle.ThrottleUnavailable):
        gate.begin([A], "victim@x.test", "10.9.0.1")
    assert time.monotonic() - started < 5


def test_memory_is_bounded_per_counter(clock):
    gate = SigninThrottle(MemoryStore(), policy=Policy(ip_lock_after=10_000, keep=20), clock=clock)
    for n in range(100):
        fail(gate, "10.10.0.1", email=f"u{n}@x.test")
    assert max(len(entries) for entries in gate.store._entries.values()) <= 20


def test_an_ipv6_client_is_its_64_and_rotating_inside_it_does_not_escape(gate):
    for n in range(5):
        fail(gate, f"2001:db8:1:2::{n + 1:x}")
    paused_for(gate, "2001:db8:1:2:ffff:1:2:3")
    assert gate.begin([A], "victim@x.test", "2001:db8:1:3::1").open_orgs == {A}  # another /64
    assert throttle.client_subject("::ffff:192.0.2.1") == "192.0.2.1"
    assert throttle.client_subject(None) == "unknown"
