"""Request limits: a sliding window counter per key and minute, and one per person shared
by all the keys they created (the organization's `user_rate_limit_per_minute`). A request
counts against both, and is refused if either is full.

The count a request is judged by is this minute's hits plus last minute's, weighted by how
much of last minute is still inside the sliding 60 s (the `limits` library's "sliding
window counter": exact for a key's first minute, then approximate by that weight, and O(1)
per hit). The exact moving window was ~1 ms a request in memory.

With `TIDEGATE_REDIS_URL` set, counts live in Redis (`RedisWindows`: the same algorithm in a
Lua script, both counters of a request in one atomic round trip, and the concurrent requests
of a process in one shared trip) and hold across every worker process and server. A busy key
does not pay a trip per request: a trip may take a few requests' worth of room ahead (counted
in Redis at once, so the limit is never exceeded), which that process then spends locally for
at most `GRANT_SECONDS` (see `RedisWindows.hit`).
Without it they are kept in process memory, which is exact for the default single-process server; `tidegate serve --workers N` without Redis says so on
start. In memory we count with `LocalSlidingWindow` (the same algorithm in 30 lines)
rather than `limits`' MemoryStorage: that storage re-arms a 10 ms timer thread on every
hit (~100 thread starts a second under load) and goes through ~10 wrapped method calls per
hit; measured, 4.5 us a hit against 0.7 us, on the path of every request.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.commands.core import AsyncScript

from tidegate.batching import Coalescer
from tidegate.errors import RateLimited, ServiceUnavailable

PERIOD = 60.0


class LimiterUnavailable(ServiceUnavailable):
    """Redis is down: refuse (fail closed) rather than run unlimited; 503 with Retry-After."""

    def __init__(self) -> None:
        super().__init__("rate_limiter_unavailable", "The rate limiter is unavailable; try again shortly.")


class LocalSlidingWindow:
    """Sliding window counters in this process's memory."""

    SWEEP_SECONDS = 300.0

    def __init__(self, period: float = PERIOD):
        self.period = period
        self._lock = threading.Lock()
        self._windows: dict[str, list[int]] = {}  # key -> [window index, previous count, current count]
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS

    def hit(self, key: str, limit: int, now: float | None = None) -> float | None:
        """Count one request if `limit` allows it and return None; else return how many
        seconds until one would be allowed (nothing is counted)."""
        refused = self.hit_pair(key, limit, None, 0, now)
        return None if refused is None else refused[1]

    def hit_pair(
        self, key: str, limit: int, other: str | None, other_limit: int, now: float | None = None
    ) -> tuple[int, float] | None:
        """Count one request on `key` and (unless None) `other`, if both limits allow it, and
        return None; else count nothing and return (0 if `key` is full, 1 if `other` is;
        seconds until it would allow one). All or nothing, under one lock."""
        now = time.time() if now is None else now
        index = int(now // self.period)
        elapsed = now - index * self.period
        with self._lock:
            window = self._window(key, index)
            previous, current = window[1], window[2]
            if previous * (self.period - elapsed) / self.period + current + 1 > limit:
                return 0, retry_after(self.period, limit, previous, current, elapsed)
            if other is not None:
                shared = self._window(other, index)
                previous, current = shared[1], shared[2]
                if previous * (self.period - elapsed) / self.period + current + 1 > other_limit:
                    return 1, retry_after(self.period, other_limit, previous, current, elapsed)
                shared[2] = current + 1
            window[2] += 1
            self._sweep_if_due()
            return None

    def _window(self, key: str, index: int) -> list[int]:
        """[window index, previous count, current count] of `key`, moved to window `index`."""
        window = self._windows.get(key)
        if window is None or window[0] < index - 1:
            window = self._windows[key] = [index, 0, 0]
        elif window[0] == index - 1:
            window[:] = [index, window[2], 0]
        return window

    def _sweep_if_due(self) -> None:
        # Counters older than the previous window weigh nothing: drop them now and then.
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS
        oldest = int(time.time() // self.period) - 1
        for key in [k for k, w in self._windows.items() if w[0] < oldest]:
            del self._windows[key]


def retry_after(period: float, limit: int, previous: int, current: int, elapsed: float) -> float:
    """Seconds until a sliding window counter at (previous, current), `elapsed` into this
    window, would allow one more request under `limit`."""
    if current + 1 <= limit:
        # This window still has room: wait for last window's weight to fall enough.
        return period * (1 - (limit - 1 - current) / previous) - elapsed
    # Wait into the next window, where this window's count is the decaying one.
    return (period - elapsed) + period * (1 - (limit - 1) / current)


_local = LocalSlidingWindow()


# Redis counters, built once per process at start-up (`connect`, from the app's lifespan):
# built lazily by concurrent request threads, a half-imported `redis` module was seen.
_redis_windows: dict[str, RedisWindows] = {}
_redis_lock = threading.Lock()
# Fail fast while Redis is down (the request gets its 503 at once), reconnect when it is back.
REDIS_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 2, "health_check_interval": 10}
COUNTER_PREFIX = "tidegate-rl"

# The sliding window counter of every request of a batch, in order, in one script run (one
# round trip, atomic): each request is counted on all its counters or refused on none.
# ARGV: weight of the previous window, TTL, then per request: n, then its n limits.
# KEYS: per counter of each request, [this window's, previous window's].
# Returns per request: index of the refusing counter (-1: counted), its previous, its current.
WINDOWS_SCRIPT = """
local weight = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
local a, k = 3, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  a = a + 1
  local refused, rp, rc = -1, 0, 0
  for j = 0, n - 1 do
    local cur = tonumber(redis.call('GET', KEYS[k + 2 * j]) or '0')
    local prev = tonumber(redis.call('GET', KEYS[k + 2 * j + 1]) or '0')
    if refused < 0 and prev * weight + cur + 1 > tonumber(ARGV[a + j]) then
      refused, rp, rc = j, prev, cur
    end
  end
  if refused < 0 then
    for j = 0, n - 1 do
      redis.call('INCR', KEYS[k + 2 * j])
      redis.call('EXPIRE', KEYS[k + 2 * j], ttl)
    end
  end
  out[#out + 1] = refused
  out[#out + 1] = rp
  out[#out + 1] = rc
  a = a + n
  k = k + 2 * n
end
return out
"""

# Room taken ahead by a process for a batch (`RedisWindows.hit`), in one script run: first the
# unused room of expired grants is given back, then each group of requests with the same
# counters gets `granted` <= `want` hits, counted at once on every counter of the group (all or
# nothing per hit: the grant is the smallest room of its counters).
# ARGV: weight of the previous window, TTL, number of give-backs R; per give-back: n, amount;
# then per group: n, want, its n limits.
# KEYS: per give-back, its n counters' window keys (the window it was granted in); per group,
# per counter, [this window's, previous window's].
# Returns per group: granted, index of the counter that bound it (-1: all granted), that
# counter's previous and (after the grant) current count.
GRANTS_SCRIPT = """
local weight = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local a, k = 4, 1
for r = 1, tonumber(ARGV[3]) do
  local n, amount = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for j = 0, n - 1 do
    local have = tonumber(redis.call('GET', KEYS[k + j]) or '0')
    local back = math.min(have, amount)
    if back > 0 then
      redis.call('DECRBY', KEYS[k + j], back)
    end
  end
  k = k + n
end
local out = {}
while a <= #ARGV do
  local n, want = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local granted, bound, bp, bc = want, -1, 0, 0
  for j = 0, n - 1 do
    local cur = tonumber(redis.call('GET', KEYS[k + 2 * j]) or '0')
    local prev = tonumber(redis.call('GET', KEYS[k + 2 * j + 1]) or '0')
    local room = math.floor(tonumber(ARGV[a + j]) - prev * weight - cur)
    if room < 0 then
      room = 0
    end
    if room < granted then
      granted, bound, bp, bc = room, j, prev, cur
    end
  end
  if granted > 0 then
    for j = 0, n - 1 do
      redis.call('INCRBY', KEYS[k + 2 * j], granted)
      redis.call('EXPIRE', KEYS[k + 2 * j], ttl)
    end
  end
  out[#out + 1] = granted
  out[#out + 1] = bound
  out[#out + 1] = bp
  out[#out + 1] = bc + granted
  a = a + n
  k = k + 2 * n
end
return out
"""

# Room taken ahead is spent for at most this long (and never past its window), then what is
# left of it is given back; it grows for a busy key (doubling while used up in time) up to the
# smaller of MAX_GRANT and 1/GRANT_SHARE of its smallest limit (0 for limits under GRANT_SHARE:
# such keys are counted one trip per request, as before).
GRANT_SECONDS = 0.2
MAX_GRANT = 256
GRANT_SHARE = 16
SWEEP_SECONDS = 1.0


@dataclass
class _Grant:
    """Room this process took ahead for one set of counters (under `RedisWindows._lock`)."""

    window: int  # the window index it was counted in
    left: int  # hits not spent yet
    expires: float  # time.monotonic() after which it is not spent (given back instead)
    size: int  # how much was asked ahead of the requests that asked

    def spendable(self, window: int, now: float) -> bool:
        return self.left > 0 and self.window == window and now < self.expires


# A request's counters: ((name, limit), ...), its key's first; None or (refusing index, wait s).
Counters = tuple[tuple[str, int], ...]
Refusal = tuple[int, float] | None


class RedisWindows:
    """Sliding window counters in Redis, shared by every process and node.

    `hit_many` counts a batch of requests in one round trip, one count per request. `hit`
    (async, the API's path) counts with room taken ahead: the concurrent requests of a process
    share one trip (`batching.Coalescer`), which counts them and, for a busy key, up to
    `MAX_GRANT` more hits at once in Redis; the process spends those locally (no trip) for at
    most `GRANT_SECONDS` within the same window, then gives back what is left. Every hit is
    counted in Redis before it is allowed, so the limits are never exceeded across nodes; room
    held by one process can refuse another's request early (by at most what is held, for at
    most `GRANT_SECONDS`). Redis down fails the request (503) once the room already counted
    is spent, never lets it by uncounted.
    """

    def __init__(self, redis_url: str, period: float = PERIOD):
        self.period = period
        self.client = redis.Redis.from_url(redis_url, **REDIS_OPTIONS)
        self.script = self.client.register_script(WINDOWS_SCRIPT)
        self.redis_url = redis_url
        # Per event loop: an asyncio client is bound to the loop it was made on.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[AsyncScript, AsyncScript]] = (
            weakref.WeakKeyDictionary()
        )
        self.batches: Coalescer[Counters, Refusal] = Coalescer(self.grant_many_async)
        # Room taken ahead, per set of counters; shared by the process's event loops (a test
        # client runs its own beside the server's), so spent under a lock.
        self._grants: dict[Counters, _Grant] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        self.local_hits = 0  # requests allowed from room taken ahead, for tests and benches

    def hit_many(self, requests: list[Counters]) -> list[Refusal]:
        """Count a batch of requests (blocking)."""
        keys, args, elapsed = self._script_input(requests)
        try:
            out = self.script(keys=keys, args=args)
        except Exception as exc:  # the store is down: refuse rather than run unlimited
            raise LimiterUnavailable() from exc
        return self._refusals(requests, out, elapsed)

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        """This event loop's (windows, grants) scripts."""
        loop = asyncio.get_running_loop()
        scripts = self._async.get(loop)
        if scripts is None:
            client = redis.asyncio.Redis.from_url(self.redis_url, **REDIS_OPTIONS)  # type: ignore[arg-type]
            scripts = self._async[loop] = (
                client.register_script(WINDOWS_SCRIPT),
                client.register_script(GRANTS_SCRIPT),
            )
        return scripts

    async def hit_many_async(self, requests: list[Counters]) -> list[Refusal]:
        """Count a batch of requests on the event loop (no thread hop), one count each."""
        script = self._scripts()[0]
        keys, args, elapsed = self._script_input(requests)
        try:
            out = await script(keys=keys, args=args)
        except Exception as exc:  # the store is down: refuse rather than run unlimited
            raise LimiterUnavailable() from exc
        return self._refusals(requests, out, elapsed)

    def _spend(self, counters: Counters, window: int, now: float) -> bool:
        """Allow one request from room taken ahead, if this process holds some."""
        with self._lock:
            grant = self._grants.get(counters)
            if grant is None or not grant.spendable(window, now):
                return False
            grant.left -= 1
            self.local_hits += 1
            return True

    async def grant_many_async(self, requests: list[Counters]) -> list[Refusal]:
        """Count a batch of requests (one `hit` each) in one trip, taking room ahead for the
        busy ones, and giving back the unspent room of expired grants in the same trip."""
        wall, now = time.time(), time.monotonic()
        window = int(wall // self.period)
        elapsed = wall - window * self.period
        results: list[Refusal] = [None] * len(requests)
        groups: dict[Counters, list[int]] = {}
        for position, counters in enumerate(requests):
            groups.setdefault(counters, []).append(position)
        asks: list[tuple[Counters, list[int], int]] = []  # counters, positions left to count, room ahead
        with self._lock:
            give_back = self._expired(window, now)
            for counters, positions in groups.items():
                grant = self._grants.get(counters)
                if grant is not None and grant.spendable(window, now):
                    # Room taken by a trip that ended while these requests waited for this one.
                    spent = min(grant.left, len(positions))
                    grant.left -= spent
                    self.local_hits += spent
                    positions = positions[spent:]
                    if not positions:
                        continue
                ahead = self._ahead(counters, grant, window, now)
                if grant is not None and grant.left > 0:  # past its time or window: give it back
                    give_back.append((counters, grant.window, grant.left))
                    grant.left = 0
                asks.append((counters, positions, ahead))
        if not asks and not give_back:
            return results
        keys: list[str] = []
        args: list[float] = [(self.period - elapsed) / self.period, int(2 * self.period) + 1, len(give_back)]
        for counters, granted_window, amount in give_back:
            args += [len(counters), amount]
            keys += [f"{COUNTER_PREFIX}/{name}/{granted_window}" for name, _ in counters]
        for counters, positions, ahead in asks:
            args += [len(counters), len(positions) + ahead]
            for name, limit in counters:
                keys += [f"{COUNTER_PREFIX}/{name}/{window}", f"{COUNTER_PREFIX}/{name}/{window - 1}"]
                args.append(limit)
        try:
            out = await self._scripts()[1](keys=keys, args=args)
        except Exception as exc:  # the store is down: refuse rather than run unlimited
            raise LimiterUnavailable() from exc
        with self._lock:
            for i, (counters, positions, ahead) in enumerate(asks):
                granted, bound, previous, current = (int(v) for v in out[4 * i : 4 * i + 4])
                allowed = min(granted, len(positions))
                for position in positions[allowed:]:
                    limit = counters[bound][1]
                    results[position] = (bound, retry_after(self.period, limit, previous, current, elapsed))
                left = granted - allowed
                held = self._grants.get(counters)
                if held is not None and held.spendable(window, now):
                    left += held.left  # (same window: still counted where it is spent)
                self._grants[counters] = _Grant(window, left, now + GRANT_SECONDS, ahead)
        return results

    def _ahead(self, counters: Counters, grant: _Grant | None, window: int, now: float) -> int:
        """How many hits to count ahead for `counters`: none for a key seen first or with a low
        limit; doubling while each grant is used up in time, halving when one is not."""
        cap = min(MAX_GRANT, min(limit for _, limit in counters) // GRANT_SHARE)
        if grant is None or cap <= 0:
            return 0
        if grant.left > 0:  # expired unspent
            return min(cap, grant.size // 2)
        if grant.window == window and now < grant.expires:
            return min(cap, max(1, 2 * grant.size))
        return min(cap, grant.size)

    def _expired(self, window: int, now: float) -> list[tuple[Counters, int, int]]:
        """Unspent room of grants past their time or window, taken out to be given back
        (counters, window, amount); grants long idle are dropped. Under `_lock`."""
        back = []
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + SWEEP_SECONDS
        for counters, grant in list(self._grants.items()) if sweep else ():
            if not grant.spendable(window, now):
                if grant.left > 0:
                    back.append((counters, grant.window, grant.left))
                    grant.left = 0  # (kept, empty: its size guides the next grant)
                if now >= grant.expires + SWEEP_SECONDS:
                    del self._grants[counters]
        return back

    def _script_input(self, requests: list[Counters]) -> tuple[list[str], list[float], float]:
        now = time.time()
        index = int(now // self.period)
        elapsed = now - index * self.period
        keys: list[str] = []
        args: list[float] = [(self.period - elapsed) / self.period, int(2 * self.period) + 1]
        for counters in requests:
            args.append(len(counters))
            for name, limit in counters:
                keys += [f"{COUNTER_PREFIX}/{name}/{index}", f"{COUNTER_PREFIX}/{name}/{index - 1}"]
                args.append(limit)
        return keys, args, elapsed

    def _refusals(self, requests: list[Counters], out: list[int], elapsed: float) -> list[Refusal]:
        refusals: list[Refusal] = []
        for i, counters in enumerate(requests):
            refused, previous, current = (int(v) for v in out[3 * i : 3 * i + 3])
            if refused < 0:
                refusals.append(None)
            else:
                limit = counters[refused][1]
                refusals.append((refused, retry_after(self.period, limit, previous, current, elapsed)))
        return refusals

    async def hit(self, counters: Counters) -> Refusal:
        """Count one request: from room this process holds (no I/O), else in a shared trip."""
        if self._spend(counters, int(time.time() // self.period), time.monotonic()):
            return None
        try:
            return await self.batches.ask(counters)
        except LimiterUnavailable as exc:
            raise LimiterUnavailable() from exc.__cause__  # (one exception object per request)


def connect(redis_url: str | None) -> None:
    """Build the Redis client for `redis_url` now (no network I/O: it connects on first use)."""
    if redis_url:
        _redis(redis_url)


def _redis(redis_url: str) -> RedisWindows:
    windows = _redis_windows.get(redis_url)
    if windows is None:
        with _redis_lock:
            windows = _redis_windows.get(redis_url)
            if windows is None:
                windows = _redis_windows[redis_url] = RedisWindows(redis_url)
    return windows


def is_local(redis_url: str | None) -> bool:
    """Counts kept in process memory (no I/O: safe to call on the event loop)."""
    return not redis_url


def _counters(key_id: str, per_minute: int, owner_id: str | None, owner_per_minute: int | None) -> Counters:
    if owner_id is not None and owner_per_minute is not None:
        return ((f"{KEY_NAMESPACE}/{key_id}", per_minute), (f"{USER_NAMESPACE}/{owner_id}", owner_per_minute))
    return ((f"{KEY_NAMESPACE}/{key_id}", per_minute),)


def enforce(
    redis_url: str | None,
    key_id: str,
    per_minute: int,
    owner_id: str | None = None,
    owner_per_minute: int | None = None,
) -> None:
    """Count a request of `key_id` (and, given `owner_id`, of the person whose keys share
    `owner_per_minute`), or refuse it: 429 with Retry-After; 503 if Redis is down.
    Blocking (a Redis round trip when `redis_url` is set): see `enforce_async`."""
    if not redis_url:
        _refuse(_local_hit(key_id, per_minute, owner_id, owner_per_minute), per_minute, owner_per_minute)
    else:
        counters = _counters(key_id, per_minute, owner_id, owner_per_minute)
        _refuse(_redis(redis_url).hit_many([counters])[0], per_minute, owner_per_minute)


async def enforce_async(
    redis_url: str | None,
    key_id: str,
    per_minute: int,
    owner_id: str | None = None,
    owner_per_minute: int | None = None,
) -> None:
    """`enforce` for the event loop: in memory at once; with Redis, in a round trip shared
    with the process's concurrent requests (in the threadpool, never blocking the loop)."""
    if not redis_url:
        _refuse(_local_hit(key_id, per_minute, owner_id, owner_per_minute), per_minute, owner_per_minute)
    else:
        counters = _counters(key_id, per_minute, owner_id, owner_per_minute)
        _refuse(await _redis(redis_url).hit(counters), per_minute, owner_per_minute)


def _local_hit(key_id: str, per_minute: int, owner_id: str | None, owner_per_minute: int | None) -> Refusal:
    shared = owner_id is not None and owner_per_minute is not None
    owner_key = USER_PREFIX + owner_id if owner_id is not None and shared else None
    return _local.hit_pair(key_id, per_minute, owner_key, owner_per_minute or 0)


def _refuse(refused: Refusal, per_minute: int, owner_per_minute: int | None) -> None:
    if refused is None:
        return
    retry_after = max(1, math.ceil(refused[1]))
    if refused[0] == 1:
        raise RateLimited(
            "user_rate_limit_exceeded",
            f"All API keys of this key's owner share a limit of {owner_per_minute} requests per minute; "
            f"retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
    raise RateLimited(
        "rate_limit_exceeded",
        f"This key is limited to {per_minute} requests per minute; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


KEY_NAMESPACE, USER_NAMESPACE = "tidegate-key", "tidegate-user"
USER_PREFIX = "user:"  # in-memory counters: keep a person's apart from any key's
