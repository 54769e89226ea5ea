"""Has anything been committed to the metadata database since I last looked?

In-process caches of database state (authenticated keys) stay valid only while the answer
is "no". It has to be exact and cross-process: a revocation committed by any worker must be
seen by the very next request in every other worker.

SQLite answers it for ~3 us: `PRAGMA data_version` on a connection that never writes
changes whenever any other connection, in this process or another, has committed (it reads
the WAL index in shared memory). PostgreSQL has no equivalent short of a round trip, so
there `generation()` is None and callers read the database on every request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from sqlalchemy.engine import make_url


class ChangeWatch:
    def __init__(self, database_url: str):
        url = make_url(database_url)
        path = url.database if url.get_backend_name() == "sqlite" else None
        self._path = path if path and path != ":memory:" and not path.startswith("file:") else None
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._opened = 0  # data_version numbers are per connection: tell connections apart

    @property
    def supported(self) -> bool:
        return self._path is not None

    def generation(self) -> tuple[int, int] | None:
        """A number that changes whenever any commit lands; None if this cannot be told cheaply.

        Only values from the same ChangeWatch may be compared (data_version is per connection).
        """
        if self._path is None:
            return None
        with self._lock:
            try:
                if self._conn is None or self._pid != os.getpid():
                    # A forked child must not share its parent's connection.
                    # mode=rw: never create the database (a missing file is "unknown", not empty).
                    uri = Path(self._path).resolve().as_uri() + "?mode=rw"
                    self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
                    self._pid = os.getpid()
                    self._opened += 1
                return self._opened, self._conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                self._conn = None
                return None  # unknown: nothing may be served from a cache
