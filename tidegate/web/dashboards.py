"""Dashboards: the list, one dashboard with its widgets drawn as charts (Chart.js, from
/static/vendor), its filters, adding widgets, and its share links; and /links/<token>, the
page a share link opens.

Every widget is evaluated here, in the page request, under the VIEWER's access (their
browser session; a public link's reader: its creator narrowed by the link's policies):
two people opening one dashboard see their own numbers. The rows reach the page as a JSON
data block (never an inline script: the CSP allows scripts from /static only) that
/static/dashboards.js draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from tidegate import jsonfmt
from tidegate.access.analysis import EDIT, OWNER, permission_of, visible_query
from tidegate.access.models import Policy
from tidegate.analysis import dashboards, links, widgets
from tidegate.audit.record import event_row
from tidegate.catalog.analysis import WIDGET_KINDS, Dashboard, Project, Step
from tidegate.core.principal import Principal
from tidegate.core.redaction import redact_secrets
from tidegate.core.scopes import Scope
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import client_ip, request_context
from tidegate.orgs.models import Organization, User
from tidegate.web.common import (
    FORM,
    CursorPage,
    FieldRefusal,
    PageError,
    as_page,
    db,
    field_error,
    router,
    settings_of,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.render import badges, page, redirect
from tidegate.web.sessions import Viewer

READ = Scope.DASHBOARDS_READ
WRITE = Scope.DASHBOARDS_WRITE
PAGE_SIZE = 100
TABLE_ROWS = 50
NOTICES = {
    "created": "Dashboard created.",
    "filters": "Filters saved.",
    "widget_added": "Widget added.",
    "widget_removed": "Widget removed.",
    "link_revoked": "The link was revoked: it no longer opens the dashboard.",
}

# Each form's refusals: the field they are about (code -> field; the others above the form)
# and plain words for the API's, which name wire fields (issue 16).
CREATE_FIELDS = {"invalid_name": "name", "invalid_description": "description"}
CREATE_WORDS = {"invalid_name": "Give the dashboard a name of 1 to 200 characters."}
WIDGET_FIELDS = {
    "invalid_title": "title",
    "missing_field": "step",
    "step_not_found": "step",
    "project_not_found": "step",
    "invalid_widget_kind": "kind",
}
WIDGET_WORDS = {
    "invalid_title": "Give the widget a title of 1 to 200 characters.",
    "step_not_found": "That step no longer exists or you may not open it: choose another.",
    "project_not_found": "That step no longer exists or you may not open it: choose another.",
    "invalid_widget_kind": "Choose a kind from the list.",
}
FILTER_FIELDS = {"invalid_filters": "filters"}
FILTER_WORDS = {
    "invalid_filters": "Write one filter a line as column = value, value: a column name of up to 255 "
    "characters, at least one value of up to 1,000 characters, each column once."
}
LINK_FIELDS = {
    "invalid_expiry": "expires_in_days",
    "invalid_policy_ids": "policy_ids",
    "policy_not_found": "policy_ids",
    "policy_ids_required": "policy_ids",
    "policy_ids_public_only": "policy_ids",
}
LINK_WORDS = {
    "invalid_expiry": f"Choose a number of days from 1 to {links.MAX_EXPIRY_DAYS}.",
    "invalid_policy_ids": f"Choose at most {links.MAX_POLICIES} policies.",
    "policy_not_found": "One of the chosen policies no longer exists: choose again.",
    "policy_ids_required": "A public link shows rows through the policies you choose: choose at least one.",
    "policy_ids_public_only": "Policies apply to public links only: switch Public on, or clear the policies.",
}


def form_refusal(exc: TidegateError, fields: dict[str, str], words: dict[str, str]) -> dict[str, Any]:
    """The page's extras for a refused form: the refusal at its field (`form_error`), or above
    the forms (`error`) when it is about none."""
    refusal = field_error(exc, fields, words)
    return {"form_error": refusal} if refusal["field"] else {"error": refusal["message"]}


def DashboardId():
    return Path(max_length=100)


def _json_block(value: Any) -> str:
    """JSON safe inside a <script type="application/json"> element: no `<`, `>` or `&`."""
    raw = jsonfmt.dumps(value).decode("utf-8")
    return raw.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# -- the list -------------------------------------------------------------------------------


@router.get("/dashboards")
def dashboards_page(
    request: Request,
    after: str | None = Query(None, max_length=100),
    before: str | None = Query(None, max_length=100),
):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = dashboards_context(session, viewer, after, before)
    return page(request, "dashboards.html", context, viewer=viewer)


def dashboards_context(session, viewer: Viewer, after: str | None = None, before: str | None = None) -> dict:
    before = None if after else before
    fetched = dashboards.list_dashboards(session, viewer.principal, limit=PAGE_SIZE, after=after, before=before)
    paged = CursorPage.of(fetched, PAGE_SIZE, after=after, before=before)
    rows = paged.rows
    counts = dashboards.widget_counts(session, [d.id for d in rows])
    owners = _emails(session, [d.created_by for d in rows])
    items = [
        {
            "id": d.id,
            "name": d.name,
            "description": d.description,
            "widgets": counts.get(d.id, 0),
            "owner": owners.get(d.created_by, d.created_by),
            "updated_at": d.updated_at,
        }
        for d in rows
    ]
    context = {
        "title": "Dashboards",
        "dashboards": items,
        "can_write": viewer.can(WRITE),
        "next_after": paged.next_after,
        "previous_before": paged.previous_before,
        "typed": {},
    }
    return context


@router.post("/dashboards")
def create_dashboard(request: Request, form: FormData = FORM):
    typed = {"name": text(form, "name", 200), "description": text(form, "description", 1000)}
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            dashboard = dashboards.create_dashboard(
                session,
                viewer.principal,
                name=typed["name"],
                description=typed["description"] or None,
                context=request_context(request),
            )
            dashboard_id = dashboard.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            context = dashboards_context(session, viewer)
        extra = form_refusal(exc, CREATE_FIELDS, CREATE_WORDS)
        return page(request, "dashboards.html", {**context, **extra, "typed": typed}, viewer=viewer, status=exc.status)
    return redirect(f"/dashboards/{dashboard_id}?notice=created")


def _emails(session, user_ids) -> dict[str, str]:
    ids = set(user_ids)
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.email).where(User.id.in_(ids))).all())


# -- one dashboard ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Board:
    """A dashboard as one reader will see it: what to draw (values only, built in a session,
    evaluated outside it)."""

    id: str
    org_id: str
    name: str
    description: str | None
    filters: list[dict[str, Any]]
    widgets: tuple[tuple[dict[str, Any], widgets.WidgetTarget], ...]


def board_of(session, reader: Principal, dashboard: Dashboard) -> Board:
    filters = widgets.filters_of(dashboard.filters)
    return Board(
        id=dashboard.id,
        org_id=dashboard.org_id,
        name=dashboard.name,
        description=dashboard.description,
        filters=list(dashboard.filters or []),
        widgets=tuple(
            (
                {"id": w.id, "title": w.title, "kind": w.kind, "x": w.x, "y": w.y, "step_id": w.step_id},
                widgets.target_of(session, reader, w, filters),
            )
            for w in dashboards.widgets_of(session, dashboard.id)
        ),
    )


async def widget_views(request: Request, reader: Principal, board: Board) -> list[dict[str, Any]]:
    """Every widget of the board, evaluated for `reader` through the query pool (admission,
    deadline, memory ceiling, as the API), ready to draw."""
    limits = settings_of(request).query_limits
    views = []
    for widget, target in board.widgets:
        shown = widgets.page(await widgets.run(limits, reader, target), 1, widgets.CHART_ROWS)
        kind, x, y = widget["kind"], widget["x"], widget["y"]
        views.append(
            {
                **widget,
                "error": shown.error,
                "columns": shown.columns,
                "rows": shown.rows[:TABLE_ROWS],
                "total": shown.total,
                "number": _number(shown, y),
                "chart": _json_block(_chart(shown, x, y)) if kind in ("bar", "line") else None,
                "source_ids": target.source_ids,
            }
        )
    return views


def _number(shown: widgets.WidgetPage, y: str | None) -> Any:
    """A number widget's value: its `y` column (or first column) of the first row."""
    if shown.error or not shown.rows or not shown.columns:
        return None
    column = y if y in shown.columns else shown.columns[0]
    return shown.rows[0].get(column)


