"""Dashboards and their widgets: who may create, change and delete them, and their filters.

A dashboard holds no rows. Each widget names a project's step; its rows are computed when
someone reads it, under THAT reader's access (tidegate.analysis.widgets), never the
author's. Filters (column = one of values) narrow every widget, in trusted code, after
the step ran.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tidegate.access.analysis import EDIT, OWNER, VIEW, open_dashboard, open_project, visible_query
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.analysis import (
    RESOURCE_DASHBOARD,
    WIDGET_KINDS,
    Dashboard,
    ResourceShare,
    ShareLink,
    Step,
    Widget,
)
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.service import get_user

MAX_FILTERS = 20
MAX_FILTER_VALUES = 1000
MAX_WIDGETS = 100
# A refresh whose process died would read "refreshing" forever: past this, it reads idle.
REFRESH_STALE_AFTER = timedelta(minutes=15)


def _record(
    session: Session,
    principal: Principal,
    action: str,
    dashboard_id: str,
    details: dict[str, Any],
    context: RequestContext | None,
) -> None:
    """Every change to a dashboard is audited, and bumps the access epoch (who may see what
    on it may have changed: its widgets, its links)."""
    record(
        session,
        principal,
        action,
        org_id=principal.org_id,
        target_type=RESOURCE_DASHBOARD,
        target_id=dashboard_id,
        details=details,
        context=context,
    )
    bump_access_epoch(session, principal.org_id)


# -- dashboards ---------------------------------------------------------------------------


def create_dashboard(
    session: Session,
    principal: Principal,
    *,
    name: str,
    description: str | None,
    context: RequestContext | None = None,
) -> Dashboard:
    now = utcnow()
    dashboard = Dashboard(
        id=new_id("dash"),
        org_id=principal.org_id,
        name=_name(name),
        description=description,
        created_by=principal.user_id,
        created_at=now,
        updated_at=now,
        filters=[],
        refresh_status="idle",
    )
    session.add(dashboard)
    session.flush()
    _record(session, principal, "dashboard.created", dashboard.id, {"name": dashboard.name}, context)
    return dashboard


def list_dashboards(
    session: Session,
    principal: Principal,
    *,
    limit: int,
    after: str | None,
    user_id: str | None = None,
    before: str | None = None,
) -> list[Dashboard]:
    """The dashboards the caller may open (and, with `user_id`, that user may open too), by
    id: after `after`, or the limit+1 just before `before`."""
    query = visible_query(session, principal, Dashboard)
    if user_id is not None:
        user = get_user(session, principal.org_id, user_id)
        theirs = visible_query(session, Principal.for_user(user.org_id, user.id, user.role), Dashboard)
        query = query.where(Dashboard.id.in_(theirs.with_only_columns(Dashboard.id)))
    if after:
        query = query.where(Dashboard.id > after)
    if before:
        earlier = query.where(Dashboard.id < before).order_by(Dashboard.id.desc()).limit(limit + 1)
        return list(reversed(session.scalars(earlier).all()))
    return list(session.scalars(query.order_by(Dashboard.id).limit(limit + 1)))


def get_dashboard(session: Session, principal: Principal, dashboard_id: str) -> Dashboard:
    return open_dashboard(session, principal, dashboard_id, need=VIEW)


def widgets_of(session: Session, dashboard_id: str) -> list[Widget]:
    return list(
        session.scalars(select(Widget).where(Widget.dashboard_id == dashboard_id).order_by(Widget.position, Widget.id))
    )


def widget_counts(session: Session, dashboard_ids: list[str]) -> dict[str, int]:
    if not dashboard_ids:
        return {}
    rows = session.execute(
        select(Widget.dashboard_id, func.count())
        .where(Widget.dashboard_id.in_(dashboard_ids))
        .group_by(Widget.dashboard_id)
    )
    return {dashboard_id: count for dashboard_id, count in rows}


def update_dashboard(
    session: Session,
    principal: Principal,
    dashboard_id: str,
    *,
    changes: dict[str, Any],
    context: RequestContext | None = None,
) -> Dashboard:
    """`changes`: any of name, description, filters. Validated first: a refused update
    changes nothing."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=EDIT)
    if "name" in changes:
        changes["name"] = _name(changes["name"])
    if "filters" in changes:
        changes["filters"] = check_filters(changes["filters"])
    changed = {k: v for k, v in changes.items() if getattr(dashboard, k) != v}
    for field, value in changed.items():
        setattr(dashboard, field, value)
    if changed:
        dashboard.updated_at = utcnow()
        _record(session, principal, "dashboard.updated", dashboard.id, {"changed": sorted(changed)}, context)
    return dashboard


