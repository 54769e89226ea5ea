"""Audit events as GET /audit/events lists them."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel

from tidegate.audit.models import AuditEvent
from tidegate.audit.signing import encode_public, key_id_of
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


class AuditPublicKeyOut(BaseModel):
    """GET /audit/public-key: the key that verifies checkpoints and export seals."""

    algorithm: str
    key_id: str
    public_key: str  # base64 of the 32 raw bytes (what `tidegate audit verify --public-key` takes)
    public_key_pem: str

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> AuditPublicKeyOut:
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(
            algorithm="Ed25519", key_id=key_id_of(key), public_key=encode_public(key), public_key_pem=pem.decode()
        )
