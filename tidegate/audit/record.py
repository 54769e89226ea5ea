"""Writing audit events.

Lifecycle and admin events are inserted in the same transaction as the change they
describe: the change and its record commit together or not at all. Request events go
through the journal (audit.journal) so that recording never waits on the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import String
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.ids import new_id


def event_row(
    *,
    org_id: str,
    actor_type: str,
    actor_id: str,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    key_id: str | None = None,
    details: dict[str, Any] | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    request_id: str | None = None,
    method: str | None = None,
    path: str | None = None,
    status: int | None = None,
    timestamp: datetime | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    return storable(
        {
            "id": id or new_id("evt"),
            "org_id": org_id,
            "timestamp": timestamp or utcnow(),
            "actor_type": actor_type,
            "actor_id": actor_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "key_id": key_id,
            "method": method,
            "path": path,
            "status": status,
            "ip_address": ip_address,
            "user_agent": user_agent,
            "request_id": request_id,
            "details": details,
        }
    )


# Text columns of audit_events and their lengths.
_TEXT_LIMITS = {
    column.name: column.type.length for column in AuditEvent.__table__.columns if isinstance(column.type, String)
}


def storable(row: dict[str, Any]) -> dict[str, Any]:
    """The event with every text field as any database can keep it: NUL becomes U+FFFD and
    text is cut to its column's length (PostgreSQL refuses both; SQLite takes them).

    Paths, ids and user agents come from the client: an event the database refused would
    fail the change it records, or, from the journal, stop every later event from shipping.
    """
    for name, limit in _TEXT_LIMITS.items():
        value = row.get(name)
        if isinstance(value, str):  # (the common case, clean text, is left as it is)
            if "\x00" in value:
                value = row[name] = value.replace("\x00", "\ufffd")
            if limit and len(value) > limit:
                row[name] = value[:limit]
    return row


# The actor of what tidegate does on its own: its jobs (expiry reminders, retention purges),
# what it observes (new client addresses, failed-authentication bursts) and reports it receives
# (leaked keys). `None` is the operator's CLI.
SERVER: Final = "tidegate"
Actor = Principal | Literal["tidegate"] | None


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    org_id: str,
    target_type: str | None = None,
    target_id: str | None = None,
    details: dict[str, Any] | None = None,
    context: RequestContext | None = None,
) -> None:
    """Add one event to the caller's transaction. `actor` None means the operator CLI,
    `SERVER` tidegate itself.

    Recording changes nothing else: a change that can alter access also calls
    `orgs.epoch.bump_access_epoch` itself (tests/test_structure.py checks each does).
    """
    session.add(
        AuditEvent(
            **event_row(
                org_id=org_id,
                actor_type=actor.actor_type if isinstance(actor, Principal) else "system",
                actor_id=actor.actor_id if isinstance(actor, Principal) else (actor or "cli"),
                key_id=actor.key_id if isinstance(actor, Principal) else None,
                action=action,
                target_type=target_type,
                target_id=target_id,
                details=details,
                ip_address=context.ip if context else None,
                user_agent=context.user_agent if context else None,
                request_id=context.request_id if context else None,
            )
        )
    )


class RequestContext:
    """Where a change came from, for its audit event."""

    __slots__ = ("ip", "user_agent", "request_id")

    def __init__(self, ip: str | None, user_agent: str | None, request_id: str | None):
        self.ip = ip
        self.user_agent = user_agent
        self.request_id = request_id
