"""Audit retention: each organization keeps its audit events `audit_retention_days` (365 by
default, 1 to 2,190: six years, as HIPAA asks), measured from when each was chained.

The purge is a cluster job (hourly, once across nodes; `tidegate audit purge` runs it now).
It deletes a prefix of each chain after signing its boundary as a "purge" checkpoint, from
which verification then starts (audit.chain.purge_before): what remains stays verifiable.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from tidegate.audit.chain import purge_before
from tidegate.audit.record import SERVER, Actor, record
from tidegate.audit.signing import Signer
from tidegate.db import jobs
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest
from tidegate.orgs.models import Organization

log = logging.getLogger("tidegate.audit")

JOB = "audit-purge"
INTERVAL = 3600.0
WAKE_SECONDS = 60.0
MIN_DAYS, MAX_DAYS = 1, 2190


def check_retention_days(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_DAYS <= value <= MAX_DAYS:
        raise InvalidRequest(
            "invalid_audit_retention_days",
            f"audit_retention_days must be a whole number of days from {MIN_DAYS} to {MAX_DAYS}, got {value!r}.",
        )
    return value


@dataclass(frozen=True)
class Purged:
    org_id: str
    events: int
    boundary_seq: int


def purge_expired(
    database_url: str, signer: Signer, *, now: datetime | None = None, actor: Actor = SERVER
) -> list[Purged]:
    """Purge every organization's events older than its retention (one transaction each);
    recorded as `actor`'s (tidegate's job, or None: the operator's CLI)."""
    now = now or utcnow()
    with session_scope(database_url) as session:
        retention = list(session.execute(select(Organization.id, Organization.audit_retention_days)))
    purged = []
    for org_id, days in retention:
        with session_scope(database_url) as session:
            count, seq = purge_before(session, signer, org_id, now - timedelta(days=days))
            if seq is not None:
                # Recorded (and so chained) after the boundary: the purge itself stays in the log.
                record(
                    session,
                    actor,
                    "audit.purged",
                    org_id=org_id,
                    target_type="audit",
                    details={"events": count, "through_chain_seq": seq, "retention_days": days},
                )
                purged.append(Purged(org_id, count, seq))
    for item in purged:
        log.info("audit purge: %s: %d event(s) up to position %d", item.org_id, item.events, item.boundary_seq)
    return purged


def purge_now(database_url: str, signer: Signer, *, now: datetime | None = None) -> list[Purged]:
    """`tidegate audit purge`: a round now, recorded as the operator's."""
    return jobs.run_now(database_url, JOB, lambda: purge_expired(database_url, signer, now=now, actor=None))


class PeriodicPurge:
    """Wakes every WAKE_SECONDS and purges when the cluster's hourly round is due and ours."""

    def __init__(self, database_url: str, signer: Signer):
        self.database_url, self.signer = database_url, signer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(WAKE_SECONDS):
                try:
                    jobs.run_if_due(
                        self.database_url, JOB, INTERVAL, lambda: purge_expired(self.database_url, self.signer)
                    )
                except Exception:  # nothing was deleted unsigned; the next round retries
                    log.exception("audit purge failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-audit-purge", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