def _chart(shown: widgets.WidgetPage, x: str | None, y: str | None) -> dict[str, Any]:
    """Labels (x) and values (y) for a bar or line chart: x defaults to the first column,
    y to the first other column."""
    if shown.error or not shown.columns:
        return {"labels": [], "values": [], "label": ""}
    x = x if x in shown.columns else shown.columns[0]
    others = [c for c in shown.columns if c != x]
    y = y if y in shown.columns else (others[0] if others else x)
    values = []
    for row in shown.rows:
        value = row.get(y)
        try:
            values.append(float(value) if value is not None else None)
        except (TypeError, ValueError):
            values.append(None)
    return {"labels": [str(row.get(x)) for row in shown.rows], "values": values, "label": y}


def _audit_view(request: Request, reader: Principal, dashboard: Board, views: list[dict], link_id: str | None):
    """A dashboard shown in a page is a read of rows: audited like an API data read (the
    journal, as the API middleware does), without the link's token (its id only)."""
    state = request.scope.get("state", {})
    event = event_row(
        org_id=dashboard.org_id,
        actor_type="user" if link_id is None or reader.restrictions is None else "share_link",
        actor_id=reader.user_id if link_id is None or reader.restrictions is None else link_id,
        action="dashboard.viewed",
        target_type="dashboard",
        target_id=dashboard.id,
        details={
            "link_id": link_id,
            "creator_user_id": reader.user_id,
            "widgets": [
                {"widget_id": v["id"], "rows_returned": v["total"], "source_ids": v["source_ids"]} for v in views
            ],
        },
        ip_address=client_ip(request),
        user_agent=(request.headers.get("user-agent") or "")[:500] or None,
        request_id=state.get("request_id"),
        method=request.method,
        path=redact_secrets(request.url.path),
        status=200,
    )
    request.app.state.journal.append(event)


