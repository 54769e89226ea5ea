"""Sign-in throttling that an attacker can neither reset nor turn against the real user.

Three counters of recent failed attempts, each a log of (attempt id, time):

- per (organization, email, client IP): five failures in 15 minutes lock that triple (the
  sign-in page answers 429 with Retry-After until the fifth-newest failure ages out). Only
  the IP that failed is locked: five failures from five IPs lock nobody out.
- per account, i.e. (organization, email), from any IP: after ten failures in an hour each
  further attempt must come a growing delay after the previous one (2 s, 4 s, ... at most
  30 s): a slow-down, never a lockout. The delay is kept in two lanes: one for IPs that have
  not failed on this account in the last hour, one for those that have. Guessing across any
  number of IPs is bounded to two attempts per 30 s an account, and an attacker's IPs, once
  they have failed, cannot take the turns of the real user signing in from a clean IP.
- per client IP across all accounts: 100 failures in 15 minutes lock the IP (credential
  stuffing from one address).

A client is its IPv4 address or its IPv6 /64.

The email is typed before the organization is known (one email may have a user in several
organizations), so an attempt counts against every organization with an active user of that
email; an email with no user counts against a placeholder organization, so that an unknown
email is throttled exactly like a real one (no account discovery by throttling).

An attempt is counted *before* its password is checked, atomically with the check of the
counters (so a burst of concurrent guesses cannot slip through together), and a success
takes it back: it clears its own (organization, email, IP) counter and removes its own
entry from the others. Nothing else resets anything, so a success in one organization
leaves another organization's counters as they were, and no success resets the account's
slow-down.

Counts live in Redis when TIDEGATE_REDIS_URL is set (shared by every worker and server),
otherwise in this process's memory (each worker process then counts on its own). The store
is hand-written rather than `limits`: its strategies can express neither a lockout that only
a success clears nor a delay that grows with the failures, and cannot take a test clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

UNKNOWN_ORG = "-"  # the organization an email with no user is counted under
CLEAN, SEEN = ".clean", ".seen"  # slow-down lanes, as suffixes of the account counter's entries
NAMESPACE = "tidegate-signin"


class ThrottleUnavailable(Exception):
    """The shared store (Redis) cannot be reached: refuse sign-in rather than count nothing."""


class SignInPaused(Exception):
    def __init__(self, wait: int):
        super().__init__(f"sign-in paused for {wait} s")
        self.wait = wait


@dataclass(frozen=True)
class Policy:
    lock_after: int = 5  # failures of one (organization, email, IP) ...
    lock_window: float = 15 * 60  # ... within this many seconds lock that triple
    slow_after: int = 10  # failures of one account from anywhere before the slow-down starts
    slow_window: float = 60 * 60
    first_delay: float = 2.0  # seconds between attempts at the threshold, doubling per failure
    max_delay: float = 30.0
    ip_lock_after: int = 100  # failures from one IP across all accounts
    ip_window: float = 15 * 60
    keep: int = 200  # newest entries kept per counter: enough to judge, bounded memory


@dataclass(frozen=True)
class Attempt:
    """A counted sign-in attempt. Check the password only against users of `open_orgs`."""

    id: str
    email: str
    ip: str
    open_orgs: frozenset[str]
    closed_wait: int  # > 0: some organization of this email is paused for this many seconds


# A store runs `decide(entries)` on the current entries of `keys` ({key: {member: time}})
# and applies the operations it returns, as one atomic step. Operations:
# ("add", key, member, time, ttl), ("remove", key, member), ("delete", key).
Decision = Callable[[dict[str, dict[str, float]]], tuple[object, list[tuple]]]


class MemoryStore:
    """Counters in this process's memory."""

    SWEEP_EVERY = 1000

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, float]] = {}
        self._expires: dict[str, float] = {}
        self._ops = 0

    def transact(self, keys: Iterable[str], decide: Decision):
        with self._lock:
            result, operations = decide({key: dict(self._entries.get(key, {})) for key in keys})
            for op in operations:
                self._apply(op)
            self._ops += 1
            if self._ops % self.SWEEP_EVERY == 0:
                self._sweep()
        return result

    def _apply(self, op: tuple) -> None:
        kind, key = op[0], op[1]
        if kind == "add":
            _, _, member, at, ttl = op
            self._entries.setdefault(key, {})[member] = at
            self._expires[key] = time.monotonic() + ttl
        elif kind == "remove":
            self._entries.get(key, {}).pop(op[2], None)
        elif kind == "delete":
            self._entries.pop(key, None)
            self._expires.pop(key, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, at in self._expires.items() if at < now]:
            self._entries.pop(key, None)
            self._expires.pop(key, None)


