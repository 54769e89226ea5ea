"""Projects: the projects the signed-in user may open, a project's steps with their SQL and
status, a step's rows, adding steps and sources, runs (run, cancel) and sharing.

Every step is computed for the SIGNED-IN user (tidegate.analysis.engine, under their own
access to each source): the page shows what the API would give them, never its author's
rows. Every change goes through tidegate.analysis (projects, runs, sharing), audited like
its /api/v1 twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from tidegate.access.analysis import EDIT, OWNER, VIEW, at_least, open_project, permission_of
from tidegate.access.sources import SourceAccess
from tidegate.analysis import engine, projects, runs, sharing
from tidegate.catalog.analysis import RESOURCE_PROJECT
from tidegate.catalog.models import SHARE_PERMISSIONS
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.data import service as data_service
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import request_context
from tidegate.orgs.models import User
from tidegate.web.common import (
    FORM,
    CursorPage,
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

READ = Scope.PROJECTS_READ
WRITE = Scope.PROJECTS_WRITE
SHARE_READ = Scope.PERMISSIONS_READ
SHARE_WRITE = Scope.PERMISSIONS_WRITE
PAGE_SIZE = 100
DATA_ROWS = 50
# A page computes every step for its viewer: a slow step is shown as such after this long
# rather than holding the page up to the query deadline.
PAGE_STEP_SECONDS = 5.0
MAX_SOURCES_OFFERED = 500
NOTICES = {
    "created": "The project was created.",
    "step_added": "The step was added.",
    "step_deleted": "The step was deleted.",
    "source_added": "The source was added, with a step that reads it.",
    "run_started": "The run started.",
    "run_cancelled": "The run was cancelled.",
    "run_idle": "Nothing was running.",
    "shared": "Sharing saved.",
    "unshared": "The share was removed.",
    "deleted": "The project was deleted.",
}


def ProjectId():
    return Path(max_length=100)


def _emails(session, user_ids) -> dict[str, str]:
    ids = set(user_ids)
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.email).where(User.id.in_(ids))).all())


def _me(session, viewer: Viewer) -> User:
    user = session.get(User, viewer.user.id)
    assert user is not None  # signed_in just read them
    return user


# -- the list ------------------------------------------------------------------------------


def projects_context(
    session, viewer: Viewer, limits: QueryLimits, *, after: str | None = None, before: str | None = None
) -> dict:
    before = None if after else before
    fetched = projects.list_projects(session, viewer.principal, limit=PAGE_SIZE, after=after, before=before)
    paged = CursorPage.of(fetched, PAGE_SIZE, after=after, before=before)
    rows = paged.rows
    owners = _emails(session, [p.created_by for p in rows])
    me = _me(session, viewer)
    items = [
        {
            "id": p.id,
            "name": p.name,
            "description": p.description,
            "owner": owners.get(p.created_by, p.created_by),
            "steps": projects.step_count(session, p.id),
            "status": runs.state_of(session, p.id, limits).status,
            "updated_at": p.updated_at,
            "permission": permission_of(session, me, p) or VIEW,
        }
        for p in rows
    ]
    return {
        "title": "Projects",
        "projects": items,
        "next_after": paged.next_after,
        "previous_before": paged.previous_before,
        "can_write": viewer.can(WRITE),
        "form": {"name": "", "description": ""},
    }


@router.get("/projects")
def projects_page(
    request: Request,
    after: str | None = Query(None, max_length=100),
    before: str | None = Query(None, max_length=100),
    notice: str | None = Query(None, max_length=40),
):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = projects_context(session, viewer, settings_of(request).query_limits, after=after, before=before)
    return page(request, "projects.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


@router.post("/projects")
def create_project(request: Request, form: FormData = FORM):
    name, description = text(form, "name", 255), text(form, "description", 2000)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            project = projects.create_project(
                session,
                viewer.principal,
                name=name,
                user_id=viewer.user.id,  # who creates a project here owns it
                description=description or None,
                context=request_context(request),
            )
            project_id = project.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            context = projects_context(session, viewer, settings_of(request).query_limits)
        context["form"] = {"name": name, "description": description}
        return page(
            request,
            "projects.html",
            {**context, "create_error": exc.message},
            viewer=viewer,
            status=exc.status,
            current="/projects",
        )
    return redirect(f"/projects/{project_id}?notice=created")


# -- one project ---------------------------------------------------------------------------


@dataclass
class StepData:
    """A page of one step's rows, as the signed-in user gets them."""

    step_id: str
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    total: int = 0
    page: int = 1
    error: str | None = None

    @property
    def first(self) -> int:
        return (self.page - 1) * DATA_ROWS + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return (self.page - 1) * DATA_ROWS + len(self.rows)

    @property
    def has_next(self) -> bool:
        return self.last < self.total


