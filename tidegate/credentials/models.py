"""API keys as stored: a keyed hash of the secret, never the secret itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from tidegate.db.base import Base, UtcDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "org_id", "id"), Index(None, "created_by"), Index(None, "parent_key_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256(pepper, secret), hex. The pepper lives outside the database.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(40))
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_ip: Mapped[str | None] = mapped_column(String(64))
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer, default=60)
    ip_allowlist: Mapped[list[str] | None] = mapped_column(JSON)
    source_scope: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    access_policy_ids: Mapped[list[str] | None] = mapped_column(JSON)
    bound_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    # The key whose request created this one (None: made by a person, in the web UI or CLI).
    # A child never exceeds its parent, and revoking the parent revokes it.
    parent_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    # Rotation links: the key this one replaced; on the replaced key, when and by which key
    # (its prefix too, so that authentication can name the replacement without a join).
    rotated_from_key_id: Mapped[str | None] = mapped_column(String(40))
    rotated_to_key_id: Mapped[str | None] = mapped_column(String(40))
    rotated_to_prefix: Mapped[str | None] = mapped_column(String(16))
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When `api_key.expiring_soon` was emitted for it (once per key: credentials.reminders).
    expiry_reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def status_at(self, now: datetime) -> str:
        return key_status(self.revoked_at, self.expires_at, now)


def key_status(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> str:
    """ "revoked", "expired" or "active": the one rule, for stored keys and cached key states."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


class KeyAddress(Base):
    """A client address a key was used from (its requests, accepted or refused, since the
    first), kept by the audit shipper (credentials.usage): the insights' address list, and
    how a new address is noticed once."""

    __tablename__ = "api_key_ips"
    __table_args__ = (Index(None, "org_id", "first_seen"),)

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)  # of them, answered 4xx/5xx
    # Not the key's first address: reported as `api_key.used_from_new_ip`.
    new_for_key: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class EmbedSession(Base):
    """An embed session: a short-lived credential acting as one user, made by a key.

    Like keys, only a keyed hash of the secret is stored. The session holds no rights of its
    own: each request reads its user's and its creating key's current state.
    """

    __tablename__ = "embed_sessions"
    __table_args__ = (Index(None, "org_id", "id"), Index(None, "user_id"), Index(None, "created_by_key_id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_by_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    token_prefix: Mapped[str] = mapped_column(String(24), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    origin: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The session this one replaced (refresh), for the audit trail.
    refreshed_from_id: Mapped[str | None] = mapped_column(String(40))
