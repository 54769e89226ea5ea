"""A query worker PROCESS whose memory the kernel limits: the per-query ceiling that holds.

DuckDB's own `memory_limit` does not count everything (a string one function call builds:
`replace`, `levenshtein`, repeated concatenation, `string_agg`, list functions ...), so such a
query could use several times the ceiling. Here each query runs in a pre-started worker
process with RLIMIT_DATA set (cgroup v1 here is read-only, and RLIMIT_AS fails DuckDB, which
reserves gigabytes of address space it never touches). RLIMIT_DATA counts private writable
memory; it is set, after a warm-up query has started DuckDB's threads and allocator, to what
the warm worker uses plus the ceiling, so any allocation past it fails: DuckDB raises
OutOfMemoryException, Python MemoryError, and if something aborts instead the process dies.
Either way the caller gets `query_too_large` and the pool replaces the worker.

What the worker sees: only the caller's rows, ALREADY filtered by the parent's trusted code
(`engine._filtered`), passed as a sealed read-only memfd holding an Arrow IPC file (shared
and read-only, so it does not count against the worker's ceiling, and a worker cannot alter
what another one reads), and the query both parsers accepted. It never gets a path to
unfiltered data or a filter to apply: a bug in the worker cannot widen what a caller sees.

A worker is a program of its own (`python -c "... queryworker.main()"`, fork and exec by
subprocess, safe from a process with threads), talking over a socket pair. Not
multiprocessing's 'spawn' or 'forkserver': both re-run the server's main module in every
worker (the whole server imported again: 12 workers starting kept a loaded 2-core machine
busy for over 10 s, at normal priority; the fork server's `__main__` preload does not apply
on Python 3.11). Workers start once and are reused; only a replacement starts one again.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import duckdb
import pyarrow as pa

from tidegate.data import sandbox
from tidegate.errors import InvalidRequest, ServiceUnavailable

# Linux nice value of query workers: with 2 cores and a few queries each using them fully,
# the event loop and management threads would otherwise get a small share of the CPU.
QUERY_NICE = 10
# Room above the warm worker's use for what varies between queries without being the
# query's (a per-query timer thread's stack, Python objects of the reply).
SLACK_BYTES = 32 * 1024 * 1024
# How long a worker may take to start (import, open and lock down its database, warm up).
START_SECONDS = 30.0
# How long after the deadline a worker that did not answer is given before it is killed.
KILL_AFTER_SECONDS = 1.0
# How often a thread waiting for a worker's answer looks at the run's cancel event.
CANCEL_POLL_SECONDS = 0.05

_WARM_UP = "SELECT region, count(*), string_agg(region, ',') FROM data GROUP BY region ORDER BY 1"


def too_large() -> InvalidRequest:
    return InvalidRequest("query_too_large", "The query needs more memory than queries may use.")


def worker_lost() -> ServiceUnavailable:
    return ServiceUnavailable("query_worker_lost", "The query's worker stopped unexpectedly; retry the query.")


class WorkerGone(Exception):
    """The worker had died before it got the job: nothing of it ran, another worker may run it."""


@dataclass(frozen=True)
class Job:
    query: sandbox.ValidatedQuery
    page: int
    page_size: int
    budget: sandbox.Budget  # its deadline is time.monotonic(), one clock for every process on Linux
    table_token: int  # which shared table `data` is (sent before, with its descriptor, if new)


@dataclass(frozen=True)
class TablesJob:
    """A query over several named tables (a project's step), answered with its whole result."""

    query: sandbox.ValidatedQuery
    tables: tuple[tuple[str, int], ...]  # (name, shared table token), each sent before if new
    budget: sandbox.Budget
    max_rows: int | None


@dataclass(frozen=True)
class StreamJob:
    """A query over several named tables whose result is sent batch by batch, each one only
    when the parent asks for it ("next"): what the worker holds is bounded by a batch."""

    query: sandbox.ValidatedQuery
    tables: tuple[tuple[str, int], ...]
    budget: sandbox.Budget
    batch_rows: int


# ---------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------


def _data_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _warm_up(connection: duckdb.DuckDBPyConnection) -> None:
    """One small query through the whole path, so that DuckDB's threads and allocator
    exist before the limit is set on top of what they use."""
    table = pa.table({"region": ["US", "EU", "APAC"] * 100})
    query = sandbox.ValidatedQuery(sql=_WARM_UP, cte_names=frozenset())
    sandbox.run(query, table, page=1, page_size=10, budget=sandbox.Budget.starting_now(30.0), connection=connection)


def _open_table(fd: int) -> pa.Table:
    """The shared table: a zero-copy, read-only view of the parent's sealed memfd."""
    try:
        mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)  # unmapped with the table
        return pa.ipc.open_file(pa.py_buffer(mapped)).read_all()
    finally:
        os.close(fd)


