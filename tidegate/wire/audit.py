"""Audit events as GET /audit/events lists them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.audit.models import AuditEvent
from tidegate.db.base import isoformat


class EventOut(BaseModel):
    id: str
    actor_id: str
    actor_type: str
    action: str
    target_type: str | None
    target_id: str | None
    timestamp: str | None
    ip_address: str | None
    key_id: str | None
    method: str | None
    path: str | None
    status: int | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any] | None

    @classmethod
    def of(cls, event: AuditEvent) -> EventOut:
        return cls(
            id=event.id,
            actor_id=event.actor_id,
            actor_type=event.actor_type,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            timestamp=isoformat(event.timestamp),
            ip_address=event.ip_address,
            key_id=event.key_id,
            method=event.method,
            path=event.path,
            status=event.status,
            user_agent=event.user_agent,
            request_id=event.request_id,
            details=event.details,
        )
