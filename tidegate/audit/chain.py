"""Each organization's audit events as a hash chain, and the signed checkpoints over it.

The chainer gives every committed event that has none a position (`chain_seq`, 1, 2, ...
per organization), the hash of the event before it (`prev_hash`; 64 zeros before the
first) and its own `hash`: SHA-256 of its canonical form, which includes `chain_seq` and
`prev_hash`, so changing, removing, adding or moving any event breaks the chain after it.
Events are chained in the order the chainer finds them committed (within one round, by
timestamp then id): request events shipped from any worker or node, and admin events
written in their change's transaction, all get their place after they are committed, and
keep it. The chainer runs outside requests (the audit shipper process under `tidegate
serve`, the journal's thread otherwise) as a cluster job, and per organization under a lock
taken before anything is read (an advisory lock on PostgreSQL, the write lock on SQLite); the
unique (org_id, chain_seq) index refuses a position taken twice all the same.

Every CHECKPOINT_SECONDS (and when the server stops), each chain whose head moved gets a
checkpoint: its head signed with the server's Ed25519 key (audit.signing).

The canonical form (README, "A log you can verify"): the JSON object of CANONICAL_FIELDS,
serialized as `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)` in UTF-8, times as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.orm import Session

from tidegate.audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from tidegate.audit.signing import Signer
from tidegate.db.base import utcnow
from tidegate.ids import new_id

log = logging.getLogger("tidegate.audit")

AUDIT_EVENTS = AuditEvent.metadata.tables[AuditEvent.__tablename__]
CHAIN_VERSION = 1
GENESIS = "0" * 64  # the prev_hash of an organization's first event
CHECKPOINT_SECONDS = 60.0
CHAIN_BATCH = 2000  # events chained per organization per transaction

# The fields an event's hash covers, in the export under these names.
CANONICAL_FIELDS = (
    "v",
    "org_id",
    "chain_seq",
    "prev_hash",
    "chained_at",
    "id",
    "timestamp",
    "actor_type",
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "key_id",
    "method",
    "path",
    "status",
    "ip_address",
    "user_agent",
    "request_id",
    "details",
)
CHECKPOINT_FIELDS = ("type", "v", "org_id", "chain_seq", "head_hash", "signed_at", "kind")
CHECKPOINT_TYPE = "tidegate.audit.checkpoint"


def timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def event_fields(event: Any) -> dict[str, Any]:
    """The event as its hash sees it (and as the export writes it)."""
    return {
        "v": CHAIN_VERSION,
        "org_id": event.org_id,
        "chain_seq": event.chain_seq,
        "prev_hash": event.prev_hash,
        "chained_at": timestamp_text(event.chained_at) if event.chained_at else None,
        "id": event.id,
        "timestamp": timestamp_text(event.timestamp),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "key_id": event.key_id,
        "method": event.method,
        "path": event.path,
        "status": event.status,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "details": event.details,
    }


def event_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical form of `fields` (only CANONICAL_FIELDS count)."""
    return hashlib.sha256(canonical_bytes({name: fields.get(name) for name in CANONICAL_FIELDS})).hexdigest()


def checkpoint_message(org_id: str, chain_seq: int, head_hash: str, signed_at: str, kind: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return canonical_bytes(
        {
            "type": CHECKPOINT_TYPE,
            "v": CHAIN_VERSION,
            "org_id": org_id,
            "chain_seq": chain_seq,
            "head_hash": head_hash,
            "signed_at": signed_at,
            "kind": kind,
        }
    )


def checkpoint_fields(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "org_id": checkpoint.org_id,
        "chain_seq": checkpoint.chain_seq,
        "head_hash": checkpoint.head_hash,
        "signed_at": timestamp_text(checkpoint.signed_at),
        "kind": checkpoint.kind,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


# -- chaining --------------------------------------------------------------------------------


def _lock_org(session: Session, org_id: str) -> None:
    """Serialize the chainers of one organization until the transaction ends, before
    anything is read: on PostgreSQL an advisory lock (later statements see what the previous
    holder committed); on SQLite a write to the head row, which takes the database's write
    lock first (reads after it are current, and nobody writes before this commits)."""
    if session.get_bind().dialect.name == "postgresql":
        from tidegate.db.jobs import LOCK_NAMESPACE, lock_key

        session.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": LOCK_NAMESPACE, "key": lock_key(f"audit-chain:{org_id}")},
        )
    else:
        session.execute(
            update(AuditChainHead)
            .where(AuditChainHead.org_id == org_id)
            .values(chain_seq=AuditChainHead.chain_seq)
            .execution_options(synchronize_session=False)
        )


def orgs_with_unchained(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.org_id).where(AuditEvent.chain_seq.is_(None)).distinct()))