def _serve(conn: Connection, memory_limit_bytes: int, threads: int) -> None:
    os.setpriority(os.PRIO_PROCESS, 0, QUERY_NICE)  # before DuckDB starts threads, which inherit it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the server is the server's to handle
    connection = sandbox.open_connection(memory_limit=f"{max(memory_limit_bytes // 1024, 1024)}KiB", threads=threads)
    _warm_up(connection)
    ceiling = _data_bytes() + memory_limit_bytes + SLACK_BYTES
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))
    conn.send(("ready", os.getpid()))
    # The shared tables this worker maps, by token: only those of the job at hand (the
    # parent says which to keep as it sends a new one), so dropped tables are unmapped.
    held: dict[int, pa.Table] = {}
    failures: dict[int, Exception] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if message[0] in ("next", "stop"):  # the parent's word to a stream that has ended
            continue
        if message[0] == "table":
            token, keep = message[1], set(message[2])
            for old in [t for t in held if t not in keep]:
                del held[old]  # drop mappings no longer needed first
            failures = {t: f for t, f in failures.items() if t in keep}
            fd = recv_handle(conn)
            try:
                held[token] = _open_table(fd)
            except (MemoryError, pa.ArrowMemoryError):
                failures[token] = MemoryError()  # the job that follows answers query_too_large
            except Exception as exc:  # noqa: BLE001 - a bug: the job that follows reports it
                failures[token] = RuntimeError(f"the query's table could not be read: {type(exc).__name__}: {exc}")
            continue
        try:
            if isinstance(message[1], StreamJob):
                reply = _stream(conn, message[1], held, failures, connection)
            else:
                reply = _answer(message[1], held, failures, connection)
        except InvalidRequest as exc:
            reply = ("refused", exc.code, exc.message)
        except (MemoryError, pa.ArrowMemoryError):
            reply = ("refused", "query_too_large", too_large().message)
        except Exception as exc:  # noqa: BLE001 - a bug: the parent raises it (500, logged)
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
        del reply


def _table(token: int, held: dict[int, pa.Table], failures: dict[int, Exception]) -> pa.Table:
    table = held.get(token)
    if table is None:
        raise failures.get(token) or RuntimeError("the worker was not given the query's table")
    return table


def _ipc(item: pa.Schema | pa.RecordBatch) -> Any:
    sink = pa.BufferOutputStream()
    schema = item if isinstance(item, pa.Schema) else item.schema
    with pa.ipc.new_stream(sink, schema) as writer:
        if isinstance(item, pa.RecordBatch):
            writer.write_batch(item)
    return sink.getvalue()


def _stream(
    conn: Connection,
    job: StreamJob,
    held: dict[int, pa.Table],
    failures: dict[int, Exception],
    connection: duckdb.DuckDBPyConnection,
) -> tuple[Any, ...]:
    """Send ("schema", ipc), then one ("batch", ipc) per "next" the parent sends; the last
    reply (returned) is ("end", rows). "stop" ends it early. An error raised here is sent
    as the answer to the "next" (or the job) that is waiting for one."""
    tables = {name: _table(token, held, failures) for name, token in job.tables}
    batches = sandbox.stream_tables(
        job.query, tables, budget=job.budget, connection=connection, batch_rows=job.batch_rows
    )
    rows = 0
    try:
        for item in batches:
            if isinstance(item, pa.RecordBatch):
                rows += item.num_rows
                conn.send(("batch", _ipc(item)))
            else:
                conn.send(("schema", _ipc(item)))
            del item
            if conn.recv()[0] != "next":  # "stop": the client wants no more
                break
    finally:
        batches.close()
    return ("end", rows)


