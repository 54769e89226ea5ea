"""A statement's rows as the client fetches them, never the whole result at once.

A query over the key's tables runs in a query-pool worker that computes its result batch by
batch (`querypool.run_stream`); its pool thread hands each batch to the event loop here, at
most `WINDOW` ahead of what the client has taken: a slow client holds the worker back (the
statement timeout still runs), and memory stays a few batches whatever the result's size.
A portal run with a row limit, a FETCH from a cursor, take what they need and leave the rest
computing-on-demand. `fill` reads ahead before the first row is sent (the statement's
audit event is written first: no audit, no access); `on_finish` is told once how it ended
(all sent, failed, or closed early), with the rows the client got.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

import pyarrow as pa

from tidegate.data import sandbox

WINDOW = 2  # batches computed ahead of the client
_END = object()
_POLL_SECONDS = 0.05  # how often a producer waiting for room looks at stop, cancel, deadline


class Rows:
    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.rows = 0  # handed to the client so far
        self.ended = False  # the producer has no more
        self.on_finish: Callable[[int, str | None], None] | None = None
        self._buffer: deque[pa.RecordBatch] = deque()
        self._finished = False

    @property
    def done(self) -> bool:
        """Every row was handed over."""
        return self.ended and not self._buffer

    @property
    def buffered(self) -> int:
        return sum(batch.num_rows for batch in self._buffer)

    async def fill(self, rows: int) -> None:
        """Read ahead until `rows` rows wait here or there are no more (raises its failure)."""
        while not self.ended and self.buffered < rows:
            batch = await self._pull()
            if batch is None:
                self.ended = True
            else:
                self._buffer.append(batch)

    async def _pull(self) -> pa.RecordBatch | None:
        raise NotImplementedError

    async def next(self, at_most: int | None = None) -> pa.RecordBatch | None:
        """The next rows (at most `at_most`), or None once all were taken."""
        if not self._buffer:
            await self.fill(1)
            if not self._buffer:
                return None
        batch = self._buffer.popleft()
        if at_most is not None and batch.num_rows > at_most:
            self._buffer.appendleft(batch.slice(at_most))
            batch = batch.slice(0, at_most)
        self.rows += batch.num_rows
        return batch

    def finish(self, sqlstate: str | None) -> None:
        """Report the end once (may raise: the audit journal refused the event)."""
        if self._finished:
            return
        self._finished = True
        self.close()
        if self.on_finish is not None:
            self.on_finish(self.rows, sqlstate)

    def close(self) -> None:
        """No more rows are wanted: the producer stops."""


class TableRows(Rows):
    """Rows already computed (the catalog's answers: small)."""

    def __init__(self, table: pa.Table, batch_rows: int = 1000):
        super().__init__(table.schema)
        self._batches = iter(table.to_batches(max_chunksize=batch_rows))

    async def _pull(self) -> pa.RecordBatch | None:
        return next(self._batches, None)


class StreamRows(Rows):
    """Rows a pool thread produces (`produce`) while the event loop takes them (`next`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(pa.schema([]))
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._room = threading.Semaphore(WINDOW)
        self.stopped = threading.Event()

    # -- the pool thread -----------------------------------------------------------------------

    def produce(
        self, items: Iterator[pa.Schema | pa.RecordBatch], budget: sandbox.Budget, cancel: threading.Event | None
    ) -> None:
        """Hand `items` over as the client takes them; stop (closing `items`: the worker is
        told) when the rows are no longer wanted, on cancel, or at the deadline."""
        with contextlib.closing(items):  # type: ignore[type-var]
            for item in items:
                if isinstance(item, pa.RecordBatch):
                    while not self._room.acquire(timeout=_POLL_SECONDS):
                        if self.stopped.is_set():
                            return
                        if cancel is not None and cancel.is_set():
                            raise sandbox.cancelled()
                        budget.check_time()
                if self.stopped.is_set():
                    return
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # -- the event loop --------------------------------------------------------------------------

    async def start(self, task: asyncio.Future[None]) -> None:
        """Wait for the schema (or the error that came instead)."""
        task.add_done_callback(self._ended)
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, pa.Schema):
            raise RuntimeError("the query ended without a result")
        self.schema = item

    def _ended(self, task: asyncio.Future[None]) -> None:
        error = sandbox.cancelled() if task.cancelled() else task.exception()
        self._queue.put_nowait(error if error is not None else _END)

    async def _pull(self) -> pa.RecordBatch | None:
        item = await self._queue.get()
        if isinstance(item, pa.RecordBatch):
            self._room.release()
            return item
        if item is _END:
            return None
        assert isinstance(item, BaseException)
        raise item

    def close(self) -> None:
        self.stopped.set()
