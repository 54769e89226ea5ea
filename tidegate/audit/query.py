"""Listing audit events, newest first, with filters."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.errors import InvalidRequest


def parse_bound(value: str | None, name: str, *, end: bool) -> datetime | None:
    """ISO-8601 datetime, or a date (a whole day: an end date includes that day)."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC here, as the database compares it: 0001-01-01T00:00+01:00 has no UTC time.
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest("invalid_date", f"{name} must be an ISO-8601 date or datetime, got {value!r}.") from None
    except OverflowError:  # the day after 9999-12-31, or a time before year 1 in UTC
        raise InvalidRequest("invalid_date", f"{name} {value!r} is outside years 1-9999 (in UTC).") from None


def list_events(
    session: Session,
    org_id: str,
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
    actor_id: str | None = None,
    key_id: str | None = None,
    action: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.org_id == org_id)
    for column, value in (
        (AuditEvent.actor_id, actor_id),
        (AuditEvent.key_id, key_id),
        (AuditEvent.action, action),
        (AuditEvent.target_id, target_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditEvent.timestamp >= since)
    if until is not None:
        query = query.where(AuditEvent.timestamp < until)
    if after:
        query = query.where(AuditEvent.id < after)
    if before:
        # The page before (newer than) `before`: its oldest limit+1 events, newest first.
        newer = query.where(AuditEvent.id > before).order_by(AuditEvent.id.asc()).limit(limit + 1)
        return list(reversed(session.scalars(newer).all()))
    return list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
