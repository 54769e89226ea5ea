"""Organizations (tenants) and their users."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false, true

from tidegate.db.base import Base, UtcDateTime, utcnow


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Admin controls. Safe defaults: creation on (the product's purpose), checked live.
    api_key_creation_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped in the same transaction as every audited change in the organization
    # (audit.record). Cached access decisions are keyed by it, so any change invalidates
    # them for the very next request, in every process.
    access_epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Row-level security: users to whom no access policy applies see no rows (off: all rows).
    deny_by_default: Mapped[bool] = mapped_column(Boolean, default=False)
    # What one person can hold: active keys they created, and one request rate shared by
    # all of them (on top of each key's own limit).
    max_keys_per_user: Mapped[int] = mapped_column(Integer, default=100, server_default="100")
    user_rate_limit_per_minute: Mapped[int] = mapped_column(Integer, default=100_000, server_default="100000")
    # Embed sessions: on by default; origins allowed to host them (None or empty: any); the embed
    # UI's look, served publicly by GET /api/embed/ui-config.
    embeds_enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    embed_allowed_origins: Mapped[list[str] | None] = mapped_column(JSON)
    embed_ui_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # None: not configured
    # Dashboard share links that work without signing in: off unless an admin allows them;
    # switching it off deactivates every public link at once (checked on each use).
    public_share_links_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Key hygiene: an active key not used for this many days is flagged as unused.
    unused_key_days: Mapped[int] = mapped_column(Integer, default=90, server_default="90")
    # Audit events older than this are purged (orgs.retention); the purge boundary is signed.
    audit_retention_days: Mapped[int] = mapped_column(Integer, default=365, server_default="365")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("org_id", "email"),
        UniqueConstraint("org_id", "external_id"),
        Index(None, "org_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EpochLease(Base):
    """A serving process that answers from its own copy of the organizations' access epochs
    (PostgreSQL, `orgs.epochwatch`): a writer waits for its acknowledgement of each bump
    until `expires_at` (PostgreSQL's clock). UNLOGGED on PostgreSQL: nothing to keep across a
    crash of the server, whose restart drops every listener anyway."""

    __tablename__ = "epoch_leases"

    process_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EpochAck(Base):
    """The highest access epoch of an organization that a leased process has applied."""

    __tablename__ = "epoch_acks"

    process_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
