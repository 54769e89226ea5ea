"""/sources (and the /data/sources aliases), /data/query, /connectors, source shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.authorize import AnyOf
from tidegate.access.sources import SourceAccess, open_source
from tidegate.api.deps import DB, authenticated, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.data import connectors, engine
from tidegate.data import service as sources
from tidegate.http import request_context
from tidegate.wire.common import DataList, Deleted, Page
from tidegate.wire.sources import (
    ConnectorOut,
    OrgShareOut,
    ShareOut,
    ShareRevoked,
    SourceOut,
    SourceSynced,
    SourceUpdated,
    SourceWritten,
)

router = APIRouter(tags=["sources"], route_class=InputRoute)
AUTHENTICATED = Depends(authenticated)

SOURCE_READ = require(AnyOf(Scope.SOURCES_READ, Scope.DATA_READ))
DATA_WRITE = require(Scope.DATA_WRITE)


class SourceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(max_length=200)
    description: Text | None = Field(None, max_length=2000)
    rows: list[dict[str, Any]] | None = None
    file_id: Text | None = Field(None, max_length=100)
    connector_id: Text | None = Field(None, max_length=100)
    config: dict[str, Any] | None = None


class SourceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, max_length=200)
    description: Text | None = Field(None, max_length=2000)
    config: dict[str, Any] | None = None


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]]


class Share(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = Field(max_length=200)
    permission: str = "view"


class OrgShare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    permission: str = "view"


def source_out(access: SourceAccess) -> SourceOut:
    """A source as this caller sees it: counts are of the rows the caller may read."""
    if not access.version:
        return SourceOut.of(access, row_count=0)
    rows = engine.count_if_reachable(access)
    if rows is None:  # a live source whose database does not answer now: shown, marked
        return SourceOut.of(access, row_count=0, status="unavailable")
    return SourceOut.of(access, row_count=rows)


@router.get("/connectors", response_model=Page[ConnectorOut])
def list_connectors(
    principal: Principal = require(Scope.SOURCES_READ), limit: int = LimitQuery, after: str | None = AfterQuery
):
    items = [c for c in connectors.list_connectors() if not after or c["id"] > after]
    return Page[ConnectorOut].of(items, limit, ConnectorOut.model_validate, cursor_of=lambda c: c["id"])


@router.get("/sources", response_model=Page[SourceOut])
@router.get("/data/sources", response_model=Page[SourceOut])
def list_sources(
    principal: Principal = SOURCE_READ, session: Session = DB, limit: int = LimitQuery, after: str | None = AfterQuery
):
    rows = sources.list_sources(session, principal, limit=limit, after=after)
    return Page[SourceOut].of(rows, limit, lambda s: source_out(open_source(session, principal, s.id)))


@router.post("/sources", status_code=201, response_model=SourceOut)
@router.post("/data/sources", status_code=201, response_model=SourceOut)
def create_source(body: SourceCreate, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB):
    source = sources.create_source(
        session,
        principal,
        settings_of(request),
        name=body.name,
        description=body.description,
        rows=body.rows,
        file_id=body.file_id,
        connector_id=body.connector_id,
        config=body.config,
        context=request_context(request),
    )
    set_audit_target(request, "source", source.id)
    return source_out(open_source(session, principal, source.id))


@router.get("/sources/{source_id}", response_model=SourceOut)
@router.get("/data/sources/{source_id}", response_model=SourceOut)
def get_source(source_id: str, principal: Principal = SOURCE_READ, session: Session = DB):
    return source_out(open_source(session, principal, source_id))


@router.patch("/sources/{source_id}", response_model=SourceUpdated)
def update_source(
    source_id: str, body: SourceUpdate, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    sources.update_source(
        session, principal, source_id, changes=changes, settings=settings_of(request), context=request_context(request)
    )
    return SourceUpdated(id=source_id, updated=True)


@router.delete("/sources/{source_id}", response_model=Deleted)
@router.delete("/data/sources/{source_id}", response_model=Deleted)
def delete_source(source_id: str, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB):
    sources.delete_source(session, principal, source_id, context=request_context(request))
    return Deleted(id=source_id, deleted=True)


@router.post("/sources/{source_id}/sync", response_model=SourceSynced)
def sync_source(source_id: str, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB):
    sources.sync_source(session, principal, source_id, settings_of(request), context=request_context(request))
    return SourceSynced(id=source_id, status="synced")


@router.post("/sources/{source_id}/rows", response_model=SourceWritten)
@router.post("/data/sources/{source_id}/rows", response_model=SourceWritten)
def append_rows(source_id: str, body: Rows, request: Request, principal: Principal = DATA_WRITE, session: Session = DB):
    access = sources.write_rows(
        session, principal, source_id, body.rows, replace=False, context=request_context(request)
    )
    return SourceWritten.of(source_out(access), len(body.rows))


@router.put("/sources/{source_id}/data", response_model=SourceWritten)
@router.put("/data/sources/{source_id}/data", response_model=SourceWritten)
def replace_data(
    source_id: str, body: Rows, request: Request, principal: Principal = DATA_WRITE, session: Session = DB
):
    access = sources.write_rows(
        session, principal, source_id, body.rows, replace=True, context=request_context(request)
    )
    return SourceWritten.of(source_out(access), len(body.rows))


# -- sharing -------------------------------------------------------------------------------


@router.get("/sources/{source_id}/shares", response_model=DataList[ShareOut])
def list_shares(source_id: str, principal: Principal = require(Scope.PERMISSIONS_READ), session: Session = DB):
    return DataList[ShareOut](
        data=[ShareOut.of(s, source_id) for s in sources.list_shares(session, principal, source_id)]
    )


@router.post("/sources/{source_id}/shares", response_model=ShareOut)
def share(
    source_id: str,
    body: Share,
    request: Request,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    grant = sources.share_source(
        session, principal, source_id, body.user_id, body.permission, context=request_context(request)
    )
    return ShareOut.of(grant, source_id)


@router.delete("/sources/{source_id}/shares/{user_id}", response_model=ShareRevoked)
def unshare(
    source_id: str,
    user_id: str,
    request: Request,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    removed = sources.unshare_source(session, principal, source_id, user_id, context=request_context(request))
    return ShareRevoked(
        user_id=user_id, resource_type="source", resource_id=source_id, revoked=removed, deleted=removed
    )


@router.post("/sources/{source_id}/org-share", response_model=OrgShareOut)
def org_share(
    source_id: str,
    request: Request,
    body: OrgShare | None = None,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    body = body or OrgShare()
    source = sources.org_share(
        session,
        principal,
        source_id,
        enabled=body.enabled,
        permission=body.permission,
        context=request_context(request),
    )
    enabled = source.org_share_permission is not None
    return OrgShareOut(
        source_id=source_id,
        enabled=enabled,
        org_shared=enabled,
        permission=source.org_share_permission or body.permission,
    )
