"""One engine per process and database URL; sessions are short, one per unit of work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).parent / "migrations"


def private_sqlite_file(url: str) -> None:
    """Create the SQLite database file 0600 (or make an existing one so) before SQLite opens
    it: it holds every tenant. SQLite gives its -wal and -shm files the database file's mode."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        # Only ever a new file: closing a descriptor of a file this process already has open
        # in SQLite would drop SQLite's POSIX locks on it (and let another writer corrupt it).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        return  # no such directory, not ours, read-only: SQLite reports it when it opens the file
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            os.chmod(name, 0o600)
        except OSError:
            pass


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer, and several worker processes can share
            # the file. synchronous=FULL: an acknowledged commit survives a power cut.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # After a PostgreSQL restart or outage the pool recovers by itself: every checkout is
    # pre-pinged, a disconnect invalidates the whole pool, and a down server fails a
    # connect within seconds (a 503) instead of holding the request.
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_timeout=10, connect_args={"connect_timeout": 5}
    )


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: committed if the block finishes, rolled back if it raises."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    # Imported here: alembic costs ~0.4 s of start-up in every process (CLI, server worker)
    # and only migrations need it.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command

    private_sqlite_file(url)
    command.upgrade(alembic_config(url), "heads")
