"""Reading an organization's notifications and delivery log (newest first, id cursors)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidegate.ids import id_floor
from tidegate.notifications.models import Notification, WebhookDelivery


def list_notifications(session: Session, org_id: str, *, limit: int, after: str | None = None) -> list[Notification]:
    """Up to limit+1 (the extra one says more exist), newest first, older than `after`."""
    query = select(Notification).where(Notification.org_id == org_id)
    if after:
        query = query.where(Notification.id < after)
    return list(session.scalars(query.order_by(Notification.id.desc()).limit(limit + 1)))


def count_since(session: Session, org_id: str, since: datetime) -> int:
    """Notifications of events made after `since` (ids are the events' time-ordered ULIDs:
    a range of the (org_id, id) index, not a scan of the organization's notifications)."""
    floor = id_floor("ntf", int(since.timestamp() * 1000) + 1)
    return int(session.scalar(select(func.count()).where(Notification.org_id == org_id, Notification.id >= floor)) or 0)


def list_deliveries(
    session: Session, org_id: str, *, webhook_id: str | None = None, limit: int, after: str | None = None
) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.org_id == org_id)
    if webhook_id is not None:
        query = query.where(WebhookDelivery.webhook_id == webhook_id)
    if after:
        query = query.where(WebhookDelivery.id < after)
    return list(session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
