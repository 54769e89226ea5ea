"""Dropping superseded source versions and the files nothing references any more."""

from __future__ import annotations

import logging
import os
import threading

from tidegate.data import engine, storage
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.data")


def collect(database_url: str, data_dir: str | os.PathLike[str] | None) -> storage.GcReport:
    """Prune old versions (one transaction), then delete unreferenced files."""
    with session_scope(database_url) as session:
        pruned = storage.prune_versions(session)
    for version_id in pruned:
        engine.drop_version(version_id)  # frees memory only: a pruned version is never read again
    with session_scope(database_url) as session:
        return storage.collect_garbage(session, data_dir)


class PeriodicCollector:
    """Runs `collect` every `interval` seconds in a daemon thread (idempotent across workers)."""

    def __init__(self, database_url: str, data_dir: str | os.PathLike[str] | None, interval: float = 900.0):
        self.database_url, self.data_dir, self.interval = database_url, data_dir, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    collect(self.database_url, self.data_dir)
                except Exception:  # files stay; the next round retries
                    log.exception("data garbage collection failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-data-gc", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
