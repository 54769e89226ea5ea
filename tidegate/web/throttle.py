"""Sign-in backoff: failed attempts are counted per email and per client IP.

Each counter has tiers of growing windows (the `limits` library's moving window): five
failures for an email lock it for up to a minute, ten for up to fifteen minutes, twenty
for up to an hour. Per IP the tiers are wider, so that one address can still sign in
several people. A success clears the email's counters, not the IP's. Counts live in
Redis when TIDEGATE_REDIS_URL is set (shared by every worker), otherwise in memory.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute, storage, strategies

NAMESPACE = "tidegate-signin"
EMAIL_TIERS: tuple[RateLimitItem, ...] = (
    RateLimitItemPerMinute(5), RateLimitItemPerMinute(10, 15), RateLimitItemPerHour(20),
)
IP_TIERS: tuple[RateLimitItem, ...] = (RateLimitItemPerMinute(20), RateLimitItemPerHour(100))


class ThrottleUnavailable(Exception):
    pass


@lru_cache(maxsize=4)
def _limiter(redis_url: str | None) -> strategies.MovingWindowRateLimiter:
    return strategies.MovingWindowRateLimiter(storage.storage_from_string(redis_url or "memory://"))


def _subjects(email: str, ip: str | None):
    yield EMAIL_TIERS, ("email", email)
    yield IP_TIERS, ("ip", ip or "unknown")


def locked_for(redis_url: str | None, email: str, ip: str | None) -> int:
    """Seconds until another attempt is allowed for this email and IP (0: allowed now)."""
    limiter = _limiter(redis_url)
    wait = 0.0
    try:
        for tiers, ids in _subjects(email, ip):
            for item in tiers:
                if not limiter.test(item, NAMESPACE, *ids):
                    reset = limiter.get_window_stats(item, NAMESPACE, *ids).reset_time
                    wait = max(wait, reset - time.time())
    except Exception as exc:  # the store is down: refuse rather than allow unlimited guessing
        raise ThrottleUnavailable() from exc
    return max(1, math.ceil(wait)) if wait > 0 else 0


def failed(redis_url: str | None, email: str, ip: str | None) -> None:
    limiter = _limiter(redis_url)
    try:
        for tiers, ids in _subjects(email, ip):
            for item in tiers:
                limiter.hit(item, NAMESPACE, *ids)
    except Exception as exc:
        raise ThrottleUnavailable() from exc


def succeeded(redis_url: str | None, email: str) -> None:
    limiter = _limiter(redis_url)
    try:
        for item in EMAIL_TIERS:
            limiter.clear(item, NAMESPACE, "email", email)
    except Exception:  # best effort: the counters age out anyway
        pass
