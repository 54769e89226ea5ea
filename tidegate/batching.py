"""One blocking round trip for many concurrent requests, each answered by a trip that
started after it asked.

The key cache's epoch check (PostgreSQL) and the rate limiter's count (Redis) each need a
round trip per request to stay exact across processes and nodes. Under load, requests of one
worker arrive while a trip is in flight: they wait for it to finish and share the next one.
An answer is never older than the request that gets it (the trip it gets started after the
request was queued), so a change committed before a request started is seen by it, exactly
as with a trip of its own; and a failing trip fails every request in it (a 503, never a stale
success). Idle, a request costs one trip, as before; under load the trips per request fall
with the concurrency.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar, cast

from anyio import to_thread

T = TypeVar("T")
R = TypeVar("R")


class _Queue(Generic[T, R]):
    __slots__ = ("items", "running")

    def __init__(self) -> None:
        self.items: list[tuple[T, asyncio.Future[R]]] = []
        self.running = False


class Coalescer(Generic[T, R]):
    """`await ask(item)`: `work([items...])[i]` from a call of `work` that started after the
    ask; concurrent asks share one call. `work` is a coroutine function (awaited on the loop:
    no thread hop) or a blocking function (run in a thread)."""

    def __init__(self, work: Callable[[list[T]], Sequence[R]] | Callable[[list[T]], Awaitable[Sequence[R]]]):
        self._work = work
        self._on_loop = inspect.iscoroutinefunction(work) or inspect.iscoroutinefunction(type(work).__call__)
        # One queue per event loop (a test client runs its own loop beside the server's).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[T, R]] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[None]] = set()
        self.trips = 0  # how many calls of `work`, for tests and benches
        self.asks = 0

    async def ask(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[R] = loop.create_future()
        queue.items.append((item, future))
        self.asks += 1
        if not queue.running:
            queue.running = True
            task = loop.create_task(self._drain(queue))
            self._tasks.add(task)  # (a task only weakly referenced by the loop may vanish)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, queue: _Queue[T, R]) -> None:
        try:
            while queue.items:
                batch, queue.items = queue.items, []
                self.trips += 1
                try:
                    items = [item for item, _ in batch]
                    if self._on_loop:
                        results = await cast(Awaitable[Sequence[R]], self._work(items))
                    else:
                        results = cast(Sequence[R], await to_thread.run_sync(self._work, items))
                except BaseException as exc:  # every waiter of the trip gets its failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # (a waiter cancelled: its client went away)
                        future.set_result(result)
        finally:
            queue.running = False
            for _, future in queue.items:  # (only if cancelled mid-trip: never leave a waiter hanging)
                if not future.done():
                    future.set_exception(RuntimeError("batched round trip cancelled"))
            queue.items = []