def delete_dashboard(
    session: Session, principal: Principal, dashboard_id: str, *, context: RequestContext | None = None
) -> None:
    """Its owner (creator or admin) only; its widgets, shares and links go with it."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=OWNER)
    session.execute(delete(Widget).where(Widget.dashboard_id == dashboard.id))
    session.execute(delete(ShareLink).where(ShareLink.dashboard_id == dashboard.id))
    session.execute(
        delete(ResourceShare).where(
            ResourceShare.resource_type == RESOURCE_DASHBOARD, ResourceShare.resource_id == dashboard.id
        )
    )
    name = dashboard.name
    session.delete(dashboard)
    session.flush()
    _record(session, principal, "dashboard.deleted", dashboard_id, {"name": name}, context)


def _name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidRequest("invalid_name", "name must not be empty.")
    if len(name) > 200:
        raise InvalidRequest("invalid_name", "name must be at most 200 characters.")
    return name


def check_filters(filters: Any) -> list[dict[str, Any]]:
    """`[{column, values: [str, ...]}]`, or a 400 saying what is wrong. Values are strings:
    a row passes when its value, as text, is one of them."""
    if not isinstance(filters, list):
        raise InvalidRequest("invalid_filters", "filters must be a list of {column, values}.")
    if len(filters) > MAX_FILTERS:
        raise InvalidRequest("invalid_filters", f"At most {MAX_FILTERS} filters.")
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(filters):
        where = f"filters[{index}]"
        if not isinstance(item, dict) or set(item) != {"column", "values"}:
            raise InvalidRequest("invalid_filters", f"{where}: must be an object with exactly column and values.")
        column, values = item["column"], item["values"]
        if not isinstance(column, str) or not column.strip() or len(column) > 255 or "\x00" in column:
            raise InvalidRequest("invalid_filters", f"{where}.column: a column name (1-255 characters).")
        if not isinstance(values, list) or not values or len(values) > MAX_FILTER_VALUES:
            raise InvalidRequest("invalid_filters", f"{where}.values: a list of 1 to {MAX_FILTER_VALUES} strings.")
        if not all(isinstance(v, str) and len(v) <= 1000 and "\x00" not in v for v in values):
            raise InvalidRequest(
                "invalid_filters", f"{where}.values: every value must be a string (up to 1000 characters)."
            )
        if column.strip().lower() in seen:
            raise InvalidRequest(
                "invalid_filters", f"{where}: column {column!r} is filtered twice; give one list of values."
            )
        seen.add(column.strip().lower())
        checked.append({"column": column.strip(), "values": list(dict.fromkeys(values))})
    return checked


# -- widgets ------------------------------------------------------------------------------


def _check_kind(kind: str) -> str:
    if kind not in WIDGET_KINDS:
        raise InvalidRequest("invalid_widget_kind", f"kind must be one of {', '.join(WIDGET_KINDS)}; got {kind!r}.")
    return kind


def _check_step(session: Session, principal: Principal, project_id: str, step_id: str) -> None:
    """The caller must be able to open the project (view), and the step must be one of its."""
    open_project(session, principal, project_id, need=VIEW)
    step = session.get(Step, step_id)
    if step is None or step.project_id != project_id:
        raise NotFound("step_not_found", f"No step {step_id!r} in project {project_id!r}.")


def add_widget(
    session: Session,
    principal: Principal,
    dashboard_id: str,
    *,
    title: str,
    project_id: str,
    step_id: str,
    kind: str,
    x: str | None,
    y: str | None,
    context: RequestContext | None = None,
) -> Widget:
    dashboard = open_dashboard(session, principal, dashboard_id, need=EDIT)
    _check_kind(kind)
    _check_step(session, principal, project_id, step_id)
    existing = widgets_of(session, dashboard.id)
    if len(existing) >= MAX_WIDGETS:
        raise InvalidRequest("too_many_widgets", f"A dashboard holds at most {MAX_WIDGETS} widgets.")
    widget = Widget(
        id=new_id("wdg"),
        dashboard_id=dashboard.id,
        title=_title(title),
        project_id=project_id,
        step_id=step_id,
        kind=kind,
        x=x or None,
        y=y or None,
        position=max((w.position for w in existing), default=-1) + 1,
        created_at=utcnow(),
    )
    session.add(widget)
    dashboard.updated_at = utcnow()
    session.flush()
    _record(
        session,
        principal,
        "dashboard.widget_added",
        dashboard.id,
        {"widget_id": widget.id, "project_id": project_id, "step_id": step_id, "kind": kind},
        context,
    )
    return widget


def _widget(session: Session, dashboard: Dashboard, widget_id: str) -> Widget:
    widget = session.get(Widget, widget_id)
    if widget is None or widget.dashboard_id != dashboard.id:
        raise NotFound("widget_not_found", f"No widget {widget_id!r} on dashboard {dashboard.id!r}.")
    return widget


def open_widget(session: Session, principal: Principal, dashboard_id: str, widget_id: str) -> tuple[Dashboard, Widget]:
    """The dashboard (which the caller may view) and one of its widgets."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=VIEW)
    return dashboard, _widget(session, dashboard, widget_id)


