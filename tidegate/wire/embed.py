"""Embed sessions: the token only in the response that creates (or refreshes) it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.credentials.embed_sessions import CreatedSession
from tidegate.credentials.models import EmbedSession
from tidegate.db.base import isoformat


class EmbedSessionCreated(BaseModel):
    """POST /embed/sessions and /embed/sessions/refresh: the SDK's EmbedSession."""

    session_token: str
    expires_in: int
    user_id: str
    id: str  # tidegate extension: the session's id (DELETE accepts it)
    origin: str | None

    @classmethod
    def of(cls, created: CreatedSession) -> EmbedSessionCreated:
        return cls(
            session_token=created.token,
            expires_in=created.expires_in,
            user_id=created.session.user_id,
            id=created.session.id,
            origin=created.session.origin,
        )


class EmbedSessionOut(BaseModel):
    """A listed session: `session_token` is its prefix, never the secret (DELETE accepts it)."""

    session_token: str
    id: str
    user_id: str
    origin: str | None
    created_at: str | None
    expires_at: str | None
    auth_method: str  # how the session was made
    created_by_key_id: str

    @classmethod
    def of(cls, row: EmbedSession) -> EmbedSessionOut:
        return cls(
            session_token=row.token_prefix,
            id=row.id,
            user_id=row.user_id,
            origin=row.origin,
            created_at=isoformat(row.created_at),
            expires_at=isoformat(row.expires_at),
            auth_method="api_key",
            created_by_key_id=row.created_by_key_id,
        )


class EmbedSessionList(BaseModel):
    data: list[EmbedSessionOut]
    has_more: bool
    next_cursor: str | None = None  # the server offers no cursor (as the SDK expects)


class EmbedSessionRevoked(BaseModel):
    id: str
    session_id: str
    revoked: bool


class EmbedUiConfig(BaseModel):
    """GET /api/embed/ui-config: the embed's look as configured (unknown org: empty groups)."""

    chrome: dict[str, Any]
    theme: dict[str, Any]
    privacy: dict[str, Any]
