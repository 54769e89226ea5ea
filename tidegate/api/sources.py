"""/sources (and the /data/sources aliases), /data/query, /connectors, source shares."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.principal import AnyOf, Principal
from tidegate.access.scopes import Scope
from tidegate.access.sources import SourceAccess, open_source
from tidegate.api.deps import DB, authenticated, request_context, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery, cursor_page
from tidegate.data import connectors
from tidegate.data import service as sources

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


def write_result(access: SourceAccess, added: int) -> dict:
    view = sources.source_view(access)
    return {
        "id": view["id"],
        "name": view["name"],
        "columns": view["columns"],
        "row_count": view["row_count"],
        "updated_at": view["updated_at"],
        "source_id": view["id"],
        "rows_affected": added,
    }


@router.get("/connectors")
def list_connectors(
    principal: Principal = require(Scope.SOURCES_READ), limit: int = LimitQuery, after: str | None = AfterQuery
):
    items = [c for c in connectors.list_connectors() if not after or c["id"] > after]
    return cursor_page(items, limit, lambda c: c, cursor_of=lambda c: c["id"])


@router.get("/sources")
@router.get("/data/sources")
def list_sources(
    principal: Principal = SOURCE_READ, session: Session = DB, limit: int = LimitQuery, after: str | None = AfterQuery
):
    rows = sources.list_sources(session, principal, limit=limit, after=after)
    return cursor_page(rows, limit, lambda s: sources.source_view(open_source(session, principal, s.id)))


@router.post("/sources", status_code=201)
@router.post("/data/sources", status_code=201)
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
    return sources.source_view(open_source(session, principal, source.id))


@router.get("/sources/{source_id}")
@router.get("/data/sources/{source_id}")
def get_source(source_id: str, principal: Principal = SOURCE_READ, session: Session = DB):
    return sources.source_view(open_source(session, principal, source_id))


@router.patch("/sources/{source_id}")
def update_source(
    source_id: str, body: SourceUpdate, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    sources.update_source(
        session, principal, source_id, changes=changes, settings=settings_of(request), context=request_context(request)
    )
    return {"id": source_id, "updated": True}


@router.delete("/sources/{source_id}")
@router.delete("/data/sources/{source_id}")
def delete_source(source_id: str, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB):
    sources.delete_source(session, principal, source_id, context=request_context(request))
    return {"id": source_id, "deleted": True}


@router.post("/sources/{source_id}/sync")
def sync_source(source_id: str, request: Request, principal: Principal = AUTHENTICATED, session: Session = DB):
    sources.sync_source(session, principal, source_id, settings_of(request), context=request_context(request))
    return {"id": source_id, "status": "synced"}


@router.post("/sources/{source_id}/rows")
@router.post("/data/sources/{source_id}/rows")
def append_rows(source_id: str, body: Rows, request: Request, principal: Principal = DATA_WRITE, session: Session = DB):
    access = sources.write_rows(
        session, principal, source_id, body.rows, replace=False, context=request_context(request)
    )
    return write_result(access, len(body.rows))


@router.put("/sources/{source_id}/data")
@router.put("/data/sources/{source_id}/data")
def replace_data(
    source_id: str, body: Rows, request: Request, principal: Principal = DATA_WRITE, session: Session = DB
):
    access = sources.write_rows(
        session, principal, source_id, body.rows, replace=True, context=request_context(request)
    )
    return write_result(access, len(body.rows))


# -- sharing -------------------------------------------------------------------------------


@router.get("/sources/{source_id}/shares")
def list_shares(source_id: str, principal: Principal = require(Scope.PERMISSIONS_READ), session: Session = DB):
    return {"data": [sources.share_view(s, source_id) for s in sources.list_shares(session, principal, source_id)]}


@router.post("/sources/{source_id}/shares")
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
    return sources.share_view(grant, source_id)


@router.delete("/sources/{source_id}/shares/{user_id}")
def unshare(
    source_id: str,
    user_id: str,
    request: Request,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    removed = sources.unshare_source(session, principal, source_id, user_id, context=request_context(request))
    return {
        "user_id": user_id,
        "resource_type": "source",
        "resource_id": source_id,
        "revoked": removed,
        "deleted": removed,
    }


@router.post("/sources/{source_id}/org-share")
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
    return {
        "source_id": source_id,
        "enabled": enabled,
        "org_shared": enabled,
        "permission": source.org_share_permission or body.permission,
    }