def update_widget(
    session: Session,
    principal: Principal,
    dashboard_id: str,
    widget_id: str,
    *,
    changes: dict[str, Any],
    context: RequestContext | None = None,
) -> Widget:
    """`changes`: any of title, project_id, step_id, kind, x, y, position."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=EDIT)
    widget = _widget(session, dashboard, widget_id)
    if "title" in changes:
        changes["title"] = _title(changes["title"])
    if "kind" in changes:
        _check_kind(changes["kind"])
    if "project_id" in changes or "step_id" in changes:
        _check_step(
            session, principal, changes.get("project_id", widget.project_id), changes.get("step_id", widget.step_id)
        )
    for field in ("x", "y"):
        if field in changes:
            changes[field] = changes[field] or None
    changed = {k: v for k, v in changes.items() if getattr(widget, k) != v}
    for field, value in changed.items():
        setattr(widget, field, value)
    if changed:
        dashboard.updated_at = utcnow()
        session.flush()
        _record(
            session,
            principal,
            "dashboard.widget_updated",
            dashboard.id,
            {"widget_id": widget.id, "changed": sorted(changed)},
            context,
        )
    return widget


def delete_widget(
    session: Session, principal: Principal, dashboard_id: str, widget_id: str, *, context: RequestContext | None = None
) -> None:
    dashboard = open_dashboard(session, principal, dashboard_id, need=EDIT)
    widget = _widget(session, dashboard, widget_id)
    session.delete(widget)
    dashboard.updated_at = utcnow()
    session.flush()
    _record(session, principal, "dashboard.widget_deleted", dashboard.id, {"widget_id": widget_id}, context)


def _title(title: str) -> str:
    title = (title or "").strip()
    if not title or len(title) > 200:
        raise InvalidRequest("invalid_title", "title must be 1 to 200 characters.")
    return title


# -- refresh ------------------------------------------------------------------------------


def refresh_status(dashboard: Dashboard) -> str:
    """idle | refreshing (a refresh stale past REFRESH_STALE_AFTER reads idle: its process died)."""
    if dashboard.refresh_status != "refreshing":
        return "idle"
    started = dashboard.refreshed_at
    if started is None or utcnow() - started > REFRESH_STALE_AFTER:
        return "idle"
    return "refreshing"


def project_count(session: Session, dashboard_id: str) -> int:
    return len({w.project_id for w in widgets_of(session, dashboard_id)})


def start_refresh(session: Session, principal: Principal, dashboard_id: str) -> tuple[Dashboard, list[Widget]]:
    """Marks the dashboard refreshing (now) and returns its widgets to evaluate. Anyone who
    may view it may refresh it: a refresh only computes what each reader would see anyway."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=VIEW)
    dashboard.refresh_status = "refreshing"
    dashboard.refreshed_at = utcnow()
    return dashboard, widgets_of(session, dashboard.id)


def finish_refresh(session: Session, dashboard_id: str) -> None:
    dashboard = session.get(Dashboard, dashboard_id)
    if dashboard is not None:  # (deleted meanwhile: nothing to mark)
        dashboard.refresh_status = "idle"
        dashboard.refreshed_at = utcnow()
