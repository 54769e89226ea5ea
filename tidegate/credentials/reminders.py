"""Expiry reminders: `api_key.expiring_soon`, once per key, when it enters the last
`EXPIRY_WINDOW` of its life.

A cluster job (tidegate.db.jobs): every worker process of every node wakes up now and then
and one of them runs each round. Once per key holds even without the lock: a key is
reported by the transaction whose conditional UPDATE of `expiry_reminded_at` (still empty)
changed its row, and by no other.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.audit.record import SERVER, event_row
from tidegate.credentials.models import ApiKey
from tidegate.db import jobs
from tidegate.db.base import isoformat, utcnow
from tidegate.db.engine import session_scope

log = logging.getLogger("tidegate.keys")

JOB = "key-expiry-reminders"
EXPIRY_WINDOW = timedelta(days=7)
EXPIRING_ACTION = "api_key.expiring_soon"
INTERVAL_SECONDS = 300.0  # a key is reported at most this long after it enters the window
WAKE_SECONDS = 60.0
BATCH = 500


def expiring_soon(key: ApiKey, now: datetime) -> bool:
    """Active, expiring within the window, and not a rotated key retiring on schedule."""
    return (
        key.revoked_at is None
        and key.rotated_to_key_id is None
        and key.expires_at is not None
        and now < key.expires_at <= now + EXPIRY_WINDOW
    )


def remind(session: Session, now: datetime | None = None) -> list[str]:
    """Emit `api_key.expiring_soon` for every key that entered the window and has not been
    reported yet; returns their ids. A rotated key in its grace period is expected to expire
    (its replacement is in use): it is not reported."""
    now = now or utcnow()
    candidates = session.execute(
        select(ApiKey.id, ApiKey.org_id, ApiKey.name, ApiKey.key_prefix, ApiKey.expires_at, ApiKey.created_by)
        .where(
            ApiKey.expiry_reminded_at.is_(None),
            ApiKey.revoked_at.is_(None),
            ApiKey.rotated_to_key_id.is_(None),
            ApiKey.expires_at > now,
            ApiKey.expires_at <= now + EXPIRY_WINDOW,
        )
        .order_by(ApiKey.id)
        .limit(BATCH)
    ).all()
    reported = []
    for key in candidates:
        claimed = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key.id, ApiKey.expiry_reminded_at.is_(None))
            .values(expiry_reminded_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
            continue  # reported by another process meanwhile
        session.execute(
            insert(AuditEvent),
            [
                event_row(
                    org_id=key.org_id,
                    actor_type="system",
                    actor_id=SERVER,
                    action=EXPIRING_ACTION,
                    target_type="api_key",
                    target_id=key.id,
                    details={
                        "name": key.name,
                        "key_prefix": key.key_prefix,
                        "expires_at": isoformat(key.expires_at),
                        "created_by": key.created_by,
                    },
                    timestamp=now,
                )
            ],
        )
        reported.append(key.id)
    return reported


def remind_round(database_url: str) -> list[str]:
    """One round, in one transaction per batch, until no key is left to report."""
    reported: list[str] = []
    while True:
        with session_scope(database_url) as session:
            batch = remind(session)
        reported += batch
        if len(batch) < BATCH:
            break
    if reported:
        log.info("expiry reminders: %d key(s) expire within 7 days", len(reported))
    return reported


class PeriodicReminders:
    """Wakes every min(`interval`, WAKE_SECONDS) in a daemon thread; runs a round when the
    cluster's round is due and this process wins it."""

    def __init__(self, database_url: str, interval: float = INTERVAL_SECONDS):
        self.database_url, self.interval = database_url, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def round(self) -> bool:
        ran, _ = jobs.run_if_due(self.database_url, JOB, self.interval, lambda: remind_round(self.database_url))
        return ran

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(min(self.interval, WAKE_SECONDS)):
                try:
                    self.round()
                except Exception:  # the next round retries
                    log.exception("expiry reminders failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-key-reminders", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
