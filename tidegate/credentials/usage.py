"""What the shipped request events of each key say about it: when and from where it was last
used, and the addresses it is used from (a new one reported once).

`record_key_use` runs in the transaction that inserts the events (audit.journal's
`after_insert`), so what it writes and the events that show it commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditEvent
from tidegate.audit.record import SERVER, event_row
from tidegate.credentials.models import ApiKey, KeyAddress

NEW_IP_ACTION = "api_key.used_from_new_ip"


def accepted(event: dict[str, Any]) -> bool:
    """The request was served (a refusal, 401 after revocation included, is not a use)."""
    status = event.get("status")
    return status is not None and status < 400


def record_key_use(session: Session, events: list[dict[str, Any]]) -> None:
    record_last_use(session, events)
    record_addresses(session, events)


def record_last_use(session: Session, events: list[dict[str, Any]]) -> None:
    """Advance each key's `last_used_at`/`last_used_ip` to its newest accepted request among
    `events`. Never moves backwards: segments ship out of order."""
    latest: dict[str, dict[str, Any]] = {}
    for event in events:
        key_id = event.get("key_id")
        if not key_id or not accepted(event):
            continue
        if key_id not in latest or event["timestamp"] > latest[key_id]["timestamp"]:
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


@dataclass
class _Seen:
    org_id: str
    first: datetime
    last: datetime
    requests: int = 0
    refused: int = 0


def _addresses(events: list[dict[str, Any]]) -> dict[tuple[str, str], _Seen]:
    """(key, address) -> what `events` saw of it. Requests made with the key itself only:
    an embed session's requests come from its end users' browsers, not the key's holder."""
    seen: dict[tuple[str, str], _Seen] = {}
    for event in events:
        key_id, ip = event.get("key_id"), event.get("ip_address")
        if not key_id or not ip or event.get("method") is None or event.get("actor_type") != "api_key":
            continue
        stamp = event["timestamp"]
        entry = seen.get((key_id, ip))
        if entry is None:
            entry = seen[(key_id, ip)] = _Seen(event["org_id"], stamp, stamp)
        entry.first, entry.last = min(entry.first, stamp), max(entry.last, stamp)
        entry.requests += 1
        entry.refused += 0 if accepted(event) else 1
    return seen


def record_addresses(session: Session, events: list[dict[str, Any]]) -> None:
    """Count each key's requests per client address, and report an address new to a key
    (not its first) once, as `api_key.used_from_new_ip`.

    Once: the address's row is inserted by exactly one transaction (INSERT ... ON CONFLICT
    DO NOTHING; a concurrent shipper's insert of the same pair waits, then does nothing),
    and only that one reports it. A segment shipped twice (a shipper killed between commit
    and deleting it) counts its requests twice; it never reports twice."""
    seen = _addresses(events)
    if not seen:
        return
    upsert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    added: dict[str, list[str]] = {}
    for (key_id, ip), entry in sorted(seen.items()):  # (a fixed lock order: see record_last_use)
        inserted = session.execute(
            upsert(KeyAddress)
            .values(
                key_id=key_id,
                ip=ip,
                org_id=entry.org_id,
                first_seen=entry.first,
                last_seen=entry.last,
                requests=entry.requests,
                refused=entry.refused,
                new_for_key=False,
            )
            .on_conflict_do_nothing(index_elements=["key_id", "ip"])
            .returning(KeyAddress.key_id)  # (a row only if inserted; rowcount is -1 with psycopg)
        )
        if inserted.first() is not None:
            added.setdefault(key_id, []).append(ip)
            continue
        session.execute(
            update(KeyAddress)
            .where(KeyAddress.key_id == key_id, KeyAddress.ip == ip)
            .values(
                first_seen=_earlier(KeyAddress.first_seen, entry.first),
                last_seen=_later(KeyAddress.last_seen, entry.last),
                requests=KeyAddress.requests + entry.requests,
                refused=KeyAddress.refused + entry.refused,
            )
            .execution_options(synchronize_session=False)
        )
    for key_id, ips in sorted(added.items()):
        _report_new(session, key_id, ips, seen)


def _earlier(column: Any, value: datetime) -> Any:
    return case((column > value, value), else_=column)


def _later(column: Any, value: datetime) -> Any:
    return case((column < value, value), else_=column)


def _report_new(session: Session, key_id: str, ips: list[str], seen: dict[tuple[str, str], _Seen]) -> None:
    """Report the addresses just added for `key_id`, except its first one ever: where its
    holder first used it is no news; any later address is."""
    known = session.execute(
        select(KeyAddress.ip).where(KeyAddress.key_id == key_id).order_by(KeyAddress.first_seen, KeyAddress.ip)
    ).scalars()
    ordered = list(known)
    first = ordered[0] if ordered else None
    key = session.execute(select(ApiKey.name, ApiKey.key_prefix).where(ApiKey.id == key_id)).one_or_none()
    for ip in sorted(ips, key=lambda address: seen[(key_id, address)].first):
        if ip == first:
            continue
        entry = seen[(key_id, ip)]
        session.execute(
            update(KeyAddress)
            .where(KeyAddress.key_id == key_id, KeyAddress.ip == ip)
            .values(new_for_key=True)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            insert(AuditEvent),
            [
                event_row(
                    org_id=entry.org_id,
                    actor_type="system",
                    actor_id=SERVER,
                    action=NEW_IP_ACTION,
                    target_type="api_key",
                    target_id=key_id,
                    ip_address=ip,
                    details={
                        "ip": ip,
                        "first_seen": entry.first.isoformat(),
                        "name": key.name if key else None,
                        "key_prefix": key.key_prefix if key else None,
                        "known_ips": len(ordered) - 1,  # the other addresses it was used from before
                    },
                )
            ],
        )