def _answer(
    job: Job | TablesJob,
    held: dict[int, pa.Table],
    failures: dict[int, Exception],
    connection: duckdb.DuckDBPyConnection,
) -> tuple[Any, ...]:
    """Run one job: ("ok", the result as an Arrow IPC stream, total rows or None)."""
    total: int | None = None
    if isinstance(job, TablesJob):
        tables = {name: _table(token, held, failures) for name, token in job.tables}
        result = sandbox.run_tables(job.query, tables, budget=job.budget, max_rows=job.max_rows, connection=connection)
    else:
        result, total = sandbox.run(
            job.query,
            _table(job.table_token, held, failures),
            page=job.page,
            page_size=job.page_size,
            budget=job.budget,
            connection=connection,
        )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.schema) as writer:
        writer.write_table(result)
    return ("ok", sink.getvalue(), total)


def main() -> None:
    """The worker program: `python -c '...main()' <socket fd> <memory limit bytes> <threads>`."""
    fd, memory_limit_bytes, threads = (int(arg) for arg in sys.argv[1:4])
    try:
        _serve(Connection(fd), memory_limit_bytes, threads)
    except (MemoryError, pa.ArrowMemoryError):
        os._exit(3)  # out of memory outside a query's handling: the parent answers query_too_large


_tokens = itertools.count(1)


