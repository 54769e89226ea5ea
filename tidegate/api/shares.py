"""/projects/{id}/shares and /dashboards/{id}/shares (contract §15): who else may open it.

Only its owner (creator or admin) shares it, view or edit, with an active user of the
organization. Sharing never shares rows: each reader sees their own.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.analysis import sharing
from tidegate.api.deps import DB, require
from tidegate.api.inputs import InputRoute, Text
from tidegate.catalog.analysis import RESOURCE_DASHBOARD, RESOURCE_PROJECT
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.http import request_context
from tidegate.wire.common import DataList
from tidegate.wire.shares import ResourceShareOut
from tidegate.wire.sources import ShareRevoked

router = APIRouter(tags=["sharing"], route_class=InputRoute)
READ = require(Scope.PERMISSIONS_READ)
WRITE = require(Scope.PERMISSIONS_WRITE)


class ShareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = Field(min_length=1, max_length=200, description="A user id or external id.")
    permission: str = Field("view", description="view or edit.")


def _list(session: Session, principal: Principal, kind: str, resource_id: str) -> DataList[ResourceShareOut]:
    return DataList[ResourceShareOut](
        data=[ResourceShareOut.of(s) for s in sharing.list_shares(session, principal, kind, resource_id)]
    )


def _share(
    session: Session, principal: Principal, kind: str, resource_id: str, body: ShareBody, request: Request
) -> ResourceShareOut:
    grant = sharing.share(
        session, principal, kind, resource_id, body.user_id, body.permission, context=request_context(request)
    )
    return ResourceShareOut.of(grant)


def _unshare(
    session: Session, principal: Principal, kind: str, resource_id: str, user_id: str, request: Request
) -> ShareRevoked:
    removed = sharing.unshare(session, principal, kind, resource_id, user_id, context=request_context(request))
    return ShareRevoked(user_id=user_id, resource_type=kind, resource_id=resource_id, revoked=removed, deleted=removed)


@router.get("/projects/{project_id}/shares", response_model=DataList[ResourceShareOut])
def list_project_shares(project_id: str, principal: Principal = READ, session: Session = DB):
    return _list(session, principal, RESOURCE_PROJECT, project_id)


@router.post("/projects/{project_id}/shares", response_model=ResourceShareOut)
def share_project(
    project_id: str, body: ShareBody, request: Request, principal: Principal = WRITE, session: Session = DB
):
    return _share(session, principal, RESOURCE_PROJECT, project_id, body, request)


@router.delete("/projects/{project_id}/shares/{user_id}", response_model=ShareRevoked)
def unshare_project(
    project_id: str, user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB
):
    return _unshare(session, principal, RESOURCE_PROJECT, project_id, user_id, request)


@router.get("/dashboards/{dashboard_id}/shares", response_model=DataList[ResourceShareOut])
def list_dashboard_shares(dashboard_id: str, principal: Principal = READ, session: Session = DB):
    return _list(session, principal, RESOURCE_DASHBOARD, dashboard_id)


@router.post("/dashboards/{dashboard_id}/shares", response_model=ResourceShareOut)
def share_dashboard(
    dashboard_id: str, body: ShareBody, request: Request, principal: Principal = WRITE, session: Session = DB
):
    return _share(session, principal, RESOURCE_DASHBOARD, dashboard_id, body, request)


@router.delete("/dashboards/{dashboard_id}/shares/{user_id}", response_model=ShareRevoked)
def unshare_dashboard(
    dashboard_id: str, user_id: str, request: Request, principal: Principal = WRITE, session: Session = DB
):
    return _unshare(session, principal, RESOURCE_DASHBOARD, dashboard_id, user_id, request)
