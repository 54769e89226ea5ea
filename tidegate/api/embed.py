"""/embed/sessions: create, refresh, list, revoke; and the public /api/embed/ui-config."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access import ratelimit
from tidegate.api.deps import DB, client_ip, in_session, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.credentials import embed_sessions as service
from tidegate.errors import RateLimited
from tidegate.http import request_context
from tidegate.orgs.embeds import MAX_ORIGIN_LENGTH, public_ui_config
from tidegate.wire.embed import (
    EmbedSessionCreated,
    EmbedSessionList,
    EmbedSessionOut,
    EmbedSessionRevoked,
    EmbedUiConfig,
)

router = APIRouter(tags=["embed"], route_class=InputRoute)
public_router = APIRouter(tags=["embed"], route_class=InputRoute)
CREATE = require(Scope.EMBED_SESSION_CREATE)
UI_CONFIG_PER_IP_PER_MINUTE = 120


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = Field(min_length=1, max_length=200, description="A tidegate user id or an external id")
    ttl: int | None = Field(None, description="Seconds (900-86400, default 3600; clamped)")
    origin: Text | None = Field(None, max_length=MAX_ORIGIN_LENGTH)


class SessionRefresh(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_token: Text = Field(min_length=1, max_length=200)


def _created(request: Request, created: service.CreatedSession, status_code: int) -> JSON:
    set_audit_target(request, "embed_session", created.session.id, user_id=created.session.user_id)
    # The only responses that carry the token; keep them out of every cache.
    return JSON(
        EmbedSessionCreated.of(created).model_dump(), status_code=status_code, headers={"Cache-Control": "no-store"}
    )


@router.post("/embed/sessions", status_code=201, response_model=EmbedSessionCreated)
def create_session(body: SessionCreate, request: Request, principal: Principal = CREATE, session: Session = DB):
    created = service.create_session(
        session,
        settings_of(request).pepper,
        principal,
        body.user_id,
        ttl=body.ttl,
        origin=body.origin,
        context=request_context(request),
    )
    return _created(request, created, 201)


@router.post("/embed/sessions/refresh", response_model=EmbedSessionCreated)
def refresh_session(body: SessionRefresh, request: Request, principal: Principal = CREATE, session: Session = DB):
    created = service.refresh_session(
        session, settings_of(request).pepper, principal, body.session_token, context=request_context(request)
    )
    return _created(request, created, 200)


@router.get("/embed/sessions", response_model=EmbedSessionList)
def list_sessions(
    principal: Principal = CREATE,
    session: Session = DB,
    limit: int = Query(100, ge=1, description="Sessions to return (clamped to 200); no cursor"),
):
    rows, has_more = service.list_sessions(session, principal.org_id, limit=min(limit, service.MAX_LIST_LIMIT))
    return EmbedSessionList(data=[EmbedSessionOut.of(r) for r in rows], has_more=has_more)


@router.delete("/embed/sessions/{session_ref}", response_model=EmbedSessionRevoked)
def revoke_session(session_ref: str, request: Request, principal: Principal = CREATE, session: Session = DB):
    """`session_ref`: the token, the session's id, or the prefix a listing shows."""
    # The path may hold the token: the middleware redacts it; the event names the session's id.
    row = service.find_session(session, settings_of(request).pepper, principal.org_id, session_ref)
    set_audit_target(request, "embed_session", row.id, user_id=row.user_id)
    service.revoke_session(session, principal, row, context=request_context(request))
    return EmbedSessionRevoked(id=row.id, session_id=row.id, revoked=True)


@public_router.get("/api/embed/ui-config", response_model=EmbedUiConfig)
async def ui_config(request: Request, org: str = Query("", max_length=200, description="Organization id")):
    """Public, unauthenticated, rate limited per client IP."""
    settings = settings_of(request)
    limits = (settings.redis_url, "embed-ui-config:" + (client_ip(request) or "-"), UI_CONFIG_PER_IP_PER_MINUTE)
    try:
        await ratelimit.enforce_async(*limits)
    except RateLimited as exc:
        raise RateLimited(
            "rate_limit_exceeded",
            f"The embed UI config is limited to {UI_CONFIG_PER_IP_PER_MINUTE} requests per minute per address.",
            headers=exc.headers,
        ) from None
    config = await in_session(request, public_ui_config, org)
    return EmbedUiConfig(**config)
