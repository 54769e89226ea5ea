"""Webhooks, the notifications of an organization, and the queue of their deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime, utcnow


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (Index(None, "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(200))
    # Fernet token of the signing secret (it must be used to sign, so it cannot be a hash);
    # write-only: never returned after creation, logged or audited.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    secret_prefix: Mapped[str] = mapped_column(String(20))  # to recognise it, as a key's prefix
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Notification(Base):
    """A security-relevant audit event, as the organization's admins are told about it."""

    __tablename__ = "notifications"
    __table_args__ = (Index(None, "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40), unique=True)  # the audit event: one notification each
    event_type: Mapped[str] = mapped_column(String(80))  # the audit action
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(200))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One notification to one webhook: queued, attempted until it succeeds or gives up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "notification_id"),
        Index(None, "org_id", "webhook_id", "id"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id"))
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id"))
    event_type: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20))  # pending, succeeded, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A process delivering it now holds it until then (a crashed one's claim runs out).
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class NotificationCursor(Base):
    """How far the audit log has been scanned for notifications (one row)."""

    __tablename__ = "notification_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    scanned_to: Mapped[datetime] = mapped_column(UtcDateTime)


class AuditStream(Base):
    """An organization's audit stream to a SIEM: where to, its secret, and how far it got.

    One row per organization (its settings and its cursor): `delivered_seq` is the last
    chain position the receiver acknowledged with a 2xx; the next POST starts after it.
    """

    __tablename__ = "audit_streams"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(2000))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Fernet token of the signing secret, as a webhook's: never returned after it is set.
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    secret_prefix: Mapped[str | None] = mapped_column(String(20))
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed attempts since the last 2xx
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The process sending a batch now holds the stream until then (a crashed one's claim runs out).
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