def chain_org(session: Session, org_id: str, *, now: datetime | None = None, batch: int = CHAIN_BATCH) -> int:
    """Chain up to `batch` of the organization's unchained events, in the caller's
    transaction; how many."""
    _lock_org(session, org_id)
    head = session.get(AuditChainHead, org_id, populate_existing=True)
    if head is not None:
        _repair(session, head)
    # Core statements, not ORM objects: a batch is one SELECT and one executemany UPDATE.
    pending = session.execute(
        select(AUDIT_EVENTS)
        .where(AUDIT_EVENTS.c.org_id == org_id, AUDIT_EVENTS.c.chain_seq.is_(None))
        .order_by(AUDIT_EVENTS.c.timestamp, AUDIT_EVENTS.c.id)
        .limit(batch)
    ).all()
    if not pending:
        return 0
    if head is None:
        head = _rebuilt_head(session, org_id)
        session.add(head)
    now = now or utcnow()
    seq, previous = head.chain_seq, head.head_hash
    changes = []
    for row in pending:
        seq += 1
        event = SimpleNamespace(**{**row._mapping, "chain_seq": seq, "prev_hash": previous, "chained_at": now})
        previous = event_hash(event_fields(event))
        changes.append({"event_id": row.id, "seq": seq, "prev": event.prev_hash, "hash": previous, "at": now})
    # `chain_seq IS NULL`: an event chained by someone else meanwhile is not chained twice (and a
    # position taken twice fails on the unique (org_id, chain_seq) index, rolling this back).
    session.execute(
        update(AUDIT_EVENTS)
        .where(AUDIT_EVENTS.c.id == bindparam("event_id"), AUDIT_EVENTS.c.chain_seq.is_(None))
        .values(
            chain_seq=bindparam("seq"), prev_hash=bindparam("prev"), hash=bindparam("hash"), chained_at=bindparam("at")
        ),
        changes,
    )
    head.chain_seq, head.head_hash = seq, previous
    session.flush()
    return len(pending)


def _repair(session: Session, head: AuditChainHead) -> None:
    """A head row that disagrees with the last chained event (edited or restored by hand)
    would make every later round collide or link wrongly: continue after that event."""
    last = session.execute(
        select(AuditEvent.chain_seq, AuditEvent.hash)
        .where(AuditEvent.org_id == head.org_id, AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq.desc())
        .limit(1)
    ).first()
    if last is not None and (last.chain_seq, last.hash) != (head.chain_seq, head.head_hash):
        log.warning("audit chain of %s: head row repaired to position %s", head.org_id, last.chain_seq)
        head.chain_seq, head.head_hash = last.chain_seq, last.hash


def _rebuilt_head(session: Session, org_id: str) -> AuditChainHead:
    """The head of a chain without one: its first, or its row was lost (continue after its
    last chained event, or its purge boundary, rather than collide with position 1)."""
    last = session.execute(
        select(AuditEvent.chain_seq, AuditEvent.hash)
        .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq.desc())
        .limit(1)
    ).first()
    boundary = latest_checkpoint(session, org_id, kinds=("purge",))
    seq, hash_ = (0, GENESIS)
    if last is not None and last.hash is not None:
        seq, hash_ = last.chain_seq, last.hash
    if boundary is not None and boundary.chain_seq > seq:
        seq, hash_ = boundary.chain_seq, boundary.head_hash
    return AuditChainHead(org_id=org_id, chain_seq=seq, head_hash=hash_, signed_seq=0)


