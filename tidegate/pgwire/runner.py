"""Starting the PostgreSQL endpoint: in a process of its own beside `tidegate serve`'s
HTTP workers (`PgProcess`), or in a thread (`serving`, for tests and benchmarks).

The process configures the same process-wide modules as `api.app.create_app` (limits, data
engine, sandbox paths, rate limiter), appends its audit events to the same journal
directory (shipped by the server's shipper process) and runs queries in its own query pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path

from tidegate import limits
from tidegate.access import ratelimit
from tidegate.audit import shipper
from tidegate.audit.journal import Journal
from tidegate.config import Settings, get_settings
from tidegate.credentials.usage import record_key_use
from tidegate.data import engine, sandbox
from tidegate.pgwire import tls
from tidegate.pgwire.server import PgServer

log = logging.getLogger("tidegate.pgwire")
# The endpoint's process is restarted after these many seconds, doubled on each failure in a row.
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
WATCH_SECONDS = 1.0  # how often the parent looks whether the endpoint's process is alive


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The configured certificate and key, or the generated pair (made on first start)."""
    if settings.pg.tls_cert is not None and settings.pg.tls_key is not None:
        return settings.pg.tls_cert, settings.pg.tls_key
    return tls.generate(settings.home)


def ssl_context(settings: Settings) -> ssl.SSLContext:
    return tls.server_context(*tls_files(settings))


def configure_process(settings: Settings) -> None:
    limits.configure(settings.limits)
    engine.configure(
        data_dir=settings.data_dir,
        object_store=settings.object_store,
        part_cache_dir=settings.part_cache_dir,
        cache_bytes=settings.data.cache_bytes,
        threads=settings.data.threads,
        memory_limit=settings.data.memory_limit,
    )
    sandbox.configure_server_home(settings.home)
    ratelimit.connect(settings.redis_url)


async def _serve(settings: Settings, host: str, port: int, parent_pid: int) -> None:
    journal = Journal(
        settings.audit_dir, settings.database_url, fsync=settings.audit_fsync, after_insert=record_key_use
    )
    journal.start(ship=not shipper.ships_elsewhere())
    server = PgServer(
        settings,
        journal=journal,
        ssl_context=ssl_context(settings),
        allow_plain_loopback=settings.pg.allow_plain_loopback,
    )
    await server.start(host, port)
    log.info("PostgreSQL endpoint listening on %s:%s", host, port)
    serving = asyncio.ensure_future(server.serve_forever())
    try:
        while os.getppid() == parent_pid and not serving.done():
            await asyncio.sleep(1.0)
    finally:
        server.close()
        serving.cancel()
        server.pool.shutdown()
        journal.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run(host: str, port: int, allow_plain_loopback: bool, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (SIGTERM) or is seen gone
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwinds through _serve: the journal is closed
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    settings = get_settings()
    settings = replace(settings, pg=replace(settings.pg, port=port, allow_plain_loopback=allow_plain_loopback))
    configure_process(settings)
    asyncio.run(_serve(settings, host, port, parent_pid))


class PgProcess:
    """The endpoint's process (spawned: a clean interpreter, as the HTTP workers are)."""

    def __init__(self, host: str, port: int, allow_plain_loopback: bool):
        self.args = (host, port, allow_plain_loopback)
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()

    def _spawn(self) -> None:
        # Not a daemon: it starts query worker processes of its own.
        self._process = self._context.Process(
            target=_run, args=(*self.args, os.getpid()), name="tidegate-pgwire", daemon=False
        )
        self._process.start()

    def start(self) -> None:
        self._spawn()

        def watch() -> None:  # restarted if it dies, as the audit shipper is
            delay, started = RESTART_MIN_SECONDS, time.monotonic()
            while not self._stopping.wait(WATCH_SECONDS):
                process = self._process
                if process is None or process.is_alive() or self._stopping.is_set():
                    continue
                # One that keeps failing (a port taken, a broken certificate) is restarted
                # ever less often, up to once a minute; one that ran a while, after a second again.
                if time.monotonic() - started > RESTART_MAX_SECONDS:
                    delay = RESTART_MIN_SECONDS
                log.warning("PostgreSQL endpoint exited (code %s); restarting it in %.0f s", process.exitcode, delay)
                if self._stopping.wait(delay):
                    return
                self._spawn()
                started, delay = time.monotonic(), min(delay * 2, RESTART_MAX_SECONDS)

        threading.Thread(target=watch, name="tidegate-pgwire-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._process is None:
            return
        self._process.terminate()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)


@contextmanager
def serving(settings: Settings, *, host: str = "127.0.0.1", port: int = 0, tls_on: bool = True) -> Iterator[PgServer]:
    """The endpoint on an event loop in a thread of this process; yields the server, its
    bound port in `server.port`. Audit events are shipped by its journal's own thread."""
    configure_process(settings)
    journal = Journal(settings.audit_dir, settings.database_url, after_insert=record_key_use)
    journal.start(ship=True)
    server = PgServer(
        settings,
        journal=journal,
        ssl_context=ssl_context(settings) if tls_on else None,
        allow_plain_loopback=settings.pg.allow_plain_loopback,
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server.port = loop.run_until_complete(server.start(host, port))  # type: ignore[attr-defined]
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="tidegate-pgwire-test", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the PostgreSQL endpoint did not start")

    async def shutdown() -> None:
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:  # open connections end with the server
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        loop.stop()

    try:
        yield server
    finally:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shutdown()))
        thread.join(timeout=10)
        journal.close()
