"""From the audit log to notifications and queued webhook deliveries.

A cursor over `audit_events`: each scan reads the notifying events (events.notifies) of every
organization whose id (a time-ordered ULID) is at or after the cursor (the time of the newest
such event seen) minus a look-back, and
makes, in ONE transaction with the cursor's advance, a notification per new event (unique by
event id) and a pending delivery per subscribed webhook (unique per webhook and
notification). A crash before the commit loses nothing (the next scan reads the same events);
the look-back catches events committed late (a long transaction, the journal's shipping);
the unique keys make a repeated read harmless.

One scanner at a time: PostgreSQL locks the cursor row (`FOR UPDATE SKIP LOCKED`: a scan
already running elsewhere makes this one a no-op); SQLite has one writer, and its inserts
skip what another process inserted first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.db.base import utcnow
from tidegate.ids import id_floor, new_id
from tidegate.notifications.events import EVENT_TYPES, notifies
from tidegate.notifications.models import Notification, NotificationCursor, Webhook, WebhookDelivery
from tidegate.orgs.models import Organization

CURSOR = "audit_events"
LOOKBACK = timedelta(hours=1)
CURSOR_STEP = timedelta(minutes=1)  # the cursor moves by a minute or more: the look-back covers the rest


def event_id_floor(moment: datetime) -> str:
    """The smallest audit event id (`evt_` + ULID) of an event made at or after `moment`."""
    return id_floor("evt", int(moment.timestamp() * 1000))


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _database_now(session: Session) -> datetime:
    """PostgreSQL's clock (shared by every node); SQLite's database is on this machine."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    moment = session.scalar(select(func.now()))
    return moment.astimezone(UTC) if moment is not None else utcnow()


def scan(session: Session, now: datetime | None = None) -> int:
    """One scan (see the module's docstring) in the caller's transaction; notifications made."""
    # The cursor never goes past the earlier of this process's clock and the database's (one
    # clock for every node on PostgreSQL): a node whose clock is fast, or an event stamped
    # ahead, must not carry it past what the other nodes write meanwhile.
    now = min(now or utcnow(), _database_now(session))
    if session.get(NotificationCursor, CURSOR) is None:  # (first scan ever; a read otherwise)
        session.execute(
            _insert(session)(NotificationCursor)
            .values(name=CURSOR, scanned_to=now - LOOKBACK)
            .on_conflict_do_nothing(index_elements=["name"])
        )
    cursor = session.scalar(
        select(NotificationCursor).where(NotificationCursor.name == CURSOR).with_for_update(skip_locked=True)
    )
    if cursor is None:
        return 0  # another process is scanning
    floor = event_id_floor(cursor.scanned_to - LOOKBACK)
    made = 0
    newest = cursor.scanned_to
    for org_id in session.scalars(select(Organization.id)).all():
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.org_id == org_id, AuditEvent.action.in_(EVENT_TYPES), AuditEvent.id >= floor)
            .order_by(AuditEvent.id)
        ).all()
        if events:
            newest = max(newest, min(max(e.timestamp for e in events), now))
        events = [e for e in events if notifies(e.action, e.details)]
        if events:
            made += _notify(session, org_id, events, now)
    # The cursor follows the events, not this process's clock (a clock set ahead must not make
    # the scans skip events), capped by it (so must an event stamped ahead), and moves at most
    # once a minute: an idle scan writes nothing.
    if newest - cursor.scanned_to >= CURSOR_STEP:
        cursor.scanned_to = newest
    return made


def _notify(session: Session, org_id: str, events: list[AuditEvent], now: datetime) -> int:
    insert = _insert(session)
    known = set(session.scalars(select(Notification.event_id).where(Notification.event_id.in_([e.id for e in events]))))
    fresh = [e for e in events if e.id not in known]
    if not fresh:
        return 0
    session.execute(
        insert(Notification)
        .values(
            [
                {
                    # The event's own ULID: notifications list in the audit log's order.
                    "id": "ntf_" + e.id.removeprefix("evt_"),
                    "org_id": org_id,
                    "event_id": e.id,
                    "event_type": e.action,
                    "occurred_at": e.timestamp,
                    "target_type": e.target_type,
                    "target_id": e.target_id,
                    "ip_address": e.ip_address,
                    "details": e.details,
                    "created_at": utcnow(),
                }
                for e in fresh
            ]
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )
    # Read back: a notification another process inserted first keeps its own id.
    notifications = session.scalars(select(Notification).where(Notification.event_id.in_([e.id for e in fresh]))).all()
    webhooks = session.scalars(select(Webhook).where(Webhook.org_id == org_id, Webhook.deleted_at.is_(None))).all()
    rows = [
        {
            "id": new_id("whd"),
            "org_id": org_id,
            "webhook_id": webhook.id,
            "notification_id": notification.id,
            "event_type": notification.event_type,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": utcnow(),
        }
        for notification in notifications
        for webhook in webhooks
        if notification.event_type in webhook.events and webhook.created_at <= notification.occurred_at
    ]
    if rows:
        session.execute(
            insert(WebhookDelivery)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["webhook_id", "notification_id"])
        )
    return len(fresh)
