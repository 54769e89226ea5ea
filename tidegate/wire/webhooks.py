"""Webhooks, their delivery log, and notifications (a tidegate extension)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from tidegate.notifications.models import Notification, Webhook, WebhookDelivery


class WebhookOut(BaseModel):
    """Never the secret: only its prefix, to recognise it."""

    id: str
    object: str = "webhook"
    url: str
    events: list[str]
    description: str | None
    secret_prefix: str
    created_by: str | None
    created_at: datetime

    @classmethod
    def fields_of(cls, webhook: Webhook) -> dict[str, Any]:
        return {
            "id": webhook.id,
            "url": webhook.url,
            "events": list(webhook.events),
            "description": webhook.description,
            "secret_prefix": webhook.secret_prefix,
            "created_by": webhook.created_by,
            "created_at": webhook.created_at,
        }

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookOut:
        return cls(**cls.fields_of(webhook))


class WebhookCreated(WebhookOut):
    """The one response that carries the signing secret."""

    secret: str


class DeliveryOut(BaseModel):
    id: str
    object: str = "webhook_delivery"
    webhook_id: str
    notification_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id,
            webhook_id=row.webhook_id,
            notification_id=row.notification_id,
            event_type=row.event_type,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_attempt_at=row.last_attempt_at,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )


class NotificationOut(BaseModel):
    id: str
    object: str = "notification"
    type: str
    summary: str
    occurred_at: datetime
    event_id: str
    target_type: str | None
    target_id: str | None
    ip_address: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, row: Notification, summary: str) -> NotificationOut:
        return cls(
            id=row.id,
            type=row.event_type,
            summary=summary,
            occurred_at=row.occurred_at,
            event_id=row.event_id,
            target_type=row.target_type,
            target_id=row.target_id,
            ip_address=row.ip_address,
            details=row.details or {},
        )


class LeakLabel(BaseModel):
    """GitHub's secret scanning partner feedback format."""

    token_raw: str
    token_type: str | None
    label: str
