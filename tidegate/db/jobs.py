"""Background jobs that must run once across every node of a deployment (cluster jobs).

Several `tidegate serve` nodes (and each node's worker processes) share one database. A
periodic job such as data garbage collection wakes up in every worker process; it runs
when this process can:

1. hold the job's cluster lock: on PostgreSQL a session-level advisory lock
   (`pg_try_advisory_lock`) on a connection kept for the job's duration, so no two
   processes anywhere run it at once. PostgreSQL releases it when that session ends: a
   node killed mid-job (kill -9, power cut) frees it as soon as its connection closes
   (server-side TCP keepalives set below bound the wait when a host vanishes silently).
   On SQLite there is one node, and the lock is a no-op: step 2 serializes its workers;
2. then claim the round in `cluster_jobs`: one conditional UPDATE that sets `started_at`
   only if the last round started `interval` seconds ago or more, or (lock held, so nobody
   runs it now) the last round never finished, its runner having died. One UPDATE is
   atomic on both databases, so of all the processes that wake up, one runs each round.

The row also tells an operator which node ran the job last, when, and how it ended.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import String, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime, utcnow
from tidegate.db.engine import get_engine, session_scope

log = logging.getLogger("tidegate.jobs")

T = TypeVar("T")

# First key of the two-key advisory lock: every tidegate lock lives in this namespace
# ("tidg" as a 32-bit number), away from any lock another application takes on the database.
LOCK_NAMESPACE = 0x74696467
# A dead peer's session (a vanished host: no FIN) ends after about 10 + 3 * 5 seconds.
_KEEPALIVES = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"


class ClusterJob(Base):
    __tablename__ = "cluster_jobs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)  # host:pid of the last runner
    outcome: Mapped[str | None] = mapped_column(String(255), nullable=True)  # "ok" or the error's class


def this_node() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


def lock_key(name: str) -> int:
    """The job's second advisory-lock key: a stable signed 32-bit number from its name."""
    value = zlib.crc32(name.encode())
    return value - 2**32 if value >= 2**31 else value


@contextmanager
def cluster_lock(database_url: str, name: str) -> Iterator[bool]:
    """Yields True while this process holds the cluster-wide lock `name` (not waiting for
    it: False when another process holds it). Always True on SQLite (one node)."""
    engine = get_engine(database_url)
    if engine.dialect.name != "postgresql":
        yield True
        return
    connection = engine.connect()
    try:
        connection.exec_driver_sql(_KEEPALIVES)
        held = bool(
            connection.execute(
                text("SELECT pg_try_advisory_lock(:namespace, :key)"),
                {"namespace": LOCK_NAMESPACE, "key": lock_key(name)},
            ).scalar()
        )
        connection.commit()  # the lock belongs to the session, not to this transaction
    except BaseException:
        connection.invalidate()
        connection.close()
        raise
    try:
        yield held
    finally:
        if held:
            try:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:namespace, :key)"),
                    {"namespace": LOCK_NAMESPACE, "key": lock_key(name)},
                )
                connection.commit()
            except Exception:  # closing the session releases the lock just as well
                connection.invalidate()
        connection.close()


def _ensure_row(database_url: str, name: str) -> None:
    with session_scope(database_url) as session:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(insert(ClusterJob).values(name=name).on_conflict_do_nothing(index_elements=["name"]))


def _claim(database_url: str, name: str, interval_seconds: float, node: str, *, lock_held: bool) -> bool:
    _ensure_row(database_url, name)
    now = utcnow()
    due = [ClusterJob.started_at.is_(None), ClusterJob.started_at <= now - timedelta(seconds=interval_seconds)]
    if lock_held:  # nobody runs it now: a round that never finished lost its runner
        due += [ClusterJob.finished_at.is_(None), ClusterJob.finished_at < ClusterJob.started_at]
    with session_scope(database_url) as session:
        result = session.execute(
            update(ClusterJob)
            .where(ClusterJob.name == name, or_(*due))
            .values(started_at=now, node=node, outcome=None)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]  # a CursorResult for an UPDATE


def _finish(database_url: str, name: str, outcome: str) -> None:
    try:
        with session_scope(database_url) as session:
            session.execute(
                update(ClusterJob)
                .where(ClusterJob.name == name)
                .values(finished_at=utcnow(), outcome=outcome[:255])
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:  # the next round runs after the interval, as if it had finished
        log.warning("cluster job %s: cannot record its end (%s)", name, type(exc).__name__)


def _run(database_url: str, name: str, job: Callable[[], T]) -> T:
    try:
        result = job()
    except BaseException as exc:
        _finish(database_url, name, type(exc).__name__)
        raise
    _finish(database_url, name, "ok")
    return result


def run_if_due(
    database_url: str, name: str, interval_seconds: float, job: Callable[[], T], *, node: str | None = None
) -> tuple[bool, T | None]:
    """Run `job` if this round is ours (see the module's docstring): (True, its result), or
    (False, None) when another process runs it now or ran it less than `interval_seconds` ago."""
    with cluster_lock(database_url, name) as held:
        if not held:
            return False, None
        dialect = get_engine(database_url).dialect.name
        if not _claim(database_url, name, interval_seconds, node or this_node(), lock_held=dialect == "postgresql"):
            return False, None
        return True, _run(database_url, name, job)


class LockBusy(Exception):
    """Another process held the job's cluster lock for the whole wait."""


def run_now(
    database_url: str, name: str, job: Callable[[], T], *, wait_seconds: float = 60.0, node: str | None = None
) -> T:
    """Run `job` now (an operator's request), under its cluster lock, waiting for the lock
    at most `wait_seconds` (LockBusy after that), and record it as the job's latest round."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with cluster_lock(database_url, name) as held:
            if held:
                _ensure_row(database_url, name)
                with session_scope(database_url) as session:
                    session.execute(
                        update(ClusterJob)
                        .where(ClusterJob.name == name)
                        .values(started_at=utcnow(), node=node or this_node(), outcome=None)
                        .execution_options(synchronize_session=False)
                    )
                return _run(database_url, name, job)
        if time.monotonic() >= deadline:
            raise LockBusy(name)
        time.sleep(0.5)


def last_round(database_url: str, name: str) -> ClusterJob | None:
    with session_scope(database_url) as session:
        return session.scalar(select(ClusterJob).where(ClusterJob.name == name))