class RedisStore:
    """Counters in Redis, one sorted set per counter; WATCH/MULTI makes each step atomic."""

    RETRIES = 50

    def __init__(self, client):
        self.client = client

    def transact(self, keys: Iterable[str], decide: Decision):
        import redis

        keys = list(keys)
        try:
            with self.client.pipeline() as pipe:
                for _ in range(self.RETRIES):
                    try:
                        if keys:
                            pipe.watch(*keys)
                        entries = {
                            key: {_text(m): s for m, s in pipe.zrange(key, 0, -1, withscores=True)} for key in keys
                        }
                        result, operations = decide(entries)
                        pipe.multi()
                        for op in operations:
                            self._queue(pipe, op)
                        pipe.execute()
                        return result
                    except redis.WatchError:  # another worker changed a counter: judge again
                        continue
        except redis.RedisError as exc:
            raise ThrottleUnavailable() from exc
        raise ThrottleUnavailable("too much contention on the sign-in counters")

    @staticmethod
    def _queue(pipe, op: tuple) -> None:
        kind, key = op[0], op[1]
        if kind == "add":
            _, _, member, at, ttl = op
            pipe.zadd(key, {member: at})
            pipe.expire(key, math.ceil(ttl))
        elif kind == "remove":
            pipe.zrem(key, op[2])
        elif kind == "delete":
            pipe.delete(key)


def _text(member) -> str:
    return member.decode() if isinstance(member, bytes) else member


def redis_client(redis_url: str):
    """A client for TIDEGATE_REDIS_URL (connects on first use; short timeouts: refuse, not hang)."""
    import redis

    if urlsplit(redis_url).scheme in ("redis", "rediss", "unix"):
        return redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    from limits.storage import storage_from_string  # redis+sentinel:// and the like, as the rate limiter

    storage = storage_from_string(redis_url)
    return storage.storage  # type: ignore[union-attr]  # every Redis storage of `limits` has it


def client_subject(ip: str | None) -> str:
    """What is counted as one client: an IPv4 address, or an IPv6 /64 (one host or household
    is given a whole /64, so rotating addresses inside it must not escape a lock)."""
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return ip or "unknown"
    if address.version == 4:
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


def _recent(entries: dict[str, float], now: float, window: float) -> list[float]:
    return sorted(at for at in entries.values() if at > now - window)