def _dashboard_context(session, viewer: Viewer, dashboard: Dashboard) -> dict[str, Any]:
    """What the page shows besides the widgets: the forms this viewer may use."""
    permission = permission_of(session, session.get(User, viewer.user.id), dashboard)
    can_edit = viewer.can(WRITE) and permission in (EDIT, OWNER)
    is_owner = permission == OWNER
    context: dict[str, Any] = {
        "title": dashboard.name,
        "filters_text": "\n".join(f"{f['column']} = {', '.join(f['values'])}" for f in dashboard.filters or []),
        "can_edit": can_edit,
        "can_delete": viewer.can(WRITE) and is_owner,
        "kinds": WIDGET_KINDS,
        "steps": _steps_offered(session, viewer.principal) if can_edit else [],
        "can_share": is_owner and viewer.can(Scope.PERMISSIONS_WRITE),
        "links": [],
        "policies": [],
        "public_enabled": False,
        "new_link": None,
        "error": None,
        "form_error": None,
        "typed": {},
    }
    if context["can_share"]:
        context["links"] = [
            {"link": link, "state": links.state_of(link)}
            for link in links.list_links(session, viewer.principal, dashboard.id)
        ]
        org = session.get(Organization, dashboard.org_id)
        context["public_enabled"] = bool(org and org.public_share_links_enabled)
        context["policies"] = list(
            session.execute(
                select(Policy.id, Policy.name).where(Policy.org_id == dashboard.org_id).order_by(Policy.name)
            ).all()
        )
    return context


def _steps_offered(session, principal: Principal) -> list[dict[str, str]]:
    """The steps of the projects the viewer may open, for the add-widget form."""
    projects = list(session.scalars(visible_query(session, principal, Project).order_by(Project.name).limit(200)))
    if not projects:
        return []
    names = {p.id: p.name for p in projects}
    steps = session.scalars(select(Step).where(Step.project_id.in_(names)).order_by(Step.project_id, Step.position))
    return [{"value": f"{s.project_id}/{s.id}", "label": f"{names[s.project_id]} / {s.name}"} for s in steps]


