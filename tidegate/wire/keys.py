"""API keys: never the secret, except in the one response that creates the key."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.credentials.models import ApiKey
from tidegate.db.base import isoformat, utcnow


class KeyOut(BaseModel):
    id: str
    name: str
    key_prefix: str
    scopes: list[str]
    status: str  # active, revoked or expired, now
    created_by: str
    created_at: str | None
    last_used_at: str | None
    last_used_ip: str | None
    expires_at: str | None
    revoked_at: str | None
    rate_limit_per_minute: int
    bound_user_id: str | None
    source_scope: dict[str, Any] | None
    access_policy_ids: list[str] | None
    ip_allowlist: list[str] | None
    parent_key_id: str | None
    rotated_from: str | None  # the key this one replaced (rotation)
    rotated_to: str | None  # the key that replaced this one
    rotated_at: str | None

    @classmethod
    def fields_of(cls, key: ApiKey) -> dict[str, Any]:
        return {
            "id": key.id,
            "name": key.name,
            "key_prefix": key.key_prefix,
            "scopes": list(key.scopes),
            "status": key.status_at(utcnow()),
            "created_by": key.created_by,
            "created_at": isoformat(key.created_at),
            "last_used_at": isoformat(key.last_used_at),
            "last_used_ip": key.last_used_ip,
            "expires_at": isoformat(key.expires_at),
            "revoked_at": isoformat(key.revoked_at),
            "rate_limit_per_minute": key.rate_limit_per_minute,
            "bound_user_id": key.bound_user_id,
            "source_scope": key.source_scope,
            "access_policy_ids": key.access_policy_ids,
            "ip_allowlist": key.ip_allowlist,
            "parent_key_id": key.parent_key_id,
            "rotated_from": key.rotated_from_key_id,
            "rotated_to": key.rotated_to_key_id,
            "rotated_at": isoformat(key.rotated_at),
        }

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(**cls.fields_of(key))


class KeyCreated(KeyOut):
    secret: str  # the full key, shown this once

    @classmethod
    def of_created(cls, key: ApiKey, secret: str) -> KeyCreated:
        return cls(**cls.fields_of(key), secret=secret)


class KeyRotated(KeyCreated):
    """The replacement (its secret this once) and what became of the key it replaced."""

    replaced_key: KeyOut


class KeyRevoked(BaseModel):
    id: str
    status: str
    deleted: bool
