"""Audit events: key lifecycle, admin changes, and every request made with a key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, column
from sqlalchemy.orm import Mapped, mapped_column

from tidegate.db.base import Base, UtcDateTime


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "org_id", "id"),
        Index(None, "org_id", "key_id", "id"),
        Index(None, "org_id", "actor_id", "id"),
        Index(None, "org_id", "action", "id"),
        Index(None, "org_id", "target_id", "id"),
        Index(None, "org_id", "timestamp"),  # usage reports: an org's events in a period
        # The chain (audit.chain): one event per position, and a small index of what waits for one.
        Index(None, "org_id", "chain_seq", unique=True),
        Index(
            "ix_audit_events_unchained",
            "org_id",
            "timestamp",
            "id",
            sqlite_where=column("chain_seq").is_(None),
            postgresql_where=column("chain_seq").is_(None),
        ),
    )

    # Time-ordered id: newest-first listing and the cursor both use it.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime)
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(80))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(40))
    method: Mapped[str | None] = mapped_column(String(10))
    path: Mapped[str | None] = mapped_column(String(2000))
    status: Mapped[int | None] = mapped_column(Integer)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set once by the chainer (audit.chain), never changed after: the event's position in its
    # organization's chain, the hash of the event before it, and its own hash (which covers both).
    chain_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    chained_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AuditChainHead(Base):
    """Where each organization's chain ends, and what was last signed: the chainer's own
    bookkeeping (verification never trusts it, it re-reads the events)."""

    __tablename__ = "audit_chain_heads"

    org_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    chain_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    signed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AuditCheckpoint(Base):
    """A signed statement: "the chain of `org_id` had `head_hash` at `chain_seq`", at
    `signed_at`. `kind` "head" (every minute), "purge" (the boundary of a retention purge:
    verification starts from it)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index(None, "org_id", "chain_seq"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    chain_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))
