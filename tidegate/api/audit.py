"""/audit/events, /audit/export (the verifiable chain, NDJSON), /audit/public-key."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require
from tidegate.api.inputs import InputRoute
from tidegate.api.pagination import AfterQuery
from tidegate.audit.chainer import chain_now
from tidegate.audit.export import export_lines
from tidegate.audit.query import list_events, parse_bound
from tidegate.audit.record import record
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest
from tidegate.http import request_context
from tidegate.wire.audit import AuditPublicKeyOut, EventOut
from tidegate.wire.common import Page

router = APIRouter(tags=["audit"], route_class=InputRoute)


@router.get("/audit/events", response_model=Page[EventOut])
def audit_events(
    request: Request,
    principal: Principal = require(Scope.AUDIT_READ),
    session: Session = DB,
    limit: int = Query(50, ge=1, le=100),
    after: str | None = AfterQuery,
    actor_id: str | None = Query(None, max_length=100),
    key_id: str | None = Query(None, max_length=100),
    action: str | None = Query(None, max_length=100),
    target_id: str | None = Query(None, max_length=200),
    start_date: str | None = Query(None, max_length=40, description="Alias: since"),
    end_date: str | None = Query(None, max_length=40, description="Alias: until"),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
):
    # Ship this process's journal first, so a caller sees its own earlier requests.
    request.app.state.journal.flush()
    rows = list_events(
        session,
        principal.org_id,
        limit=limit,
        after=after,
        actor_id=actor_id,
        key_id=key_id,
        action=action,
        target_id=target_id,
        since=parse_bound(since or start_date, "since", end=False),
        until=parse_bound(until or end_date, "until", end=True),
    )
    return Page[EventOut].of(rows, limit, EventOut.of)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON: header, events, checkpoints, seal"}
    },
)
def audit_export(
    request: Request,
    principal: Principal = require(Scope.AUDIT_READ),
    session: Session = DB,
    format: str = Query("ndjson", max_length=20, description="Only ndjson"),
    start_date: str | None = Query(None, max_length=40),
    end_date: str | None = Query(None, max_length=40),
):
    """The organization's audit chain, verifiable offline (`tidegate audit verify --file`)."""
    if format != "ndjson":
        raise InvalidRequest("invalid_format", f"format must be ndjson, got {format!r}.")
    since = parse_bound(start_date, "start_date", end=False)
    until = parse_bound(end_date, "end_date", end=True)
    settings = request.app.state.settings
    # The caller's own latest requests, and admin changes just committed, belong in the export.
    request.app.state.journal.flush()
    chain_now(settings.database_url, principal.org_id)
    record(
        session,
        principal,
        "audit.exported",
        org_id=principal.org_id,
        target_type="audit",
        details={"format": "ndjson", "start_date": start_date, "end_date": end_date, "via": "api"},
        context=request_context(request),
    )
    lines = export_lines(
        lambda: session_scope(settings.database_url), request.app.state.audit_signer, principal.org_id, since, until
    )
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="audit-{principal.org_id}-{stamp}.ndjson"'},
    )


@router.get("/audit/public-key", response_model=AuditPublicKeyOut)
def audit_public_key(request: Request, principal: Principal = require(Scope.AUDIT_READ)):
    """The Ed25519 key that verifies audit checkpoints and export seals."""
    return AuditPublicKeyOut.of(request.app.state.audit_signer.public)