@dataclass(frozen=True, eq=False)
class SharedTable:
    """A filtered table as a sealed, read-only memfd that workers map (made once, sent to
    each worker that runs a query on it). The table is kept so its identity is never reused.

    The descriptor is closed only when nothing refers to this object any more (never while
    a pool thread may still send it: a closed number reused for another file could
    otherwise reach a worker)."""

    table: pa.Table
    token: int
    fd: int

    @classmethod
    def of(cls, table: pa.Table) -> SharedTable:
        fd = os.memfd_create("tidegate-query-data", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            with pa.OSFile(f"/proc/self/fd/{fd}", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            os.close(fd)
            raise
        shared = cls(table, next(_tokens), fd)
        weakref.finalize(shared, os.close, fd)  # workers that mapped it keep their mapping
        return shared


class Worker:
    """One worker process, used by one pool thread at a time."""

    def __init__(self, memory_limit_bytes: int, threads: int):
        ours, theirs = socket.socketpair()  # a Unix socket: descriptors can pass over it
        with ours, theirs:
            program = (
                f"import os; os.setpriority(os.PRIO_PROCESS, 0, {QUERY_NICE}); "  # before its imports
                # Arrow's default allocator (mimalloc) reserves 1 GiB of writable memory at its
                # first use: counted in the limit but untouched, it would let the worker's real
                # use grow 1 GiB past the ceiling. The C allocator reserves address space
                # without write access, which is not counted. (Read by Arrow as it loads.)
                "os.environ['ARROW_DEFAULT_MEMORY_POOL'] = 'system'; "
                "from tidegate.data.queryworker import main; main()"
            )
            self.process = subprocess.Popen(
                [sys.executable, "-c", program, str(theirs.fileno()), str(memory_limit_bytes), str(threads)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            self._conn = Connection(ours.detach())
        self._ready = False
        self._tokens: set[int] = set()  # the shared tables the worker holds

    def _wait_ready(self, budget: sandbox.Budget) -> None:
        """Started, warmed up and limited. One still starting at the query's deadline times
        the query out (and goes on starting); one that could not start is lost (503)."""
        if not self._ready:
            try:
                if not self._conn.poll(max(min(START_SECONDS, budget.remaining()), 0.0)):
                    budget.check_time()
                    raise worker_lost()
                self._conn.recv()
            except (EOFError, OSError):
                raise worker_lost() from None
            self._ready = True

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def run(self, job: Job, table: SharedTable) -> tuple[pa.Table, int]:
        """The job's result (the capped page as Arrow, and the total), or its refusal.
        A worker that dies, or does not answer a second after the deadline (killed), raises;
        the caller then replaces it."""
        result, total = self._run(job, [table], job.budget, None)
        assert total is not None
        return result, total

    def run_tables(self, job: TablesJob, tables: list[SharedTable], cancel: threading.Event | None = None) -> pa.Table:
        """The whole result of a query over several shared tables (`job.tables` names them by
        token), or its refusal. Cancelled (`cancel` set): the worker is killed at once (a query
        in another process cannot be interrupted from here) and `run_cancelled` raised."""
        return self._run(job, tables, job.budget, cancel)[0]

    def _send_job(self, job: Job | TablesJob | StreamJob, tables: list[SharedTable], budget: sandbox.Budget) -> None:
        self._wait_ready(budget)
        keep = tuple(t.token for t in tables)
        try:
            for table in tables:
                if table.token not in self._tokens:
                    self._conn.send(("table", table.token, keep))
                    send_handle(self._conn, table.fd, self.process.pid)
                    self._tokens = {t for t in self._tokens if t in keep} | {table.token}
            self._conn.send(("run", job))
        except OSError:  # its end of the socket is closed: it died while idle
            self._reap()
            raise WorkerGone from None

    def _reply(self, budget: sandbox.Budget, cancel: threading.Event | None) -> tuple[Any, ...]:
        """The worker's next reply; its refusal raised; killed at the deadline or on cancel."""
        try:
            if not self._wait_reply(budget, cancel):
                self.kill()
                if cancel is not None and cancel.is_set():
                    raise sandbox.cancelled()
                raise budget.timed_out()
            reply: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if reply[0] == "refused":
            raise InvalidRequest(reply[1], reply[2])
        if reply[0] == "failed":
            raise RuntimeError(f"query worker: {reply[1]}")
        return reply

    def _run(
        self, job: Job | TablesJob, tables: list[SharedTable], budget: sandbox.Budget, cancel: threading.Event | None
    ) -> tuple[pa.Table, int | None]:
        self._send_job(job, tables, budget)
        reply = self._reply(budget, cancel)
        return pa.ipc.open_stream(reply[1]).read_all(), reply[2]

    def stream(
        self, job: StreamJob, tables: list[SharedTable], cancel: threading.Event | None = None
    ) -> Iterator[pa.Schema | pa.RecordBatch]:
        """The result's schema, then its batches as the worker computes them: the next is
        asked for as one is handed over, so the worker computes while the caller sends.
        Closed early, the worker is told to stop (killed if it does not answer at once)."""
        budget = job.budget
        self._send_job(job, tables, budget)
        ended = False

        def reply() -> tuple[Any, ...]:
            nonlocal ended
            try:
                return self._reply(budget, cancel)
            except BaseException:
                ended = True  # it answered with its refusal, or was killed
                raise

        try:
            yield pa.ipc.open_stream(reply()[1]).schema
            self._conn.send(("next",))
            while True:
                answer = reply()
                if answer[0] == "end":
                    ended = True
                    return
                self._conn.send(("next",))
                yield pa.ipc.open_stream(answer[1]).read_next_batch()
        finally:
            if not ended:
                self._stop()

    def _stop(self) -> None:
        """Tell a streaming worker to stop (it answers the "next" it has, then ends); one that
        does not end within a second is killed."""
        try:
            self._conn.send(("stop",))
            while self._conn.poll(KILL_AFTER_SECONDS):
                if self._conn.recv()[0] in ("end", "refused", "failed"):
                    return
        except (EOFError, OSError):
            pass
        self.kill()

    def _wait_reply(self, budget: sandbox.Budget, cancel: threading.Event | None) -> bool:
        """True once the reply is there; False at the deadline plus KILL_AFTER_SECONDS, or
        as soon as `cancel` is set."""
        if cancel is None:
            return self._conn.poll(max(budget.remaining(), 0.0) + KILL_AFTER_SECONDS)
        while not cancel.is_set():
            left = budget.remaining() + KILL_AFTER_SECONDS
            if left <= 0:
                return False
            if self._conn.poll(min(left, CANCEL_POLL_SECONDS)):
                return True
        return False

    def _died(self) -> Exception:
        """Why the worker stopped: killed from outside (503, retry) or out of memory (400)."""
        self._reap()
        if self.process.returncode == -signal.SIGKILL:
            return worker_lost()
        return too_large()  # aborted or exited on an allocation failure

    def _reap(self) -> None:
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self._reap()
        self._conn.close()

    def close(self) -> None:
        self.kill()
