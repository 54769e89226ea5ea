"""Scheduled syncs of snapshot connector sources (`sync_interval_minutes`).

Every server process runs a `SyncScheduler` thread that wakes each `interval` seconds and
syncs the snapshot sources that are due (never synced, or last synced at least their interval
ago). Once across processes and nodes: each due source is synced in its own transaction that
first locks its row (`FOR UPDATE SKIP LOCKED` on PostgreSQL: another node busy with it skips
it; SQLite has one writer) and re-checks that it is still due, so a sync committed elsewhere
meanwhile is not repeated. A failed pull is recorded on the source (`sync_status` "error",
`last_sync_error`, no secret) and counts as an attempt, so a broken source is retried at its
interval, not in a loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.audit.record import record
from tidegate.catalog.models import Source
from tidegate.data import connectors, storage
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import TidegateError
from tidegate.orgs.epoch import bump_access_epoch

log = logging.getLogger("tidegate.data")


def _due(source: Source, now: datetime) -> bool:
    if source.sync_interval_minutes is None or source.connector_mode != "snapshot" or source.deleted_at is not None:
        return False
    last = source.last_synced_at
    return last is None or last + timedelta(minutes=source.sync_interval_minutes) <= now


def due_source_ids(session: Session, now: datetime) -> list[str]:
    rows = session.scalars(
        select(Source).where(
            Source.connector_mode == "snapshot",
            Source.sync_interval_minutes.is_not(None),
            Source.deleted_at.is_(None),
        )
    )
    return [source.id for source in rows if _due(source, now)]


def sync_one(session: Session, source_id: str, session_key: bytes, now: datetime) -> bool:
    """Sync one source if it is still due and no one else holds it; True if this call did."""
    source = session.scalars(
        select(Source).where(Source.id == source_id).with_for_update(skip_locked=True)
    ).one_or_none()
    if source is None or not _due(source, now):
        return False  # synced meanwhile, deleted, changed, or being synced by another node
    try:
        table = connectors.pull_source(source, session_key)
    except TidegateError as exc:
        source.sync_status, source.last_synced_at, source.last_sync_error = "error", now, exc.message
        log.warning("scheduled sync of %s failed: %s", source.id, exc.code)
        return True
    version = storage.write_new_version(session, source, table, append=False)
    source.sync_status, source.last_synced_at, source.last_sync_error = "ok", now, None
    record(
        session,
        None,
        "source.synced",
        org_id=source.org_id,
        target_type="source",
        target_id=source.id,
        details={"rows": version.row_count, "scheduled": True},
    )
    bump_access_epoch(session, source.org_id)
    return True


def run_due(database_url: str, session_key: bytes, now: Callable[[], datetime] = utcnow) -> list[str]:
    """Sync every due snapshot source, each in its own transaction; the ids this call synced."""
    started = now()
    with session_scope(database_url) as session:
        candidates = due_source_ids(session, started)
    synced = []
    for source_id in candidates:
        try:
            with session_scope(database_url) as session:
                did = sync_one(session, source_id, session_key, started)
            if did:  # counted once committed: a commit that fails (SQLite busy) synced nothing
                synced.append(source_id)
        except Exception:  # noqa: BLE001 - one source's failure must not stop the others
            log.exception("scheduled sync of %s failed; will retry", source_id)
    return synced


class SyncScheduler:
    """Runs `run_due` every `interval` seconds in a daemon thread."""

    def __init__(self, database_url: str, session_key: bytes, interval: float = 60.0):
        self.database_url, self.session_key, self.interval = database_url, session_key, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    run_due(self.database_url, self.session_key)
                except Exception:  # noqa: BLE001 - the next round retries
                    log.exception("scheduled syncs failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-scheduled-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
