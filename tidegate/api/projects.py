"""/projects: projects, their steps (SQL, our extension), sources and runs (contract §13).

Every step's rows are computed under the READER's access (tidegate.analysis.engine): two
callers reading one shared project each see the rows their own policies allow.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from tidegate.access.analysis import EDIT, VIEW, open_project
from tidegate.analysis import engine, projects, runs
from tidegate.api.deps import DB, in_session, require, set_audit_target, settings_of
from tidegate.api.inputs import InputRoute, Text
from tidegate.api.pagination import AfterQuery
from tidegate.api.responses import JSON
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.data import service as sources
from tidegate.errors import Conflict, InvalidRequest, NotFound
from tidegate.http import request_context
from tidegate.wire.common import DataList, Deleted, Page
from tidegate.wire.projects import (
    AddSourceOut,
    ProjectDetailOut,
    ProjectOut,
    ProjectSourceOut,
    RunCancelOut,
    RunOut,
    RunStatusOut,
    StepDataOut,
    StepOut,
    StepSummaryOut,
)

router = APIRouter(tags=["projects"], route_class=InputRoute)
READ = require(Scope.PROJECTS_READ)
WRITE = require(Scope.PROJECTS_WRITE)
ProjectLimitQuery = Query(25, ge=1, le=200, description="Items per page (1-200).")
MAX_STEP_PAGE_SIZE = 10_000


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=projects.MAX_NAME)
    user_id: Text = Field(min_length=1, max_length=200, description="The owner: a user id or external id.")
    description: Text | None = Field(None, max_length=projects.MAX_DESCRIPTION)


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=projects.MAX_NAME)
    description: Text | None = Field(None, max_length=projects.MAX_DESCRIPTION)


class StepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=63)
    sql: Text = Field(min_length=1, max_length=projects.MAX_SQL)
    depends_on: list[Text] | None = Field(None, max_length=100)


class StepUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=63)
    sql: Text | None = Field(None, min_length=1, max_length=projects.MAX_SQL)
    depends_on: list[Text] | None = Field(None, max_length=100)


class SourceAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: Text | None = Field(None, max_length=100, description="An uploaded file: made a source first.")
    source_id: Text | None = Field(None, max_length=100, description="Or an existing source you may open.")
    name: Text | None = Field(None, max_length=63, description="The table name steps read it by.")
    run: bool = Field(True, description="Start a run of the project afterwards.")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text | None = Field(None, max_length=200)


def _project_out(session: Session, project, limits) -> ProjectOut:
    state = runs.state_of(session, project.id, limits)
    return ProjectOut.of(project, state.status, projects.step_count(session, project.id))


# -- projects ------------------------------------------------------------------------------


@router.post("/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    project = projects.create_project(
        session,
        principal,
        name=body.name,
        user_id=body.user_id,
        description=body.description,
        context=request_context(request),
    )
    set_audit_target(request, "project", project.id)
    return _project_out(session, project, settings_of(request).query_limits)


@router.get("/projects", response_model=Page[ProjectOut])
def list_projects(
    request: Request,
    principal: Principal = READ,
    session: Session = DB,
    limit: int = ProjectLimitQuery,
    after: str | None = AfterQuery,
    user_id: str | None = Query(None, max_length=200, description="Only the projects this user owns."),
):
    rows = projects.list_projects(session, principal, limit=limit, after=after, user_id=user_id)
    limits = settings_of(request).query_limits
    return Page[ProjectOut].of(rows, limit, lambda p: _project_out(session, p, limits))


def _detail(session: Session, principal: Principal, project_id: str, limits):
    plan = engine.plan(session, principal, project_id)  # opens it for VIEW
    project = open_project(session, principal, project_id, need=VIEW)
    attached = [ProjectSourceOut.of(s) for s in projects.sources_of(session, project_id)]
    return _project_out(session, project, limits), attached, plan


@router.get("/projects/{project_id}", response_model=ProjectDetailOut)
async def get_project(project_id: str, request: Request, principal: Principal = READ):
    """The project with its steps, each computed under YOUR access (status, counts, headers)."""
    limits = settings_of(request).query_limits
    out, attached, plan = await in_session(request, _detail, principal, project_id, limits)
    results = await projects.step_results(limits, principal, plan)
    return ProjectDetailOut(**out.model_dump(), steps=StepSummaryOut.all_of(plan.steps, results), sources=attached)


@router.put("/projects/{project_id}", response_model=ProjectOut)
@router.patch("/projects/{project_id}", response_model=ProjectOut)
def update_project(
    project_id: str, body: ProjectUpdate, request: Request, principal: Principal = WRITE, session: Session = DB
):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if changes.get("name", "") is None:
        raise InvalidRequest("invalid_name", "name cannot be null.")
    project = projects.update_project(session, principal, project_id, changes=changes, context=request_context(request))
    return _project_out(session, project, settings_of(request).query_limits)


@router.delete("/projects/{project_id}", response_model=Deleted)
def delete_project(project_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    """Deletes the project, its steps, source attachments (not the sources), runs and shares."""
    projects.delete_project(session, principal, project_id, context=request_context(request))
    return Deleted(id=project_id, deleted=True)


# -- steps ---------------------------------------------------------------------------------


def _order_of(session: Session, project_id: str, step_id: str) -> int:
    return [s.id for s in projects.steps_of(session, project_id)].index(step_id)


@router.post("/projects/{project_id}/steps", status_code=201, response_model=StepOut)
def add_step(project_id: str, body: StepCreate, request: Request, principal: Principal = WRITE, session: Session = DB):
    """Add a last step: one SELECT (the /query sandbox: no files, no catalogs) reading the
    project's sources and earlier steps by name. Bad SQL: 400 `invalid_step_sql` with its
    position (or `unknown_table`), and nothing is saved. Tidegate extension."""
    step = projects.add_step(
        session,
        principal,
        project_id,
        name=body.name,
        sql=body.sql,
        depends_on=body.depends_on,
        context=request_context(request),
    )
    return StepOut.of(step, _order_of(session, project_id, step.id))


@router.patch("/projects/{project_id}/steps/{step_id}", response_model=StepOut)
def update_step(
    project_id: str,
    step_id: str,
    body: StepUpdate,
    request: Request,
    principal: Principal = WRITE,
    session: Session = DB,
):
    """Change a step's name, SQL or depends_on (validated as when added). Tidegate extension."""
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    step = projects.update_step(
        session, principal, project_id, step_id, changes=changes, context=request_context(request)
    )
    return StepOut.of(step, _order_of(session, project_id, step.id))


