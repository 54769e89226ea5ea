"""Per-key request limits, using the `limits` library's sliding window counter.

(The sliding window counter rather than the exact moving window: in memory the moving
window's storage starts a timer thread per expiry, ~1 ms a request; the counter costs
~16 us and is exact for a key's first window, approximate by the previous window's weight
after that.)

With `TIDEGATE_REDIS_URL` set, counts live in Redis and hold across every worker process
and server. Without it they are kept in process memory, which is exact for the default
single-process server; `tidegate serve --workers N` without Redis says so on start.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItemPerMinute, storage, strategies

from tidegate.errors import RateLimited, TidegateError


class LimiterUnavailable(TidegateError):
    status = 503
    type = "api_error"


@lru_cache(maxsize=4)
def _limiter(redis_url: str | None) -> strategies.SlidingWindowCounterRateLimiter:
    uri = redis_url or "memory://"
    return strategies.SlidingWindowCounterRateLimiter(storage.storage_from_string(uri))


def enforce(redis_url: str | None, key_id: str, per_minute: int) -> None:
    limiter = _limiter(redis_url)
    item = RateLimitItemPerMinute(per_minute)
    try:
        allowed = limiter.hit(item, "tidegate-key", key_id)
        if allowed:
            return
        reset_at = limiter.get_window_stats(item, "tidegate-key", key_id).reset_time
    except Exception as exc:  # the store is down: refuse rather than run unlimited
        raise LimiterUnavailable("rate_limiter_unavailable", "The rate limiter is unavailable; try again shortly.") from exc
    retry_after = max(1, math.ceil(reset_at - time.time()))
    raise RateLimited(
        "rate_limit_exceeded",
        f"This key is limited to {per_minute} requests per minute; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )
