"""API keys: never the secret, except in the one response that creates the key."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.credentials.hygiene import DEFAULT_UNUSED_KEY_DAYS, unused_days
from tidegate.credentials.insights import Insights
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
    # Active and not used for the organization's `unused_key_days` (a tidegate extension).
    unused: bool

    @classmethod
    def fields_of(cls, key: ApiKey, unused_key_days: int = DEFAULT_UNUSED_KEY_DAYS) -> dict[str, Any]:
        now = utcnow()
        return {
            "id": key.id,
            "name": key.name,
            "key_prefix": key.key_prefix,
            "scopes": list(key.scopes),
            "status": key.status_at(now),
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
            "unused": unused_days(key, unused_key_days, now) is not None,
        }

    @classmethod
    def of(cls, key: ApiKey, unused_key_days: int = DEFAULT_UNUSED_KEY_DAYS) -> KeyOut:
        return cls(**cls.fields_of(key, unused_key_days))


class KeyCreated(KeyOut):
    secret: str  # the full key, shown this once

    @classmethod
    def of_created(cls, key: ApiKey, secret: str) -> KeyCreated:
        return cls(**cls.fields_of(key), secret=secret)  # (a new key is not unused)


class KeyRotated(KeyCreated):
    """The replacement (its secret this once) and what became of the key it replaced."""

    replaced_key: KeyOut


class KeyRevoked(BaseModel):
    id: str
    status: str
    deleted: bool


class ScopeUseOut(BaseModel):
    scope: str
    requests_30d: int
    requests_90d: int
    last_used_at: str | None


class SourceUseOut(BaseModel):
    source_id: str
    name: str | None
    requests_30d: int
    requests_90d: int
    last_used_at: str | None


class AddressUseOut(BaseModel):
    ip: str
    first_seen: str | None
    last_seen: str | None
    requests: int
    refused: int


class SuggestionOut(BaseModel):
    scopes: list[str]
    removes: list[str]
    source_scope: dict[str, Any] | None
    source_scope_changes: bool
    applicable: bool
    reason: str
    patch: dict[str, Any] | None  # the PATCH /keys/{id} body that applies it


class KeyInsightsOut(BaseModel):
    """GET /keys/{id}/insights (a tidegate extension): what the key did, and the least privilege it needs."""

    key_id: str
    generated_at: str | None
    observed_since: str | None
    requests_30d: int
    requests_90d: int
    refused_90d: int
    scopes: list[ScopeUseOut]
    sources: list[SourceUseOut]
    client_ips: list[AddressUseOut]
    suggestion: SuggestionOut

    @classmethod
    def of(cls, found: Insights) -> KeyInsightsOut:
        s = found.suggestion
        return cls(
            key_id=found.key_id,
            generated_at=isoformat(found.generated_at),
            observed_since=isoformat(found.observed_since),
            requests_30d=found.requests_30d,
            requests_90d=found.requests_90d,
            refused_90d=found.refused_90d,
            scopes=[
                ScopeUseOut(
                    scope=u.scope,
                    requests_30d=u.requests_30d,
                    requests_90d=u.requests_90d,
                    last_used_at=isoformat(u.last_used_at),
                )
                for u in found.scopes
            ],
            sources=[
                SourceUseOut(
                    source_id=u.source_id,
                    name=u.name,
                    requests_30d=u.requests_30d,
                    requests_90d=u.requests_90d,
                    last_used_at=isoformat(u.last_used_at),
                )
                for u in found.sources
            ],
            client_ips=[
                AddressUseOut(
                    ip=a.ip,
                    first_seen=isoformat(a.first_seen),
                    last_seen=isoformat(a.last_seen),
                    requests=a.requests,
                    refused=a.refused,
                )
                for a in found.addresses
            ],
            suggestion=SuggestionOut(
                scopes=s.scopes,
                removes=s.removes,
                source_scope=s.source_scope,
                source_scope_changes=s.source_scope_changes,
                applicable=s.applicable,
                reason=s.reason,
                patch=s.patch,
            ),
        )
