"""Bursts of failed authentication against one key prefix.

Every refused key (unknown, wrong tenant, bad checksum, revoked, expired, or used from an
address outside its IP allowlist) counts against its display prefix (`qk_` + 9 characters,
what the UI and the logs show of a key) in fixed windows of `window` seconds. The failure that brings a window's count to `threshold`
records `api_key.auth_failure_burst` in the organization whose key has that prefix (none:
nobody to tell), so it fires once per prefix and window, however many failures follow.

Counts live in Redis when TIDEGATE_REDIS_URL is set (INCR is atomic: one event per window
across every process and node), else in this process's memory. Only refused requests pay
for any of this, and a failure to count never changes the answer (a 401 stays a 401).
"""

from __future__ import annotations

import logging
import re
import threading
import time

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.audit.record import SERVER, record
from tidegate.caching import LRUCache
from tidegate.credentials.keyformat import DISPLAY_PREFIX_LENGTH
from tidegate.credentials.models import ApiKey
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.credentials")

AUTH_FAILURE_BURST = "api_key.auth_failure_burst"
_PREFIX = re.compile(rf"^qk_[0-9A-Za-z]{{{DISPLAY_PREFIX_LENGTH - 3}}}$")
NAMESPACE = "tidegate-authfail"
MAX_PREFIXES = 10_000


def prefix_of_attempt(authorization: str | None) -> str | None:
    """The display prefix of the key a refused `Authorization` header tried, if it tried one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    prefix = token.strip()[:DISPLAY_PREFIX_LENGTH]
    return prefix if scheme.lower() == "bearer" and _PREFIX.match(prefix) else None


class FailureBursts:
    def __init__(self, redis_url: str | None, threshold: int, window_seconds: int):
        self.threshold, self.window = threshold, window_seconds
        self._client = (
            redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2) if redis_url else None
        )
        self._lock = threading.Lock()  # (count-and-store is one step: LRUCache locks each alone)
        # Anyone can send well-formed prefixes: at most this many are counted at once, the least
        # recently failed dropped first (a prefix under attack stays, a spray of one-offs goes).
        self._counts: LRUCache[tuple[str, int], int] = LRUCache(MAX_PREFIXES, name="failed-auth counts")

    def count(self, prefix: str, now: float | None = None) -> int:
        """Count one failure for `prefix`; this window's count so far (blocking with Redis)."""
        window = int((time.time() if now is None else now) // self.window)
        if self._client is not None:
            name = f"{NAMESPACE}/{prefix}/{window}"
            pipe = self._client.pipeline()
            pipe.incr(name)
            pipe.expire(name, self.window + 1)
            return int(pipe.execute()[0])
        with self._lock:
            return self._counts.put((prefix, window), (self._counts.get((prefix, window)) or 0) + 1)

    @property
    def local(self) -> bool:
        """Counted in memory: `count` does no I/O (safe on the event loop)."""
        return self._client is None

    def note(self, database_url: str, prefix: str, now: float | None = None) -> bool:
        """Count a failure, and record the burst if this one completes it; True if recorded."""
        try:
            if self.count(prefix, now) != self.threshold:
                return False
        except Exception as exc:  # noqa: BLE001 - counting must never change the refusal
            log.warning("failed authentication not counted (%s)", type(exc).__name__)
            return False
        return self.record(database_url, prefix)

    def record(self, database_url: str, prefix: str) -> bool:
        """Record the burst this window's count reached (blocking)."""
        try:
            with session_scope(database_url) as session:
                return record_burst(session, prefix, self.threshold, self.window)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("failed-authentication burst not recorded (%s)", type(exc).__name__)
            return False


def record_burst(session: Session, prefix: str, failures: int, window_seconds: int) -> bool:
    """Record the burst in the organization of the key with `prefix`; False if there is none.
    An observation, not a change: nothing here alters access (no epoch bump)."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_prefix == prefix).limit(1))
    if key is None:
        return False
    record(
        session,
        SERVER,
        AUTH_FAILURE_BURST,
        org_id=key.org_id,
        target_type="api_key",
        target_id=key.id,
        details={"name": key.name, "key_prefix": prefix, "failures": failures, "window_seconds": window_seconds},
    )
    return True