async def _show(
    request: Request,
    dashboard_id: str,
    *,
    notice: str | None = None,
    status: int = 200,
    row: str | None = None,
    **extra,
):
    """The dashboard page; its `error` next to the button of `row` ("widget-<id>", "link-<id>")
    while that row is shown, above the page otherwise."""

    def load():
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            with as_page(viewer):
                dashboard = dashboards.get_dashboard(session, viewer.principal, dashboard_id)
                return (
                    viewer,
                    board_of(session, viewer.principal, dashboard),
                    {**_dashboard_context(session, viewer, dashboard), **badges(request, session, viewer)},
                )

    viewer, board, context = await run_in_threadpool(load)
    views = await widget_views(request, viewer.principal, board)
    _audit_view(request, viewer.principal, board, views, None)
    shown = {f"widget-{v['id']}" for v in views} | {f"link-{item['link'].id}" for item in context["links"]}
    if row is not None and row in shown and extra.get("error"):
        extra["row_error"] = {"row": row, "message": extra.pop("error")}
    context.update(dashboard=board, widgets=views, notice=NOTICES.get(notice or ""), **extra)
    return page(request, "dashboard.html", context, viewer=viewer, status=status)


@router.get("/dashboards/{dashboard_id}")
async def dashboard_page(request: Request, dashboard_id: str = DashboardId(), notice: str | None = None):
    return await _show(request, dashboard_id, notice=notice if notice in NOTICES else None)


async def _change(
    request: Request,
    form: FormData,
    dashboard_id: str,
    change,
    notice: str,
    scope: Scope = WRITE,
    refusals: tuple[dict[str, str], dict[str, str]] | None = None,
    typed: dict[str, Any] | None = None,
    row: str | None = None,
):
    """Runs `change(session, viewer)`; on a refusal, the dashboard page again saying why (at
    the form's field, per `refusals`: fields and words, with what was `typed` kept)."""

    def run():
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, scope)
            change(session, viewer)

    try:
        await run_in_threadpool(run)
    except PageError:
        raise
    except TidegateError as exc:
        extra = form_refusal(exc, *refusals) if refusals else {"error": exc.message}
        return await _show(request, dashboard_id, status=exc.status, typed=typed or {}, row=row, **extra)
    return redirect(f"/dashboards/{dashboard_id}?notice={notice}")


def parse_filters(raw: str) -> list[dict[str, Any]]:
    """One filter a line: `column = value, value`."""
    filters = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        column, equals, values = line.partition("=")
        if not equals:
            raise FieldRefusal("filters", "invalid_filters", f"Line {number}: write column = value, value.")
        filters.append({"column": column.strip(), "values": [v.strip() for v in values.split(",") if v.strip()]})
    return filters


@router.post("/dashboards/{dashboard_id}/filters")
async def save_filters(request: Request, dashboard_id: str = DashboardId(), form: FormData = FORM):
    typed = {"filters": text(form, "filters", 20_000)}

    def change(session, viewer):
        dashboards.update_dashboard(
            session,
            viewer.principal,
            dashboard_id,
            changes={"filters": parse_filters(typed["filters"])},
            context=request_context(request),
        )

    return await _change(
        request, form, dashboard_id, change, "filters", refusals=(FILTER_FIELDS, FILTER_WORDS), typed=typed
    )


@router.post("/dashboards/{dashboard_id}/widgets")
async def add_widget(request: Request, dashboard_id: str = DashboardId(), form: FormData = FORM):
    typed = {
        "title": text(form, "title", 200),
        "step": text(form, "step", 200),
        "kind": text(form, "kind", 10),
        "x": text(form, "x", 255),
        "y": text(form, "y", 255),
    }

    def change(session, viewer):
        project_id, _, step_id = typed["step"].partition("/")
        if not step_id:
            raise InvalidRequest("missing_field", "Choose the project step the widget draws.")
        dashboards.add_widget(
            session,
            viewer.principal,
            dashboard_id,
            title=typed["title"],
            project_id=project_id,
            step_id=step_id,
            kind=typed["kind"],
            x=typed["x"] or None,
            y=typed["y"] or None,
            context=request_context(request),
        )

    refusals = (WIDGET_FIELDS, WIDGET_WORDS)
    return await _change(request, form, dashboard_id, change, "widget_added", refusals=refusals, typed=typed)