def sign_checkpoint(
    session: Session,
    signer: Signer,
    org_id: str,
    seq: int,
    head_hash: str,
    kind: str,
    *,
    signed_at: datetime | None = None,
) -> AuditCheckpoint:
    signed_at = signed_at or utcnow()
    checkpoint = AuditCheckpoint(
        id=new_id("ckp"),
        org_id=org_id,
        chain_seq=seq,
        head_hash=head_hash,
        signed_at=signed_at,
        kind=kind,
        key_id=signer.key_id,
        signature=signer.sign(checkpoint_message(org_id, seq, head_hash, timestamp_text(signed_at), kind)),
    )
    session.add(checkpoint)
    return checkpoint


def sign_heads(
    session: Session,
    signer: Signer,
    *,
    interval: float = CHECKPOINT_SECONDS,
    force: bool = False,
    signed_at: datetime | None = None,
) -> list[AuditCheckpoint]:
    """A checkpoint for each chain whose head moved since its last one, signed at least
    `interval` seconds ago (any age with `force`: the server stops)."""
    query = select(AuditChainHead).where(AuditChainHead.chain_seq > AuditChainHead.signed_seq)
    if not force:
        due = utcnow() - timedelta(seconds=interval)
        query = query.where((AuditChainHead.signed_at.is_(None)) | (AuditChainHead.signed_at <= due))
    signed = []
    for head in session.scalars(query.with_for_update(skip_locked=True)):
        checkpoint = sign_checkpoint(
            session, signer, head.org_id, head.chain_seq, head.head_hash, "head", signed_at=signed_at
        )
        head.signed_seq, head.signed_at = head.chain_seq, checkpoint.signed_at
        signed.append(checkpoint)
    return signed


def latest_checkpoint(
    session: Session, org_id: str, kinds: Sequence[str] = ("head", "purge")
) -> AuditCheckpoint | None:
    return session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.org_id == org_id, AuditCheckpoint.kind.in_(kinds))
        .order_by(AuditCheckpoint.chain_seq.desc(), AuditCheckpoint.signed_at.desc())
        .limit(1)
    )


# -- retention ---------------------------------------------------------------------------------


def purge_before(session: Session, signer: Signer, org_id: str, cutoff: datetime) -> tuple[int, int | None]:
    """Delete a prefix of the organization's chain: up to the newest checkpoint signed before
    `cutoff` (its events were all chained before then), after signing that position as a
    "purge" checkpoint, from which verification then starts. Checkpoints are few and indexed,
    so finding the boundary reads no events; a boundary whose event does not match its
    checkpoint (a tampered log) is left alone: evidence is not purged. (deleted, boundary)."""
    _lock_org(session, org_id)
    signed = session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.org_id == org_id, AuditCheckpoint.kind == "head", AuditCheckpoint.signed_at < cutoff)
        .order_by(AuditCheckpoint.chain_seq.desc())
        .limit(1)
    )
    if signed is None:
        return 0, None
    boundary = session.scalar(
        select(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.chain_seq == signed.chain_seq)
    )
    if boundary is None or boundary.hash != signed.head_hash or boundary.chain_seq is None:
        log.warning("audit purge of %s skipped: position %s does not match its checkpoint", org_id, signed.chain_seq)
        return 0, None
    seq = boundary.chain_seq
    sign_checkpoint(session, signer, org_id, seq, boundary.hash, "purge")
    deleted = session.execute(
        delete(AuditEvent)
        .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq <= seq)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]  # a CursorResult for a DELETE
    # Checkpoints inside the purged prefix sign nothing that remains (the new purge one stays).
    session.execute(
        delete(AuditCheckpoint)
        .where(
            AuditCheckpoint.org_id == org_id,
            (AuditCheckpoint.chain_seq < seq)
            | ((AuditCheckpoint.chain_seq == seq) & (AuditCheckpoint.kind != "purge")),
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.org_id == org_id, AuditChainHead.signed_seq < seq)
        .values(signed_seq=seq)
        .execution_options(synchronize_session=False)
    )
    return int(deleted or 0), seq
