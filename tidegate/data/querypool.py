"""Where SQL queries run: their own bounded pool, admitted per key and per organization.

Queries never run in the server's general threadpool (anyio's, 40 threads, which also
serves key checks, management endpoints and page reads): 45 slow queries there once made
an admin's `GET /keys` wait 9.8 s. Here:

- at most `workers` queries run at once, each on its worker thread's own DuckDB database,
  whose memory limit is therefore a per-query ceiling; the others wait in line;
- a key may have `per_key` queries running or waiting, an organization `per_org`, the
  server `workers * 4`; one more is refused at once with 429 `too_many_concurrent_queries`
  and `Retry-After`;
- query threads run at a lower CPU priority (nice 10), so requests are served first;
- the wall clock runs from admission: a query still waiting at its deadline never starts,
  one running is interrupted, and the answer (`query_timeout`) is sent at the deadline
  whatever the thread is doing. A slot is given back only when its thread is really free,
  so a query that ignores the interrupt still counts against its key and organization.

The counts are per server process (each worker of `tidegate serve --workers N` has its own
pool): a Redis counter that outlives a killed process would refuse queries forever.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import duckdb

from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.data import sandbox
from tidegate.errors import RateLimited

T = TypeVar("T")
QUEUE_FACTOR = 4  # admitted queries (running or waiting) per worker, server-wide
RETRY_AFTER_SECONDS = 1
# How long past the deadline the answer may wait for the interrupted query to wind down
# (and so answer with its own error) before the timeout is sent regardless.
GRACE_SECONDS = 0.5
# Linux nice value of query threads (per thread on Linux): with 2 cores and a few queries
# each using them fully, the event loop and management threads would otherwise get a
# small share of the CPU and answer in seconds.
QUERY_NICE = 10


def _busy(message: str) -> RateLimited:
    return RateLimited("too_many_concurrent_queries", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _lower_priority() -> None:
    """Queries get the CPU only after requests: a lower priority (nice) for this thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), QUERY_NICE)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: same priority as everything else


class QueryPool:
    def __init__(self, limits: QueryLimits):
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="tidegate-query")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._per_key: Counter[str] = Counter()
        self._per_org: Counter[str] = Counter()
        self._admitted = 0

    @property
    def capacity(self) -> int:
        return self.limits.workers * QUEUE_FACTOR

    def admitted(self) -> dict:
        with self._lock:
            return {"total": self._admitted, "keys": dict(+self._per_key), "orgs": dict(+self._per_org)}

    def _admit(self, key: str, org: str) -> None:
        with self._lock:
            if self._per_key[key] >= self.limits.per_key:
                raise _busy(
                    f"This key already has {self.limits.per_key} queries running or waiting, the most "
                    "it may have at once; retry when one has finished."
                )
            if self._per_org[org] >= self.limits.per_org:
                raise _busy(
                    f"Your organization already has {self.limits.per_org} queries running or waiting, "
                    "the most it may have at once; retry when one has finished."
                )
            if self._admitted >= self.capacity:
                raise _busy("The server is running as many queries as it can; retry shortly.")
            self._per_key[key] += 1
            self._per_org[org] += 1
            self._admitted += 1

    def _release(self, key: str, org: str) -> None:
        with self._lock:
            self._per_key[key] -= 1
            self._per_org[org] -= 1
            self._admitted -= 1

    def connection(self) -> duckdb.DuckDBPyConnection:
        """This worker thread's own database (one query at a time runs on it)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            _lower_priority()  # before the database starts its threads, which inherit it
            connection = self._local.connection = sandbox.open_connection(
                memory_limit=f"{max(self.limits.memory_limit_bytes // 1024, 1024)}KiB"
            )
        return connection

    def budget(self, timeout: float | None = None) -> sandbox.Budget:
        """A budget starting now, of at most the configured timeout (`timeout` may ask for less)."""
        limit = self.limits.timeout_seconds if timeout is None else min(timeout, self.limits.timeout_seconds)
        return sandbox.Budget.starting_now(
            limit, max_result_bytes=self.limits.max_result_bytes, max_value_bytes=self.limits.max_value_bytes
        )

    async def run(
        self,
        principal: Principal,
        work: Callable[[sandbox.Budget, duckdb.DuckDBPyConnection], T],
        *,
        timeout: float | None = None,
    ) -> T:
        """`work(budget, connection)` in the pool, for `principal`; its result or its error,
        or `query_timeout` at the deadline, or 429 `too_many_concurrent_queries` at once."""
        budget = self.budget(timeout)
        key, org = principal.key_id or "user:" + principal.user_id, principal.org_id
        self._admit(key, org)
        try:
            future = self._executor.submit(self._call, work, budget)
        except BaseException:
            self._release(key, org)
            raise
        future.add_done_callback(lambda _: self._release(key, org))
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=max(budget.remaining(), 0.0) + GRACE_SECONDS
            )
        except TimeoutError:
            raise budget.timed_out() from None

    def _call(self, work, budget: sandbox.Budget):
        budget.check_time()  # waited in line past its deadline: never starts
        return work(budget, self.connection())

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_pools: dict[tuple[int, QueryLimits], QueryPool] = {}
_pools_lock = threading.Lock()


def pool_for(limits: QueryLimits) -> QueryPool:
    """The process's pool for these limits (made on first use, so after any fork)."""
    key = (os.getpid(), limits)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = QueryPool(limits)
        return pool
