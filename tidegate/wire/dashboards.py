"""Dashboards (the SDK's types/dashboard.py), their widgets, widget data and share links."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidegate.analysis.links import CreatedLink, state_of
from tidegate.analysis.widgets import WidgetPage
from tidegate.catalog.analysis import Dashboard, ShareLink, Widget
from tidegate.db.base import isoformat


class WidgetOut(BaseModel):
    """A widget (tidegate extension): draws one project step."""

    id: str
    dashboard_id: str
    title: str
    project_id: str
    step_id: str
    kind: str  # table | bar | line | number
    x: str | None
    y: str | None
    position: int
    created_at: str | None

    @classmethod
    def of(cls, widget: Widget) -> WidgetOut:
        return cls(
            id=widget.id,
            dashboard_id=widget.dashboard_id,
            title=widget.title,
            project_id=widget.project_id,
            step_id=widget.step_id,
            kind=widget.kind,
            x=widget.x,
            y=widget.y,
            position=widget.position,
            created_at=isoformat(widget.created_at),
        )


class DashboardOut(BaseModel):
    """A listed dashboard."""

    id: str
    name: str
    description: str | None
    widget_count: int
    created_by: str | None
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, dashboard: Dashboard, widget_count: int) -> DashboardOut:
        return cls(
            id=dashboard.id,
            name=dashboard.name,
            description=dashboard.description,
            widget_count=widget_count,
            created_by=dashboard.created_by,
            created_at=isoformat(dashboard.created_at),
            updated_at=isoformat(dashboard.updated_at),
        )


class DashboardFilter(BaseModel):
    column: str
    values: list[str]


class DashboardDetailOut(DashboardOut):
    """GET /dashboards/{id}: with its widgets and filters."""

    widgets: list[WidgetOut]
    filters: list[DashboardFilter]

    @classmethod
    def detail(cls, dashboard: Dashboard, widgets: list[Widget]) -> DashboardDetailOut:
        return cls(
            **DashboardOut.of(dashboard, len(widgets)).model_dump(),
            widgets=[WidgetOut.of(w) for w in widgets],
            filters=[DashboardFilter(**f) for f in dashboard.filters or []],
        )


class DashboardUpdated(BaseModel):
    id: str
    updated: bool


class RefreshStarted(BaseModel):
    id: str
    status: str  # refreshing
    project_count: int


class RefreshStatusOut(BaseModel):
    id: str
    status: str  # idle | refreshing
    project_count: int


class WidgetErrorOut(BaseModel):
    code: str
    message: str


class WidgetDataOut(BaseModel):
    """A page of a widget's rows, as the READER may see them, narrowed by the dashboard's
    filters; or, with `error`, why there are none (a deleted project or step, a failed step)."""

    widget_id: str
    dashboard_id: str
    kind: str
    title: str
    x: str | None
    y: str | None
    data: list[dict[str, Any]]
    total_rows: int
    page: int
    page_size: int
    columns: list[str]
    error: WidgetErrorOut | None

    @classmethod
    def of(cls, widget: Widget, result: WidgetPage, page: int, page_size: int) -> WidgetDataOut:
        return cls(
            widget_id=widget.id,
            dashboard_id=widget.dashboard_id,
            kind=widget.kind,
            title=widget.title,
            x=widget.x,
            y=widget.y,
            data=result.rows,
            total_rows=result.total,
            page=page,
            page_size=page_size,
            columns=result.columns,
            error=WidgetErrorOut(code=result.error.code, message=result.error.message) if result.error else None,
        )


class LinkOut(BaseModel):
    """A share link as listed: its display prefix, never its token."""

    id: str
    dashboard_id: str
    token_prefix: str
    public: bool
    policy_ids: list[str]
    status: str  # active | revoked | expired
    created_by: str
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, link: ShareLink) -> LinkOut:
        return cls(
            id=link.id,
            dashboard_id=link.dashboard_id,
            token_prefix=link.token_prefix,
            public=link.public,
            policy_ids=list(link.policy_ids or []),
            status=state_of(link),
            created_by=link.created_by,
            created_at=isoformat(link.created_at),
            expires_at=isoformat(link.expires_at),
            revoked_at=isoformat(link.revoked_at),
        )


class LinkCreated(LinkOut):
    """POST /dashboards/{id}/links: the token and URL, shown this once."""

    token: str
    url: str

    @classmethod
    def created(cls, created: CreatedLink, base_url: str) -> LinkCreated:
        return cls(
            **LinkOut.of(created.link).model_dump(),
            token=created.token,
            url=base_url.rstrip("/") + "/links/" + created.token,
        )


class LinkRevoked(BaseModel):
    id: str
    dashboard_id: str
    revoked: bool
