"""The in-memory rate limiter (`access.ratelimit` without Redis, `LocalSlidingWindow`): no
thread per hit, exact, the window slides as documented, expired counters freed.

The behaviour is tested through `ratelimit.enforce`, what every request calls, and the
window's arithmetic on `LocalSlidingWindow` with an explicit clock.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from tidegate.access import ratelimit
from tidegate.errors import RateLimited


def new_key() -> str:
    return f"key_{uuid.uuid4().hex}"


@pytest.fixture
def timers(monkeypatch):
    """Counts `threading.Timer`s created from now on (`limits`' memory storage, which this
    limiter replaced, re-armed one every 10 ms under load; counted where it called it)."""
    import limits.storage.memory as memory

    created = []

    class CountingTimer(threading.Timer):
        def __init__(self, *args, **kwargs):
            created.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(memory.threading, "Timer", CountingTimer)
    return created


# -- no thread per hit -------------------------------------------------------------------------


def test_hits_start_no_threads(timers):
    ratelimit.enforce(None, new_key(), 1000)  # whatever the limiter builds on first use, built now
    constructed, threads = len(timers), threading.active_count()
    key_id = new_key()
    for _ in range(30):  # ~0.3 s of traffic, hits 10 ms apart (the stock timer's period)
        ratelimit.enforce(None, key_id, 1000)
        time.sleep(0.01)
    assert len(timers) == constructed, f"{len(timers) - constructed} timer threads started by 30 hits"
    assert threading.active_count() <= threads


# -- exact -------------------------------------------------------------------------------------


def test_limit_is_enforced_exactly():
    key_id, other = new_key(), new_key()
    for _ in range(5):
        ratelimit.enforce(None, key_id, 5)
    for _ in range(3):  # every further request is refused, not just the sixth
        with pytest.raises(RateLimited) as refused:
            ratelimit.enforce(None, key_id, 5)
        error = refused.value
        assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
        assert 1 <= int(error.headers["Retry-After"]) <= 120  # up to two windows: see test below
        assert f"retry in {error.headers['Retry-After']} s" in error.message
    for _ in range(5):  # another key has its own count
        ratelimit.enforce(None, other, 5)
    with pytest.raises(RateLimited):
        ratelimit.enforce(None, other, 5)


def test_concurrent_hits_never_exceed_the_limit():
    key_id, allowed, errors = new_key(), [], []

    def worker():
        for _ in range(50):
            try:
                ratelimit.enforce(None, key_id, 100)
                allowed.append(1)
            except RateLimited:
                pass
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(allowed) == 100


# -- expired counters are swept; the window slides exactly: LocalSlidingWindow ------------------


def test_local_window_frees_expired_counters():
    w = ratelimit.LocalSlidingWindow(period=0.02)
    assert w.hit("x", 1) is None
    time.sleep(0.05)  # two periods: x weighs nothing now
    assert w.hit("z", 5) is None
    assert "x" in w._windows  # no sweep due yet
    assert w.hit("x", 1) is None  # ...but its old count is not held against it
    time.sleep(0.05)
    w._next_sweep = 0
    assert w.hit("y", 5) is None
    assert "x" not in w._windows and "z" not in w._windows and "y" in w._windows
    assert w._next_sweep > time.monotonic() + w.SWEEP_SECONDS - 1


def test_local_window_weighs_the_previous_minute():
    w = ratelimit.LocalSlidingWindow()
    t0 = 600.0 * 60  # the start of a window
    assert [w.hit("k", 10, now=t0 + i) for i in range(10)] == [None] * 10
    assert w.hit("k", 10, now=t0 + 30) is not None  # 11th in the same minute
    # Half-way through the next minute the previous 10 weigh 5: five more, not six.
    assert [w.hit("k", 10, now=t0 + 90 + i / 100) for i in range(5)] == [None] * 5
    assert w.hit("k", 10, now=t0 + 90.5) is not None
    # Two minutes on, nothing of it is left.
    assert [w.hit("k", 10, now=t0 + 240 + i) for i in range(10)] == [None] * 10


@pytest.mark.parametrize("seed", range(20))
def test_local_window_retry_after_is_exact(seed):
    """Retry-After is when a request is next allowed: refused just before, allowed just after."""
    rnd = random.Random(seed)
    limit = rnd.randint(1, 20)
    t = 6000.0 * 60 + rnd.uniform(0, 60)
    history = ratelimit.LocalSlidingWindow()
    for _ in range(rnd.randint(0, 3 * limit)):  # some traffic spread over the last ~two minutes
        history.hit("k", limit, now=t + rnd.uniform(0, 100))
    now = t + 100 + rnd.uniform(0, 20)
    while (wait := history.hit("k", limit, now=now)) is None:
        now += rnd.uniform(0, 0.5)
    assert 0 < wait <= 120, wait
    before, after = ratelimit.LocalSlidingWindow(), ratelimit.LocalSlidingWindow()
    for w in (before, after):
        w._windows = {"k": list(history._windows["k"])}
    assert before.hit("k", limit, now=now + wait - 1e-6) is not None, "allowed before Retry-After"
    assert after.hit("k", limit, now=now + wait + 1e-6) is None, "still refused after Retry-After"
