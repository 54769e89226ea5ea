"""Which failures mean "a dependency is down" (503, retry later) rather than a bug (500).

A database that is stopped, restarting, locked or out of disk, a full or failing disk, an
unreachable Redis: each answers 503 with Retry-After in the API, the web UI and the CLI,
and the server recovers by itself once the dependency is back (the pool pre-pings and
reconnects, redis-py reconnects, the journal retries). Everything else stays a 500: a
query error SQLite happens to call "OperationalError" (no such table) is not an outage.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator

import psycopg
from sqlalchemy import exc as sa_exc

from tidegate.errors import ServiceUnavailable

# What the disk says when it cannot take a write.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
# SQLite's messages for the database being busy or its disk failing or full.
SQLITE_OUTAGES = (
    "database is locked",
    "database table is locked",
    "disk i/o error",
    "database or disk is full",
    "unable to open database file",
    "readonly database",
    "database is busy",
)
# Refusals PostgreSQL calls OperationalError but that are about the statement, not the server.
PG_NOT_OUTAGES = ("57014",)  # query_canceled: a statement timeout is the query's own limit


def database_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("database_unavailable", "The database is unavailable; retry shortly.")


def storage_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "storage_unavailable", "The server's disk cannot take this write now; retry shortly.", retry_after=5
    )


def rate_limiter_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("rate_limiter_unavailable", "The rate limiter is unavailable; retry shortly.")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what it wraps (cause, context, exception group members), depth first."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(getattr(current, "exceptions", ()) or ())
        stack.append(current.__context__)
        stack.append(current.__cause__)


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def _is_database_outage(exc: BaseException) -> bool:
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True  # a dead connection, or no pooled connection free in time
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return _is_driver_outage(exc.orig) if exc.orig is not None else True
    return isinstance(
        exc, (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError)
    ) and _is_driver_outage(exc)


def _is_driver_outage(orig: BaseException) -> bool:
    if isinstance(orig, sqlite3.Error):
        message = str(orig).lower()
        return any(text in message for text in SQLITE_OUTAGES)
    if isinstance(orig, psycopg.Error):
        return getattr(orig, "sqlstate", None) not in PG_NOT_OUTAGES
    return True


def _is_redis_outage(exc: BaseException) -> bool:
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(
        exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)
    )


def _is_duckdb_disk_error(exc: BaseException) -> bool:
    # DuckDB reports a full disk as an IOException whose text carries the OS error.
    return type(exc).__module__.startswith("duckdb") and "no space left on device" in str(exc).lower()


def unavailable_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 that `exc` should be answered with, or None if it is not an outage."""
    for cause in _causes(exc):
        if isinstance(cause, ServiceUnavailable):
            return cause
        if _is_database_outage(cause):
            return database_unavailable()
        if is_disk_error(cause) or _is_duckdb_disk_error(cause):
            return storage_unavailable()
        if _is_redis_outage(cause):
            return rate_limiter_unavailable()
    return None
