"""Dropping superseded source versions and the files nothing references any more.

Garbage collection is a cluster job (tidegate.db.jobs): every worker process of every node
wakes up periodically, and one of them, holding the job's cluster lock (an advisory lock on
PostgreSQL), runs each round. A process killed mid-round loses the lock with its database
session; the next process to wake runs the round again (pruning and deleting are idempotent).
"""

from __future__ import annotations

import logging
import os
import threading

from tidegate.data import engine, storage
from tidegate.db import jobs
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.data")

JOB = "data-gc"
WAKE_SECONDS = 60.0  # how often each process checks whether a round is due, at most


def collect(
    database_url: str, data_dir: str | os.PathLike[str] | None, *, min_age_seconds: float = 60.0
) -> storage.GcReport:
    """Prune old versions (one transaction), then delete unreferenced files."""
    with session_scope(database_url) as session:
        pruned = storage.prune_versions(session)
    for version_id in pruned:
        engine.drop_version(version_id)  # frees memory only: a pruned version is never read again
    with session_scope(database_url) as session:
        report = storage.collect_garbage(session, data_dir, min_age_seconds=min_age_seconds)
    log.info(
        "data garbage collection by %s: %d version(s) pruned, %d file(s) deleted (%s)",
        jobs.this_node(),
        len(pruned),
        len(report.deleted_files),
        ", ".join(report.deleted_files[:20]) or "none",
    )
    return report


def collect_now(
    database_url: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    min_age_seconds: float = 60.0,
    wait_seconds: float = 60.0,
) -> storage.GcReport:
    """`collect` under the cluster lock (an operator's `tidegate gc`): jobs.LockBusy if
    another process kept it for `wait_seconds`."""
    return jobs.run_now(
        database_url,
        JOB,
        lambda: collect(database_url, data_dir, min_age_seconds=min_age_seconds),
        wait_seconds=wait_seconds,
    )


class PeriodicCollector:
    """Wakes every min(`interval`, WAKE_SECONDS) in a daemon thread and runs `collect` when
    the cluster's round is due and this process wins it (once per `interval` across nodes)."""

    def __init__(
        self,
        database_url: str,
        data_dir: str | os.PathLike[str] | None,
        interval: float = 900.0,
        *,
        min_age_seconds: float = 60.0,
    ):
        self.database_url, self.data_dir, self.interval = database_url, data_dir, interval
        self.min_age_seconds = min_age_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> bool:
        """One wake-up: True if this process ran the round."""
        ran, _ = jobs.run_if_due(
            self.database_url,
            JOB,
            self.interval,
            lambda: collect(self.database_url, self.data_dir, min_age_seconds=self.min_age_seconds),
        )
        return ran

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(min(self.interval, WAKE_SECONDS)):
                try:
                    self.round()
                except Exception:  # files stay; the next round retries
                    log.exception("data garbage collection failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-data-gc", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
