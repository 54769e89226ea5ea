"""When and from where each key was last used, from its shipped request events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from tidegate.credentials.models import ApiKey


def record_last_use(session: Session, events: list[dict[str, Any]]) -> None:
    """Advance each key's `last_used_at`/`last_used_ip` to its newest event among `events`.

    Runs in the transaction that inserts the events (audit.journal's `after_insert`), so a
    key's last use and the event that shows it commit together. Never moves backwards:
    segments ship out of order."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        key_id = event.get("key_id")
        if key_id and (key_id not in latest or event["timestamp"] > latest[key_id]["timestamp"]):
            latest[key_id] = event
    # In key id order: two nodes shipping at once lock the same keys' rows in the same order
    # (in arrival order, each waited on the other: PostgreSQL's "deadlock detected").
    for key_id, event in sorted(latest.items()):
        # One conditional UPDATE, not read-then-write: two nodes' shippers updating the same
        # key at once leave the newer use (PostgreSQL re-checks the condition after the wait).
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < event["timestamp"]),
            )
            .values(last_used_at=event["timestamp"], last_used_ip=event.get("ip_address"))
            .execution_options(synchronize_session=False)
        )
