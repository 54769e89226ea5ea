"""Where SQL queries run: their own bounded pool, admitted per key and per organization.

Queries never run in the server's general threadpool (anyio's, 40 threads, which also
serves key checks, management endpoints and page reads): 45 slow queries there once made
an admin's `GET /keys` wait 9.8 s. Here:

- at most `workers` queries run at once, each in a worker PROCESS of its own whose memory the
  kernel limits (`queryworker`): a per-query ceiling that holds whatever the query builds;
  the others wait in line. A worker that outgrows it (the answer is 400 `query_too_large`),
  is killed (503 `query_worker_lost`) or does not stop a second past its deadline (killed)
  is replaced at once; other queries and page reads go on;
- a key may have `per_key` queries running or waiting, an organization `per_org`, the
  server `workers * 4`; one more is refused at once with 429 `too_many_concurrent_queries`
  and `Retry-After`;
- query threads and worker processes run at a lower CPU priority (nice 10), so requests are
  served first;
- the wall clock runs from admission: a query still waiting at its deadline never starts,
  one running is interrupted, and the answer (`query_timeout`) is sent at the deadline
  whatever the thread is doing. A slot is given back only when its thread is really free,
  so a query that ignores the interrupt still counts against its key and organization; its
  worker process is killed a second past the deadline, which frees the thread.

A pool thread reads the caller's filtered rows (trusted code, in this process) and hands
them to its worker with the validated query: the worker never sees anything else.

The counts are per server process (each worker of `tidegate serve --workers N` has its own
pool): a Redis counter that outlives a killed process would refuse queries forever.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa

from tidegate import metrics
from tidegate.caching import LRUCache
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.data import queryworker, sandbox
from tidegate.errors import RateLimited

T = TypeVar("T")
QUEUE_FACTOR = 4  # admitted queries (running or waiting) per worker, server-wide
RETRY_AFTER_SECONDS = 1
# How long past the deadline the answer may wait for the interrupted query to wind down
# (and so answer with its own error) before the timeout is sent regardless.
GRACE_SECONDS = 0.5
QUERY_NICE = queryworker.QUERY_NICE  # of query threads too (they read the filtered rows)
# DuckDB threads per worker process (as the shared connection's default).
WORKER_THREADS = 2
# Refusals after which a worker is replaced: it may hold the memory it got, or be gone (one
# that did not stop at its deadline was killed: replaced as not alive).
_REPLACE_AFTER = ("query_too_large", "query_worker_lost")
# Rows per record batch of a streamed result (what the worker computes ahead, what is sent).
STREAM_BATCH_ROWS = 8192
# Streams a validated query's result: the signature of `sandbox.stream_tables`, in a worker.
StreamTables = Callable[..., Iterator[pa.Schema | pa.RecordBatch]]
# Filtered tables kept shared with workers (beyond the one a query uses), at most this large.
SHARED_TABLE_BYTES = 1024 * 1024 * 1024


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
        # Worker processes: the idle ones wait here for a pool thread. Each thread holds at
        # most one, so one is always free for a running thread. limits.warm_workers start with
        # the pool; the rest when queries first run side by side (each costs ~130 MB and half a
        # second of CPU to start, which a server that rarely queries should not pay).
        self._idle: queue.SimpleQueue[queryworker.Worker] = queue.SimpleQueue()
        self._workers: list[queryworker.Worker] = []
        self._started = 0  # started or starting, never more than limits.workers
        # Started by a thread of their own, so that making the pool never holds up the event
        # loop (a query's thread waits for a worker instead, within its deadline).
        threading.Thread(target=self._start_workers, name="tidegate-query-start", daemon=True).start()
        # Filtered tables shared with workers, by identity (kept alive here, so an identity is
        # never reused for other rows while its entry exists), most recently used last.
        self._shared: LRUCache[int, queryworker.SharedTable] = LRUCache(2 * limits.workers, name="query tables")

    @property
    def capacity(self) -> int:
        return self.limits.workers * QUEUE_FACTOR

    def admitted(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self._admitted, "keys": dict(+self._per_key), "orgs": dict(+self._per_org)}

    def _admit(self, key: str, org: str) -> None:
        with self._lock:
            if self._per_key[key] >= self.limits.per_key:
                metrics.query_refused("key")
                raise _busy(
                    f"This key already has {self.limits.per_key} queries running or waiting, the most "
                    "it may have at once; retry when one has finished."
                )
            if self._per_org[org] >= self.limits.per_org:
                metrics.query_refused("org")
                raise _busy(
                    f"Your organization already has {self.limits.per_org} queries running or waiting, "
                    "the most it may have at once; retry when one has finished."
                )
            if self._admitted >= self.capacity:
                metrics.query_refused("server")
                raise _busy("The server is running as many queries as it can; retry shortly.")
            self._per_key[key] += 1
            self._per_org[org] += 1
            self._admitted += 1
        metrics.query_admitted(1)

    def _release(self, key: str, org: str) -> None:
        with self._lock:
            self._per_key[key] -= 1
            self._per_org[org] -= 1
            self._admitted -= 1
        metrics.query_admitted(-1)

    def _start_workers(self) -> None:
        for _ in range(min(self.limits.warm_workers, self.limits.workers)):
            if self._reserve_start():
                self._idle.put(self._start_reserved())

    def _reserve_start(self) -> bool:
        with self._lock:
            if self._started >= self.limits.workers:
                return False
            self._started += 1
            return True

    def _start_reserved(self) -> queryworker.Worker:
        try:
            return self._start_worker()
        except BaseException:
            with self._lock:
                self._started -= 1
            raise

    def _take_worker(self, budget: sandbox.Budget) -> queryworker.Worker:
        """An idle worker; else a new one while fewer than limits.workers exist; else the
        next one freed, within the budget."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        if self._reserve_start():
            return self._start_reserved()
        try:
            return self._idle.get(timeout=max(budget.remaining(), 0.0))
        except queue.Empty:
            raise budget.timed_out() from None

    def _start_worker(self) -> queryworker.Worker:
        worker = queryworker.Worker(self.limits.memory_limit_bytes, WORKER_THREADS)
        with self._lock:
            self._workers.append(worker)
        return worker

    def _replace(self, worker: queryworker.Worker) -> queryworker.Worker:
        worker.kill()
        with self._lock:
            self._workers.remove(worker)
        return self._start_worker()

    def _shared_table(self, table: pa.Table) -> queryworker.SharedTable:
        shared = self._shared.get(id(table))
        if shared is not None and shared.table is table:
            return shared
        made = queryworker.SharedTable.of(table)  # it copies the table
        with self._lock:
            shared = self._shared.get(id(table))
            if shared is not None and shared.table is table:
                return shared  # another thread made it meanwhile; `made` is dropped unused
            self._shared.put(id(table), made)
            # A few tables are kept (the cache's count), of bounded size: an entry holds its
            # table in this process. An evicted one's descriptor closes once no thread holds it.
            keys = self._shared.keys()  # least recently used first
            sizes = [self._shared[key].table.nbytes for key in keys]
            while len(keys) > 1 and sum(sizes) > SHARED_TABLE_BYTES:
                self._shared.pop(keys.pop(0))
                sizes.pop(0)
        return made

    def _execute(self, worker_box: list[queryworker.Worker]) -> sandbox.Execute:
        """What `work` runs a query with: the signature of `sandbox.execute`, in a worker."""

        def execute(
            query: sandbox.ValidatedQuery, table: pa.Table, *, page: int, page_size: int, budget: sandbox.Budget
        ) -> tuple[list[dict[str, Any]], int, list[str]]:
            if table.num_columns == 0:  # refused as the sandbox refuses it, no worker needed
                return sandbox.execute(query, table, page=page, page_size=page_size, budget=budget)
            shared = self._shared_table(table)
            job = queryworker.Job(query, page, page_size, budget, shared.token)
            result, total = self._in_worker(worker_box, lambda worker: worker.run(job, shared))
            rows, columns = sandbox.rows_of(result)
            return rows, total, columns

        return execute

    def _in_worker(self, worker_box: list[queryworker.Worker], run: Callable[[queryworker.Worker], T]) -> T:
        """`run(worker)` with the thread's worker, replaced when it is lost or spent."""
        for attempt in range(2):
            worker = worker_box[0]
            try:
                return run(worker)
            except queryworker.WorkerGone:  # killed while idle: a fresh one runs the query
                worker_box[0] = self._replace(worker)
                if attempt:
                    raise queryworker.worker_lost() from None
            except Exception as exc:
                # A worker that ran out of memory may keep it (or be dying); one that was
                # killed (or cancelled) is gone: a fresh one takes its place.
                if getattr(exc, "code", None) in _REPLACE_AFTER or not worker.is_alive():
                    worker_box[0] = self._replace(worker)
                raise
        raise queryworker.worker_lost()  # not reached: the second attempt returns or raises

    def _execute_tables(self, worker_box: list[queryworker.Worker]) -> sandbox.ExecuteTables:
        """What `run_tables`' work runs a query with: the signature of `sandbox.run_tables`."""

        def execute(
            query: sandbox.ValidatedQuery,
            tables: Mapping[str, pa.Table],
            *,
            budget: sandbox.Budget,
            cancel: threading.Event | None = None,
            max_rows: int | None = None,
        ) -> pa.Table:
            if any(table.num_columns == 0 for table in tables.values()) or (cancel is not None and cancel.is_set()):
                # refused as the sandbox refuses it, no worker needed
                return sandbox.run_tables(query, tables, budget=budget, cancel=cancel, max_rows=max_rows)
            names = sorted({name.lower() for name in tables} & query.relations)
            shared = {name: self._shared_table(tables[name]) for name in names}
            job = queryworker.TablesJob(query, tuple((n, shared[n].token) for n in names), budget, max_rows)
            return self._in_worker(worker_box, lambda worker: worker.run_tables(job, list(shared.values()), cancel))

        return execute

    def _execute_stream(self, worker_box: list[queryworker.Worker]) -> StreamTables:
        """What `run_stream`'s work streams a query with: `sandbox.stream_tables`' items."""

        def execute(
            query: sandbox.ValidatedQuery,
            tables: Mapping[str, pa.Table],
            *,
            budget: sandbox.Budget,
            cancel: threading.Event | None = None,
            batch_rows: int = STREAM_BATCH_ROWS,
        ) -> Iterator[pa.Schema | pa.RecordBatch]:
            if cancel is not None and cancel.is_set():
                raise sandbox.cancelled()
            if any(table.num_columns == 0 for table in tables.values()):  # refused as the sandbox refuses it
                yield from sandbox.stream_tables(query, tables, budget=budget)
                return
            names = sorted({name.lower() for name in tables} & query.relations)
            shared = {name: self._shared_table(tables[name]) for name in names}
            job = queryworker.StreamJob(query, tuple((n, shared[n].token) for n in names), budget, batch_rows)
            for attempt in range(2):
                worker, started = worker_box[0], False
                try:
                    for item in worker.stream(job, list(shared.values()), cancel):
                        started = True
                        yield item
                    return
                except queryworker.WorkerGone:  # killed while idle: a fresh one runs the query
                    worker_box[0] = self._replace(worker)
                    if attempt or started:
                        raise queryworker.worker_lost() from None
                except Exception as exc:
                    if getattr(exc, "code", None) in _REPLACE_AFTER or not worker.is_alive():
                        worker_box[0] = self._replace(worker)
                    raise

        return execute

    def budget(self, timeout: float | None = None) -> sandbox.Budget:
        """A budget starting now, of at most the configured timeout (`timeout` may ask for less)."""
        limit = self.limits.timeout_seconds if timeout is None else min(timeout, self.limits.timeout_seconds)
        return sandbox.Budget.starting_now(
            limit, max_result_bytes=self.limits.max_result_bytes, max_value_bytes=self.limits.max_value_bytes
        )

    async def run(
        self,
        principal: Principal,
        work: Callable[[sandbox.Budget, sandbox.Execute], T],
        *,
        timeout: float | None = None,
    ) -> T:
        """`work(budget, execute)` in the pool, for `principal`, where `execute` has the
        signature of `sandbox.execute` and runs in a worker process; its result or its error,
        or `query_timeout` at the deadline, or 429 `too_many_concurrent_queries` at once."""
        return await self._run(principal, work, self._execute, timeout)

    async def run_tables(
        self,
        principal: Principal,
        work: Callable[[sandbox.Budget, sandbox.ExecuteTables], T],
        *,
        timeout: float | None = None,
    ) -> T:
        """As `run`, where `execute` has the signature of `sandbox.run_tables` (several named
        tables, the whole result as Arrow): a project's steps."""
        return await self._run(principal, work, self._execute_tables, timeout)

    async def run_stream(
        self,
        principal: Principal,
        work: Callable[[sandbox.Budget, StreamTables], T],
        *,
        timeout: float | None = None,
    ) -> T:
        """As `run_tables`, where `execute` yields the result as it is computed (the schema,
        then record batches: `sandbox.stream_tables`). The worker and the key's slot are held
        until `work` returns: it consumes the stream (a client fetching), within the deadline."""
        return await self._run(principal, work, self._execute_stream, timeout)

    async def _run(
        self,
        principal: Principal,
        work: Callable[[sandbox.Budget, Any], T],
        make_execute: Callable[[list[queryworker.Worker]], Any],
        timeout: float | None,
    ) -> T:
        budget = self.budget(timeout)
        key, org = principal.key_id or "user:" + principal.user_id, principal.org_id
        self._admit(key, org)
        try:
            future = self._executor.submit(self._call, work, budget, make_execute)
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

    def _call(
        self,
        work: Callable[[sandbox.Budget, Any], T],
        budget: sandbox.Budget,
        make_execute: Callable[[list[queryworker.Worker]], Any],
    ) -> T:
        budget.check_time()  # waited in line past its deadline: never starts
        if not getattr(self._local, "niced", False):
            _lower_priority()
            self._local.niced = True
        worker = self._take_worker(budget)
        if not worker.is_alive():  # killed while idle: replaced before a query is lost with it
            worker = self._replace(worker)
        box = [worker]
        try:
            budget.check_time()
            return work(budget, make_execute(box))
        finally:
            self._idle.put(box[0])

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            workers, self._workers = list(self._workers), []
            self._shared.clear()
        for worker in workers:
            worker.close()


_pools: dict[tuple[int, QueryLimits], QueryPool] = {}
_pools_lock = threading.Lock()


def pool_for(limits: QueryLimits) -> QueryPool:
    """The process's pool for these limits (made on first use, so after any fork)."""
    key = (os.getpid(), limits)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = QueryPool(limits)
            metrics.query_pool_capacity(sum(p.capacity for (pid, _), p in _pools.items() if pid == key[0]))
        return pool