class SigninThrottle:
    def __init__(
        self, store, policy: Policy = Policy(), clock: Callable[[], float] = time.time, namespace: str = NAMESPACE
    ):
        self.store = store
        self.policy = policy
        self.clock = clock
        self.namespace = namespace

    @classmethod
    def for_redis_url(cls, redis_url: str | None) -> SigninThrottle:
        return cls(RedisStore(redis_client(redis_url)) if redis_url else MemoryStore())

    # -- keys: hashed, so that no email or address is stored in Redis -----------------------

    def _key(self, kind: str, *parts: str) -> str:
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
        return f"{self.namespace}:{kind}:{digest}"

    def _triple(self, org: str, email: str, ip: str) -> str:
        return self._key("triple", org, email, ip)

    def _account(self, org: str, email: str) -> str:
        return self._key("account", org, email)

    def _ip(self, ip: str) -> str:
        return self._key("ip", ip)

    # -- judging ------------------------------------------------------------------------------

    def _lock_wait(self, entries: dict[str, float], now: float, limit: int, window: float) -> float:
        recent = _recent(entries, now, window)
        return recent[-limit] + window - now if len(recent) >= limit else 0.0

    def _slow_wait(self, entries: dict[str, float], now: float, lane: str) -> float:
        """Seconds until the account's next attempt in `lane`: the delay grows with the failures
        in both lanes, and runs from the latest attempt in this one."""
        p = self.policy
        recent = _recent(entries, now, p.slow_window)
        if len(recent) < p.slow_after:
            return 0.0
        delay = min(p.max_delay, p.first_delay * 2.0 ** min(len(recent) - p.slow_after, 64))
        in_lane = _recent({m: at for m, at in entries.items() if m.endswith(lane)}, now, p.slow_window)
        return in_lane[-1] + delay - now if in_lane else 0.0

    def _lane(self, triple_entries: dict[str, float], now: float) -> str:
        """CLEAN for an IP with no failure on this account within the slow-down window."""
        return SEEN if _recent(triple_entries, now, self.policy.slow_window) else CLEAN

    # -- the sign-in flow ---------------------------------------------------------------------

    def begin(self, orgs: Iterable[str], email: str, ip: str | None) -> Attempt:
        """Count an attempt at `email` from `ip` against each of `orgs` that is open to it.

        Raises SignInPaused when none is (nothing is counted then), ThrottleUnavailable when
        the store is down."""
        orgs = sorted(set(orgs)) or [UNKNOWN_ORG]
        ip = client_subject(ip)
        p, now, attempt_id = self.policy, self.clock(), secrets.token_hex(8)
        ip_key = self._ip(ip)
        keys = {org: (self._triple(org, email, ip), self._account(org, email)) for org in orgs}

        def decide(entries):
            ip_wait = self._lock_wait(entries[ip_key], now, p.ip_lock_after, p.ip_window)
            lanes = {org: self._lane(entries[triple], now) for org, (triple, _) in keys.items()}
            waits = {
                org: max(
                    self._lock_wait(entries[triple], now, p.lock_after, p.lock_window),
                    self._slow_wait(entries[account], now, lanes[org]),
                )
                for org, (triple, account) in keys.items()
            }
            open_orgs = frozenset(org for org, wait in waits.items() if wait <= 0) if ip_wait <= 0 else frozenset()
            closed = [wait for wait in waits.values() if wait > 0]
            if not open_orgs:
                return SignInPaused(_seconds(max(ip_wait, min(closed, default=0)))), []
            operations = [("add", ip_key, attempt_id, now, p.ip_window)]
            for org in open_orgs:
                triple, account = keys[org]
                operations += [
                    ("add", triple, attempt_id, now, max(p.lock_window, p.slow_window)),  # lanes: 1 h
                    ("add", account, attempt_id + lanes[org], now, p.slow_window),
                ]
            closed_wait = _seconds(min(closed)) if closed else 0
            return Attempt(attempt_id, email, ip, open_orgs, closed_wait), operations

        all_keys = [ip_key, *(key for pair in keys.values() for key in pair)]
        outcome = self.store.transact(all_keys, lambda entries: self._trimmed(decide(entries), entries, now))
        if isinstance(outcome, SignInPaused):
            raise outcome
        return outcome

    def _trimmed(self, decided, entries: dict[str, dict[str, float]], now: float):
        """Also drop entries too old to matter and all but the newest `keep` of each counter."""
        result, operations = decided
        if not operations:
            return result, operations
        horizon = max(self.policy.lock_window, self.policy.slow_window, self.policy.ip_window)
        for key, members in entries.items():
            ordered = sorted(members.items(), key=lambda item: item[1])
            stale = [m for m, at in ordered if at <= now - horizon]
            excess = [m for m, _ in ordered[: max(0, len(ordered) - self.policy.keep + 1)]]
            operations += [("remove", key, member) for member in dict.fromkeys(stale + excess)]
        return result, operations

    def succeeded(self, attempt: Attempt, orgs: Iterable[str]) -> None:
        """The password matched users of `orgs`: clear their (org, email, IP) counters and take
        this attempt back from their account counters and from the IP's. The attempt stays a
        failure for every other organization it was counted against. Best effort: if the store
        is down, the entries age out."""
        orgs = set(orgs) & attempt.open_orgs
        operations: list[tuple] = [("remove", self._ip(attempt.ip), attempt.id)]
        for org in orgs:
            account = self._account(org, attempt.email)
            operations += [
                ("delete", self._triple(org, attempt.email, attempt.ip)),
                ("remove", account, attempt.id + CLEAN),
                ("remove", account, attempt.id + SEEN),
            ]
        try:
            self.store.transact([], lambda _entries: (None, operations))
        except ThrottleUnavailable:
            pass


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