@router.post("/dashboards/{dashboard_id}/widgets/{widget_id}/delete")
async def delete_widget(
    request: Request, dashboard_id: str = DashboardId(), widget_id: str = DashboardId(), form: FormData = FORM
):
    def change(session, viewer):
        dashboards.delete_widget(session, viewer.principal, dashboard_id, widget_id, context=request_context(request))

    return await _change(request, form, dashboard_id, change, "widget_removed", row=f"widget-{widget_id}")


@router.post("/dashboards/{dashboard_id}/delete")
def delete_dashboard(request: Request, dashboard_id: str = DashboardId(), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, WRITE)
        with as_page(viewer, "Dashboard not deleted"):
            dashboards.delete_dashboard(session, viewer.principal, dashboard_id, context=request_context(request))
    return redirect("/dashboards")


@router.post("/dashboards/{dashboard_id}/links")
async def create_link(request: Request, dashboard_id: str = DashboardId(), form: FormData = FORM):
    """The new link's URL is shown on this response only (its token is never stored)."""

    days = text(form, "expires_in_days", 10)
    chosen = [p for p in form.getlist("policy_ids") if isinstance(p, str) and p]
    typed = {"expires_in_days": days, "public": form.get("public") == "on", "policy_ids": chosen}

    def create():
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, Scope.PERMISSIONS_WRITE)
            if days and not days.isdigit():
                raise InvalidRequest("invalid_expiry", "Expires in (days) must be a whole number.")
            return links.create_link(
                session,
                viewer.principal,
                settings_of(request).pepper,
                dashboard_id,
                expires_in_days=int(days) if days else None,
                public=typed["public"],
                policy_ids=chosen,
                context=request_context(request),
            )

    try:
        created = await run_in_threadpool(create)
    except PageError:
        raise
    except TidegateError as exc:
        extra = form_refusal(exc, LINK_FIELDS, LINK_WORDS)
        return await _show(request, dashboard_id, status=exc.status, typed=typed, **extra)
    url = str(request.base_url).rstrip("/") + "/links/" + created.token
    return await _show(request, dashboard_id, new_link={"url": url, "public": created.link.public})


@router.post("/dashboards/{dashboard_id}/links/{link_id}/revoke")
async def revoke_link(
    request: Request, dashboard_id: str = DashboardId(), link_id: str = DashboardId(), form: FormData = FORM
):
    def change(session, viewer):
        links.revoke_link(session, viewer.principal, dashboard_id, link_id, context=request_context(request))

    return await _change(
        request, form, dashboard_id, change, "link_revoked", Scope.PERMISSIONS_WRITE, row=f"link-{link_id}"
    )


# -- /links/<token> ---------------------------------------------------------------------------


@router.get("/links/{token}")
async def link_page(request: Request, token: str = Path(max_length=100)):
    """A share link: a member link for the signed-in members of its organization (each sees
    their own rows); a public link without signing in, with its policies' access."""

    def load():
        with db(request) as session:
            use = links.open_link(session, settings_of(request).pepper, token)
            viewer = None
            if use.public:
                reader = links.public_reader(session, use)
            else:
                viewer = signed_in(request, session)
                reader = viewer.principal
            dashboard = links.linked_dashboard(session, use, reader)
            return use, viewer, reader, board_of(session, reader, dashboard)

    use, viewer, reader, board = await run_in_threadpool(load)
    views = await widget_views(request, reader, board)
    _audit_view(request, reader, board, views, use.link_id)
    context = {
        "title": board.name,
        "dashboard": board,
        "widgets": views,
        "public": use.public,
        "expires_at": use.expires_at,
    }
    # (A public link's page shows no navigation: its reader is nobody in particular.)
    return page(request, "dashboard_link.html", context, viewer=viewer)