@router.delete("/projects/{project_id}/steps/{step_id}", response_model=Deleted)
def delete_step(project_id: str, step_id: str, request: Request, principal: Principal = WRITE, session: Session = DB):
    """Delete a step; 409 `step_in_use` while a later step reads it. Tidegate extension."""
    projects.delete_step(session, principal, project_id, step_id, context=request_context(request))
    return Deleted(id=step_id, deleted=True)


@router.get("/projects/{project_id}/steps", response_model=DataList[StepSummaryOut])
async def list_steps(project_id: str, request: Request, principal: Principal = READ):
    """Every step as YOU get it: status complete|error, has_data, num_rows, num_cols, headers
    (message on error), computed under your own access to each source."""
    limits = settings_of(request).query_limits
    plan = await in_session(request, engine.plan, principal, project_id)
    results = await projects.step_results(limits, principal, plan)
    return DataList[StepSummaryOut](data=StepSummaryOut.all_of(plan.steps, results))


@router.get("/projects/{project_id}/steps/{step_id}/data", response_model=StepDataOut)
async def step_data(
    project_id: str,
    step_id: str,
    request: Request,
    principal: Principal = READ,
    page: int = Query(1, ge=1, le=100_000_000),
    page_size: int = Query(100, ge=1, le=MAX_STEP_PAGE_SIZE),
):
    """A page of the step's rows, computed under YOUR access (a DataPage)."""
    plan = await in_session(request, engine.plan, principal, project_id)
    if step_id not in {s.id for s in plan.steps}:
        raise NotFound("step_not_found", f"No step {step_id!r} in this project.")
    table = await engine.run_step(settings_of(request).query_limits, principal, plan, step_id)
    rows, total, headers = engine.page_of(table, page, page_size)
    readable = [a for a in plan.sources.values() if not isinstance(a, str)]
    set_audit_target(
        request,
        "project",
        project_id,
        step_id=step_id,
        rows_returned=len(rows),
        source_ids=sorted({a.opened_source.id for a in readable}),
        policy_ids=sorted({p for a in readable for p in a.row_filter.policy_ids}),
        page=page,
        page_size=page_size,
    )
    request.scope["state"]["audit_action"] = "project.step_data.read"
    return JSON({"data": rows, "total_count": total, "page": page, "page_size": page_size, "columns": headers})


# -- sources -------------------------------------------------------------------------------


def _add_source(session: Session, principal: Principal, project_id: str, body: SourceAdd, request: Request):
    if (body.file_id is None) == (body.source_id is None):
        raise InvalidRequest("invalid_source", "Give exactly one of file_id or source_id.")
    context = request_context(request)
    open_project(session, principal, project_id, need=EDIT)  # before making a source
    source_id = body.source_id
    if body.file_id is not None:
        file = sources.get_file(session, principal, body.file_id)
        source_id = sources.create_source(
            session, principal, settings_of(request), name=file.name, file_id=file.id, context=context
        ).id
    assert source_id is not None
    attached, step = projects.attach_source(session, principal, project_id, source_id, name=body.name, context=context)
    assert step is not None  # attach_source adds the step by default
    return attached.id, attached.source_id, attached.name, step.id


async def _start_run(request: Request, principal: Principal, project_id: str, user_id: str | None) -> str:
    settings = settings_of(request)
    run_id = await in_session(
        request,
        runs.start_run,
        principal,
        project_id,
        settings.query_limits,
        user_id=user_id,
        context=request_context(request),
    )
    # Launched once its row is committed: the run's end always finds it.
    runs.launch(settings.database_url, settings.query_limits, principal, project_id, run_id)
    return run_id


@router.post("/projects/{project_id}/sources", response_model=AddSourceOut)
async def add_source(project_id: str, body: SourceAdd, request: Request, principal: Principal = WRITE):
    """Attach a source, as the SDK's add_source: an uploaded file (`file_id`, made a source
    first) or an existing source you may open (`source_id`, tidegate extension), by a table
    name made from its name (or `name`), and add a step `SELECT * FROM <name>`; `run`
    (default true) then starts a run. Readers read the source under their own access."""
    psrc_id, source_id, name, step_id = await in_session(request, _add_source, principal, project_id, body, request)
    status = "added"
    if body.run:
        try:
            await _start_run(request, principal, project_id, None)
            status = "running"
        except Conflict:
            status = "added"  # a run is already going; the caller may run again after it
    return AddSourceOut(
        step_id=step_id, project_id=project_id, status=status, source_id=source_id, project_source_id=psrc_id, name=name
    )


@router.delete("/projects/{project_id}/sources/{project_source_id}", response_model=Deleted)
def remove_source(
    project_id: str, project_source_id: str, request: Request, principal: Principal = WRITE, session: Session = DB
):
    """Detach a source (the source itself stays); steps reading it then report an error.
    Tidegate extension."""
    projects.detach_source(session, principal, project_id, project_source_id, context=request_context(request))
    return Deleted(id=project_source_id, deleted=True)


# -- runs ----------------------------------------------------------------------------------


@router.post("/projects/{project_id}/run", response_model=RunOut)
async def run_project(project_id: str, request: Request, body: RunRequest | None = None, principal: Principal = WRITE):
    """Start a background run: every step in order under YOUR access (409 while one runs).
    `user_id` must be you (an admin may name any user, recorded in the audit log)."""
    run_id = await _start_run(request, principal, project_id, body.user_id if body else None)
    return RunOut(id=project_id, run_id=run_id, status="submitted")


@router.get("/projects/{project_id}/run/status", response_model=RunStatusOut)
async def run_status(project_id: str, request: Request, principal: Principal = READ):
    """idle (never run, or cancelled), running, complete or error (with `message`); a run
    whose server process stopped reads as error once past its deadline."""
    state = await in_session(request, runs.run_status, principal, project_id, settings_of(request).query_limits)
    return RunStatusOut.of(state)


@router.post("/projects/{project_id}/run/cancel", response_model=RunCancelOut)
async def cancel_run(project_id: str, request: Request, principal: Principal = WRITE):
    """Cancel the running run: its current query is interrupted; the project then reads as
    idle. `cancelled` is false when nothing was running."""
    run_id = await in_session(
        request,
        runs.cancel_run,
        principal,
        project_id,
        settings_of(request).query_limits,
        context=request_context(request),
    )
    if run_id is not None:
        runs.signal_cancel(run_id)
    return RunCancelOut(id=project_id, cancelled=run_id is not None, run_id=run_id)