def _sharing_context(session, viewer: Viewer, project, permission: str) -> dict | None:
    if permission != OWNER or not viewer.can(SHARE_READ):
        return None
    shares = sharing.list_shares(session, viewer.principal, RESOURCE_PROJECT, project.id)
    users = list(
        session.scalars(select(User).where(User.org_id == viewer.org.id, User.is_active.is_(True)).order_by(User.email))
    )
    emails = {u.id: u.email for u in users} | _emails(session, [s.user_id for s in shares])
    shared = {s.user_id for s in shares}
    return {
        "shares": [
            {"user_id": s.user_id, "email": emails.get(s.user_id, s.user_id), "permission": s.permission}
            for s in shares
        ],
        "candidates": [
            {"id": u.id, "email": u.email} for u in users if u.id != project.created_by and u.id not in shared
        ],
        "permissions": SHARE_PERMISSIONS,
        "can_write": viewer.can(SHARE_WRITE),
    }


def _as_seen(access: SourceAccess | str | None) -> dict:
    if access is None or isinstance(access, str):
        return {"source_name": None, "unreadable": access or "not readable"}
    return {"source_name": access.opened_source.name, "unreadable": None}


def _load(request: Request, project_id: str) -> tuple[Viewer, dict, engine.ProjectPlan]:
    """Everything the page shows but the steps' results (computed next, in the query pool)."""
    limits = settings_of(request).query_limits
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        with as_page(viewer, "Project not found"):
            project = open_project(session, viewer.principal, project_id, need=VIEW)
            plan = engine.plan(session, viewer.principal, project_id)
        permission = permission_of(session, _me(session, viewer), project) or VIEW
        attached = projects.sources_of(session, project_id)
        can_edit = at_least(permission, EDIT) and viewer.can(WRITE)
        offered = []
        if can_edit:
            visible = data_service.list_sources(session, viewer.principal, limit=MAX_SOURCES_OFFERED, after=None)
            offered = [{"id": s.id, "name": s.name} for s in visible[:MAX_SOURCES_OFFERED]]
        context = {
            "title": project.name,
            "project": {
                "id": project.id,
                "name": project.name,
                "description": project.description,
                "owner": _emails(session, [project.created_by]).get(project.created_by, project.created_by),
                "created_at": project.created_at,
                "updated_at": project.updated_at,
            },
            "permission": permission,
            "can_edit": can_edit,
            "can_delete": permission == OWNER and viewer.can(WRITE),
            "run": runs.state_of(session, project_id, limits),
            "attached": [
                {
                    "id": a.id,
                    "name": a.name,
                    "source_id": a.source_id,
                    # Named only if the viewer may open it (else why not, as the engine says).
                    **_as_seen(plan.sources.get(a.name.lower(), plan.sources.get(a.name))),
                }
                for a in attached
            ],
            "offered_sources": offered,
            "sharing": _sharing_context(session, viewer, project, permission),
            "step_form": {"name": "", "sql": ""},
            **badges(request, session, viewer),
        }
    return viewer, context, plan


async def _step_data(limits: QueryLimits, principal: Principal, plan, step_id: str, page_number: int) -> StepData:
    spec = next(s for s in plan.steps if s.id == step_id)
    data = StepData(step_id=step_id, name=spec.name, page=page_number)
    try:
        table = await engine.run_step(limits, principal, plan, step_id, timeout=PAGE_STEP_SECONDS)
        data.rows, data.total, data.columns = engine.page_of(table, page_number, DATA_ROWS)
    except InvalidRequest as exc:
        data.error = exc.message
    return data


