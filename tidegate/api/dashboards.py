"""/dashboards (contract §14), their widgets and widget data (tidegate extensions), and their
share links (issue 11 §3). Dashboard shares (/dashboards/{id}/shares) live in api.shares.

Every widget's rows are computed under the CALLER's access (analysis.widgets), never the
dashboard author's, and audited like a source data read.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.authorize import authorize
from tidegate.analysis import dashboards, links, widgets
from tidegate.api.deps import DB, in_session, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery, LimitQuery
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.db.engine import session_scope
from tidegate.http import request_context
from tidegate.wire.common import DataList, Deleted, Page
from tidegate.wire.dashboards import (
    DashboardDetailOut,
    DashboardFilter,
    DashboardOut,
    DashboardUpdated,
    LinkCreated,
    LinkOut,
    LinkRevoked,
    RefreshStarted,
    RefreshStatusOut,
    WidgetDataOut,
    WidgetOut,
)

log = logging.getLogger("tidegate")
router = APIRouter(tags=["dashboards"], route_class=InputRoute)
READ = require(Scope.DASHBOARDS_READ)
WRITE = require(Scope.DASHBOARDS_WRITE)

# Refreshes running in this process (a reference keeps each task alive until it ends).
_refreshes: set[asyncio.Task] = set()


class DashboardCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    description: Text | None = Field(None, max_length=1000)


class DashboardUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=200)
    description: Text | None = Field(None, max_length=1000)
    filters: list[DashboardFilter] | None = Field(
        None, description="[{column, values: [str]}]: narrow every widget (AND); [] removes them."
    )


class WidgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Text = Field(min_length=1, max_length=200)
    project_id: Text = Field(max_length=100)
    step_id: Text = Field(max_length=100)
    kind: Text = Field(description="table | bar | line | number")
    x: Text | None = Field(None, max_length=255, description="Column for the x axis (bar, line).")
    y: Text | None = Field(None, max_length=255, description="Column for the values (bar, line, number).")


class WidgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Text | None = Field(None, min_length=1, max_length=200)
    project_id: Text | None = Field(None, max_length=100)
    step_id: Text | None = Field(None, max_length=100)
    kind: Text | None = None
    x: Text | None = Field(None, max_length=255)
    y: Text | None = Field(None, max_length=255)
    position: int | None = Field(None, ge=0, le=10_000)


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_days: int | None = Field(None, ge=1, le=links.MAX_EXPIRY_DAYS, description="Default 30.")
    public: bool = Field(False, description="Opens without signing in (only if the organization allows it).")
    policy_ids: list[Text] | None = Field(
        None, max_length=links.MAX_POLICIES, description="Public links: the policies whose access it renders with."
    )


def _detail(session: Session, dashboard) -> DashboardDetailOut:
    return DashboardDetailOut.detail(dashboard, dashboards.widgets_of(session, dashboard.id))


@router.get("/dashboards", response_model=Page[DashboardOut])
def list_dashboards(
    principal: Principal = READ,
    session: Session = DB,
    limit: int = LimitQuery,
    after: str | None = AfterQuery,
    user_id: str | None = Query(None, max_length=200, description="Only dashboards this user may open too."),
):
    rows = dashboards.list_dashboards(session, principal, limit=limit, after=after, user_id=user_id)
    counts = dashboards.widget_counts(session, [d.id for d in rows])
    return Page[DashboardOut].of(rows, limit, lambda d: DashboardOut.of(d, counts.get(d.id, 0)))


@router.post("/dashboards", response_model=DashboardDetailOut)
def create_dashboard(body: DashboardCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    dashboard = dashboards.create_dashboard(
        session, principal, name=body.name, description=body.description, context=request_context(request)
    )
    set_audit_target(request, "dashboard", dashboard.id)
    return _detail(session, dashboard)


@router.get("/dashboards/{dashboard_id}", response_model=DashboardDetailOut)
def get_dashboard(dashboard_id: str, principal: Principal = READ, session: Session = DB):
    return _detail(session, dashboards.get_dashboard(session, principal, dashboard_id))


@router.patch("/dashboards/{dashboard_id}", response_model=DashboardUpdated)
def update_dashboard(
    dashboard_id: str, body: DashboardUpdate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if changes.get("name", "") is None:
        del changes["name"]  # (null: unchanged)
    if "filters" in changes:
        changes["filters"] = [f.model_dump() for f in changes["filters"] or []]
    dashboards.update_dashboard(session, principal, dashboard_id, changes=changes, context=request_context(request))
    return DashboardUpdated(id=dashboard_id, updated=True)


@router.delete("/dashboards/{dashboard_id}", response_model=Deleted)
def delete_dashboard(dashboard_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    dashboards.delete_dashboard(session, principal, dashboard_id, context=request_context(request))
    return Deleted(id=dashboard_id, deleted=True)


# -- refresh --------------------------------------------------------------------------------


@router.post("/dashboards/{dashboard_id}/refresh", response_model=RefreshStarted)
async def refresh(dashboard_id: str, request: Request, principal: Principal = WRITE):
    """Evaluates every widget's step under the caller's access, in the background (warming
    the engine's cache for the caller); GET .../refresh/status says when it is done."""

    def start(session: Session):
        dashboard, widget_rows = dashboards.start_refresh(session, principal, dashboard_id)
        filters = widgets.filters_of(dashboard.filters)
        return [widgets.target_of(session, principal, w, filters) for w in widget_rows]

    targets = await in_session(request, start)
    settings = settings_of(request)
    task = asyncio.create_task(_refresh(settings, principal, dashboard_id, targets))
    _refreshes.add(task)
    task.add_done_callback(_refreshes.discard)
    return RefreshStarted(id=dashboard_id, status="refreshing", project_count=len({t.project_id for t in targets}))


async def _refresh(settings, principal: Principal, dashboard_id: str, targets: list[widgets.WidgetTarget]) -> None:
    try:
        for target in targets:
            try:
                await widgets.run(settings.query_limits, principal, target)
            except Exception as exc:  # noqa: BLE001  (one widget's failure does not stop the others)
                log.info("dashboard %s refresh: widget %s: %s", dashboard_id, target.widget_id, exc)
    finally:

        def finish():
            with session_scope(settings.database_url) as session:
                dashboards.finish_refresh(session, dashboard_id)

        await asyncio.to_thread(finish)


@router.get("/dashboards/{dashboard_id}/refresh/status", response_model=RefreshStatusOut)
def refresh_status(dashboard_id: str, principal: Principal = READ, session: Session = DB):
    dashboard = dashboards.get_dashboard(session, principal, dashboard_id)
    return RefreshStatusOut(
        id=dashboard.id,
        status=dashboards.refresh_status(dashboard),
        project_count=dashboards.project_count(session, dashboard.id),
    )


# -- widgets --------------------------------------------------------------------------------


@router.post("/dashboards/{dashboard_id}/widgets", response_model=WidgetOut)
def add_widget(
    dashboard_id: str, body: WidgetCreate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    """Adds a widget drawing one project step (tidegate extension). The caller must be able
    to open the project."""
    widget = dashboards.add_widget(
        session,
        principal,
        dashboard_id,
        title=body.title,
        project_id=body.project_id,
        step_id=body.step_id,
        kind=body.kind,
        x=body.x,
        y=body.y,
        context=request_context(request),
    )
    return WidgetOut.of(widget)


@router.patch("/dashboards/{dashboard_id}/widgets/{widget_id}", response_model=WidgetOut)
def update_widget(
    dashboard_id: str,
    widget_id: str,
    body: WidgetUpdate,
    request: Request,
    principal: Principal = WRITE,
    session: Session = DB,
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    for required in ("title", "project_id", "step_id", "kind", "position"):
        if required in changes and changes[required] is None:
            del changes[required]  # (null: unchanged)
    widget = dashboards.update_widget(
        session, principal, dashboard_id, widget_id, changes=changes, context=request_context(request)
    )
    return WidgetOut.of(widget)


@router.delete("/dashboards/{dashboard_id}/widgets/{widget_id}", response_model=Deleted)
def delete_widget(
    dashboard_id: str, widget_id: str, request: Request, principal: Principal = WRITE, session: Session = DB
):
    dashboards.delete_widget(session, principal, dashboard_id, widget_id, context=request_context(request))
    return Deleted(id=widget_id, deleted=True)


@router.get("/dashboards/{dashboard_id}/widgets/{widget_id}/data", response_model=WidgetDataOut)
async def widget_data(
    dashboard_id: str,
    widget_id: str,
    request: Request,
    principal: Principal = READ,
    page: int = Query(1, ge=1, le=1_000_000),
    page_size: int = Query(100, ge=1, le=10_000),
):
    """A page of the widget's rows as the CALLER may see them (their policies, never the
    author's), narrowed by the dashboard's filters. A deleted project or step, or a failed
    step, answers 200 with `error`. Needs data:read too: these are rows."""
    authorize(principal, Scope.DATA_READ)

    def load(session: Session):
        dashboard, widget = dashboards.open_widget(session, principal, dashboard_id, widget_id)
        target = widgets.target_of(session, principal, widget, widgets.filters_of(dashboard.filters))
        session.expunge(widget)  # (read after the session closed: plain attributes only)
        return widget, target

    widget, target = await in_session(request, load)
    result = await widgets.run(settings_of(request).query_limits, principal, target)
    rendered = widgets.page(result, page, page_size)
    set_audit_target(
        request,
        "widget",
        widget.id,
        dashboard_id=dashboard_id,
        project_id=target.project_id,
        step_id=target.step_id,
        source_ids=target.source_ids,
        policy_ids=target.policy_ids,
        rows_returned=len(rendered.rows),
        page=page,
        page_size=page_size,
        **({"error": rendered.error.code} if rendered.error else {}),
    )
    request.scope["state"]["audit_action"] = "data.read"
    return WidgetDataOut.of(widget, rendered, page, page_size)


# -- share links ----------------------------------------------------------------------------


@router.post("/dashboards/{dashboard_id}/links", response_model=LinkCreated)
def create_link(
    dashboard_id: str,
    body: LinkCreate,
    request: Request,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    """A share link (tidegate extension); its token is in this response only."""
    created = links.create_link(
        session,
        principal,
        settings_of(request).pepper,
        dashboard_id,
        expires_in_days=body.expires_in_days,
        public=body.public,
        policy_ids=body.policy_ids,
        context=request_context(request),
    )
    return LinkCreated.created(created, str(request.base_url))


@router.get("/dashboards/{dashboard_id}/links", response_model=DataList[LinkOut])
def list_links(dashboard_id: str, principal: Principal = require(Scope.PERMISSIONS_READ), session: Session = DB):
    return DataList[LinkOut](data=[LinkOut.of(link) for link in links.list_links(session, principal, dashboard_id)])


@router.delete("/dashboards/{dashboard_id}/links/{link_id}", response_model=LinkRevoked)
def revoke_link(
    dashboard_id: str,
    link_id: str,
    request: Request,
    principal: Principal = require(Scope.PERMISSIONS_WRITE),
    session: Session = DB,
):
    links.revoke_link(session, principal, dashboard_id, link_id, context=request_context(request))
    return LinkRevoked(id=link_id, dashboard_id=dashboard_id, revoked=True)
