"""/audit/events."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from tidegate.api.deps import DB, require
from tidegate.api.inputs import InputRoute
from tidegate.api.pagination import AfterQuery
from tidegate.audit.query import list_events, parse_bound
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.wire.audit import EventOut
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