async def _render(
    request: Request,
    project_id: str,
    *,
    step_id: str | None = None,
    page_number: int = 1,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
    step_form: dict | None = None,
    form_errors: dict | None = None,
    share_row: str | None = None,
) -> Response:
    """The project page; `error` next to the Remove button of the share of `share_row` (a user
    id) while that row is shown, above the page otherwise."""
    limits = settings_of(request).query_limits
    viewer, context, plan = await run_in_threadpool(_load, request, project_id)
    computed = await projects.step_results(limits, viewer.principal, plan, timeout=PAGE_STEP_SECONDS)
    results = {r.step_id: r for r in computed}
    context["steps"] = [
        {"id": s.id, "name": s.name, "sql": s.sql, "order": i, "result": results.get(s.id)}
        for i, s in enumerate(plan.steps)
    ]
    if step_id is None and plan.steps:
        step_id = plan.steps[-1].id  # the last step: what the project computes
    if step_id is not None and step_id in {s.id for s in plan.steps}:
        context["data"] = await _step_data(limits, viewer.principal, plan, step_id, page_number)
    if step_form is not None:
        context["step_form"] = step_form
    context.update(form_errors or {})
    shared = {s["user_id"] for s in (context.get("sharing") or {}).get("shares", [])}
    if error and share_row is not None and share_row in shared:
        context["row_error"], error = {"row": f"share-{share_row}", "message": error}, None
    context.update(notice=NOTICES.get(notice or ""), page_error=error)
    return page(request, "project.html", context, viewer=viewer, status=status, current="/projects")


@router.get("/projects/{project_id}")
async def project_page(
    request: Request,
    project_id: str = ProjectId(),
    step: str | None = Query(None, max_length=100),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    notice: str | None = Query(None, max_length=40),
):
    return await _render(request, project_id, step_id=step, page_number=page_number, notice=notice)


# Each form of the page: the context key of its refusal, which field a refusal is about, and
# plain words for the API's.
STEP_FORM = (
    "step_error",
    {"invalid_step_name": "name", "name_taken": "name", "invalid_step_sql": "sql", "unknown_table": "sql"},
    {
        "invalid_step_name": "A step name starts with a letter or _, then letters, digits or _ (at most 63).",
    },
)
ATTACH_FORM = (
    "attach_error",
    {
        "invalid_source": "source_id",
        "source_not_found": "source_id",
        "invalid_source_name": "name",
        "name_taken": "name",
    },
    {
        "source_not_found": "That source no longer exists or you may not open it: choose one from the list.",
        "invalid_source_name": "A table name starts with a letter or _, then letters, digits or _ (at most 63).",
    },
)
SHARE_FORM = (
    "share_error",
    {"invalid_user": "user_id", "user_not_found": "user_id", "invalid_permission": "permission"},
    {
        "user_not_found": "That person is not an active member of the organization: choose someone from the list.",
        "invalid_permission": "Choose View or Edit.",
    },
)


async def _change(
    request: Request,
    project_id: str,
    form: FormData,
    scope: Scope,
    work,
    notice: str,
    refusal: tuple[str, dict[str, str], dict[str, str]] | None = None,
    **on_error,
):
    """Run `work(session, viewer)` as one transaction; then back to the page (with `notice`),
    or the page again with the refusal (status kept): at its field when `refusal` (the form's
    context key, fields and plain words) places it, above the page otherwise."""

    def run():
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, scope)
            return work(session, viewer)

    try:
        result = await run_in_threadpool(run)
    except TidegateError as exc:
        if refusal is not None:
            key, fields, words = refusal
            at_field = field_error(exc, fields, words)
            if at_field["field"]:
                typed = on_error.pop("form_errors", {})
                return None, await _render(
                    request, project_id, status=exc.status, form_errors={**typed, key: at_field}, **on_error
                )
        return None, await _render(request, project_id, error=exc.message, status=exc.status, **on_error)
    return result, redirect(f"/projects/{project_id}?notice={notice}")


@router.post("/projects/{project_id}/steps")
async def add_step(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    name, sql = text(form, "name", 63), text(form, "sql", projects.MAX_SQL)

    def work(session, viewer: Viewer):
        return projects.add_step(
            session, viewer.principal, project_id, name=name, sql=sql, context=request_context(request)
        ).id

    step_id, response = await _change(
        request, project_id, form, WRITE, work, "step_added", STEP_FORM, step_form={"name": name, "sql": sql}
    )
    if step_id is not None:
        return redirect(f"/projects/{project_id}?notice=step_added&step={step_id}")
    return response


@router.post("/projects/{project_id}/steps/{step_id}/delete")
async def delete_step(
    request: Request, project_id: str = ProjectId(), step_id: str = Path(max_length=100), form: FormData = FORM
):
    def work(session, viewer: Viewer):
        projects.delete_step(session, viewer.principal, project_id, step_id, context=request_context(request))

    return (await _change(request, project_id, form, WRITE, work, "step_deleted"))[1]


@router.post("/projects/{project_id}/sources")
async def add_source(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    source_id, name = text(form, "source_id", 100), text(form, "name", 63)

    def work(session, viewer: Viewer):
        if not source_id:
            raise InvalidRequest("invalid_source", "Choose a source.")
        projects.attach_source(
            session, viewer.principal, project_id, source_id, name=name or None, context=request_context(request)
        )

    typed = {"attach_form": {"source_id": source_id, "name": name}}
    return (await _change(request, project_id, form, WRITE, work, "source_added", ATTACH_FORM, form_errors=typed))[1]


@router.post("/projects/{project_id}/run")
async def run_project(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    settings = settings_of(request)

    def work(session, viewer: Viewer):
        run_id = runs.start_run(
            session, viewer.principal, project_id, settings.query_limits, context=request_context(request)
        )
        return viewer.principal, run_id

    started, response = await _change(request, project_id, form, WRITE, work, "run_started")
    if started is not None:  # committed: its row is there for the run's end
        runs.launch(settings.database_url, settings.query_limits, started[0], project_id, started[1])
    return response


@router.post("/projects/{project_id}/run/cancel")
async def cancel_run(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    limits = settings_of(request).query_limits

    def work(session, viewer: Viewer):
        return runs.cancel_run(session, viewer.principal, project_id, limits, context=request_context(request)) or ""

    run_id, response = await _change(request, project_id, form, WRITE, work, "run_cancelled")
    if run_id:
        runs.signal_cancel(run_id)
    elif run_id == "":
        return redirect(f"/projects/{project_id}?notice=run_idle")
    return response


@router.post("/projects/{project_id}/shares")
async def share(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    user_id, permission = text(form, "user_id", 200), text(form, "permission", 20) or "view"

    def work(session, viewer: Viewer):
        if not user_id:
            raise InvalidRequest("invalid_user", "Choose a person to share with.")
        sharing.share(
            session,
            viewer.principal,
            RESOURCE_PROJECT,
            project_id,
            user_id,
            permission,
            context=request_context(request),
        )

    typed = {"share_form": {"user_id": user_id, "permission": permission}}
    return (await _change(request, project_id, form, SHARE_WRITE, work, "shared", SHARE_FORM, form_errors=typed))[1]


@router.post("/projects/{project_id}/shares/{user_id}/remove")
async def unshare(
    request: Request, project_id: str = ProjectId(), user_id: str = Path(max_length=100), form: FormData = FORM
):
    def work(session, viewer: Viewer):
        sharing.unshare(
            session, viewer.principal, RESOURCE_PROJECT, project_id, user_id, context=request_context(request)
        )

    return (await _change(request, project_id, form, SHARE_WRITE, work, "unshared", share_row=user_id))[1]


@router.post("/projects/{project_id}/delete")
async def delete_project(request: Request, project_id: str = ProjectId(), form: FormData = FORM):
    def work(session, viewer: Viewer):
        projects.delete_project(session, viewer.principal, project_id, context=request_context(request))

    _, response = await _change(request, project_id, form, WRITE, work, "deleted")
    if response.status_code == 303:
        return redirect("/projects?notice=deleted")
    return response
