"""Projects: their CRUD, steps and sources, with their business rules and audit.

A project is private to its owner until shared (tidegate.access.analysis decides who opens
it). Rows are never computed here: a step's rows come from tidegate.analysis.engine, under
the READER's access to each source (see `step_results`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, false, func, select
from sqlalchemy.orm import Session

from tidegate.access.analysis import EDIT, OWNER, VIEW, open_project, visible_query
from tidegate.access.sources import open_source
from tidegate.analysis import engine
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.analysis import RESOURCE_PROJECT, Project, ProjectRun, ProjectSource, ResourceShare, Step
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, Forbidden, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import User
from tidegate.orgs.service import get_user

MAX_NAME = 255
MAX_DESCRIPTION = 2000
MAX_SQL = 10_000


# -- projects ------------------------------------------------------------------------------


def _audit(
    session: Session,
    principal: Principal,
    action: str,
    project_id: str,
    details: dict[str, Any],
    context: RequestContext | None,
) -> None:
    """Every change to a project is audited and bumps the access epoch (cached step results
    and who may open what are keyed by it)."""
    record(
        session,
        principal,
        action,
        org_id=principal.org_id,
        target_type="project",
        target_id=project_id,
        details=details,
        context=context,
    )
    bump_access_epoch(session, principal.org_id)


def _check_name(name: str | None) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidRequest("invalid_name", f"Project name must be 1-{MAX_NAME} characters.")
    return name


def _check_description(description: str | None) -> str | None:
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise InvalidRequest("invalid_description", f"Description must be at most {MAX_DESCRIPTION} characters.")
    return description


def _owner_for(session: Session, principal: Principal, user_id: str | None) -> User:
    """Who owns a new project: `user_id` (a user id or external id of the caller's organization).
    A member (or a member's key) may only create projects they own; an admin, for anyone."""
    if not user_id:
        raise InvalidRequest("invalid_user_id", "user_id (the project's owner) is required.")
    owner = get_user(session, principal.org_id, user_id)
    if owner.id != principal.user_id and not principal.is_admin:
        raise Forbidden("project_owner_forbidden", "Only an admin may create a project owned by another user.")
    return owner


def create_project(
    session: Session,
    principal: Principal,
    *,
    name: str,
    user_id: str | None,
    description: str | None = None,
    context: RequestContext | None = None,
) -> Project:
    name = _check_name(name)
    description = _check_description(description)
    owner = _owner_for(session, principal, user_id)
    now = utcnow()
    project = Project(
        id=new_id("prj"),
        org_id=principal.org_id,
        name=name,
        description=description,
        created_by=owner.id,
        created_at=now,
        updated_at=now,
        revision=0,
    )
    session.add(project)
    session.flush()
    _audit(session, principal, "project.created", project.id, {"name": name, "owner_id": owner.id}, context)
    return project


def get_project(session: Session, principal: Principal, project_id: str) -> Project:
    return open_project(session, principal, project_id, need=VIEW)


def list_projects(
    session: Session,
    principal: Principal,
    *,
    limit: int,
    after: str | None,
    user_id: str | None = None,
    before: str | None = None,
) -> list[Project]:
    """The projects this caller may open, by id (after `after`, or the limit+1 just before
    `before`); `user_id` (id or external id) keeps its owner's."""
    query = visible_query(session, principal, Project)
    if user_id:
        try:
            owner = get_user(session, principal.org_id, user_id, include_inactive=True)
            query = query.where(Project.created_by == owner.id)
        except NotFound:
            query = query.where(false())  # a filter on nobody matches nothing
    if after:
        query = query.where(Project.id > after)
    if before:
        earlier = query.where(Project.id < before).order_by(Project.id.desc()).limit(limit + 1)
        return list(reversed(session.scalars(earlier).all()))
    return list(session.scalars(query.order_by(Project.id).limit(limit + 1)))


def update_project(
    session: Session,
    principal: Principal,
    project_id: str,
    *,
    changes: dict[str, Any],
    context: RequestContext | None = None,
) -> Project:
    project = open_project(session, principal, project_id, need=EDIT)
    diff: dict[str, Any] = {}
    if "name" in changes:
        new = _check_name(changes["name"])
        if new != project.name:
            diff["name"] = {"old": project.name, "new": new}
            project.name = new
    if "description" in changes:
        new_description = _check_description(changes["description"])
        if new_description != project.description:
            diff["description"] = {"old": project.description, "new": new_description}
            project.description = new_description
    if diff:
        project.updated_at = utcnow()
        _audit(session, principal, "project.updated", project.id, diff, context)
    return project


def delete_project(
    session: Session, principal: Principal, project_id: str, *, context: RequestContext | None = None
) -> None:
    """Removes the project with its steps, its source attachments (not the sources), its runs
    and its shares."""
    project = open_project(session, principal, project_id, need=OWNER)
    counts = {
        "steps": session.execute(delete(Step).where(Step.project_id == project_id)).rowcount,  # type: ignore[attr-defined]
        "sources": session.execute(delete(ProjectSource).where(ProjectSource.project_id == project_id)).rowcount,  # type: ignore[attr-defined]
        "runs": session.execute(delete(ProjectRun).where(ProjectRun.project_id == project_id)).rowcount,  # type: ignore[attr-defined]
        "shares": session.execute(
            delete(ResourceShare).where(
                ResourceShare.resource_type == RESOURCE_PROJECT, ResourceShare.resource_id == project_id
            )
        ).rowcount,  # type: ignore[attr-defined]
    }
    session.delete(project)
    _audit(session, principal, "project.deleted", project_id, {"name": project.name, **counts}, context)


def step_count(session: Session, project_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Step).where(Step.project_id == project_id)) or 0


def steps_of(session: Session, project_id: str) -> list[Step]:
    return list(session.scalars(select(Step).where(Step.project_id == project_id).order_by(Step.position)))


def sources_of(session: Session, project_id: str) -> list[ProjectSource]:
    return list(
        session.scalars(
            select(ProjectSource).where(ProjectSource.project_id == project_id).order_by(ProjectSource.created_at)
        )
    )


# -- names ---------------------------------------------------------------------------------


def check_identifier(name: str | None, what: str) -> str:
    """A step or source name, trimmed (400 `invalid_<what>_name`: `engine.check_name`)."""
    return engine.check_name((name or "").strip(), what)


def _taken_names(session: Session, project_id: str, *, except_step: str | None = None) -> set[str]:
    """Every name a step's SQL can read (sources and steps share one namespace), lowercased."""
    names = {s.name.lower() for s in sources_of(session, project_id)}
    names |= {s.name.lower() for s in steps_of(session, project_id) if s.id != except_step}
    return names


def _check_unique(session: Session, project_id: str, name: str, *, except_step: str | None = None) -> None:
    if name.lower() in _taken_names(session, project_id, except_step=except_step):
        raise Conflict("name_taken", f"This project already has a source or step named {name!r}.")


def identifier_from(text: str, taken: set[str]) -> str:
    """A valid identifier, unique among `taken` (lowercased), made from a file or source name."""
    stem = re.sub(r"\.[A-Za-z0-9]{1,8}$", "", text.strip())
    base = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_").lower() or "source"
    if not (base[0].isalpha() or base[0] == "_"):
        base = "t_" + base
    base = base[:56]
    name, n = base, 2
    while name.lower() in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _touch(project: Project) -> None:
    """A change of steps or sources: every cached step result of the old revision is stale."""
    project.revision = (project.revision or 0) + 1
    project.updated_at = utcnow()


# -- steps ---------------------------------------------------------------------------------


def _check_sql(sql: str | None) -> str:
    if not sql or not sql.strip():
        raise InvalidRequest("invalid_step_sql", "sql is required.")
    if len(sql) > MAX_SQL:
        raise InvalidRequest("invalid_step_sql", f"sql must be at most {MAX_SQL:,} characters.")
    return sql


def _dependencies(sql: str, given: list[str] | None, earlier: list[Step], step_id: str | None = None) -> list[str]:
    """The earlier steps this one reads: those named in `given` (ids, each an earlier step of
    the project) and those its SQL reads by name."""
    by_id = {s.id: s for s in earlier}
    by_name = {s.name.lower(): s.id for s in earlier}
    result: list[str] = []
    for dep in given or []:
        if dep == step_id or dep not in by_id:
            raise InvalidRequest("invalid_depends_on", f"depends_on: {dep!r} is not an earlier step of this project.")
        result.append(dep)
    for name in sorted(engine.referenced_names(sql)):
        dep_id = by_name.get(name.lower())
        if dep_id and dep_id not in result:
            result.append(dep_id)
    return result


def add_step(
    session: Session,
    principal: Principal,
    project_id: str,
    *,
    name: str,
    sql: str,
    depends_on: list[str] | None = None,
    context: RequestContext | None = None,
) -> Step:
    """A new last step. Its SQL may read the project's sources and every earlier step by name;
    bad SQL is a 400 with its position, and nothing is saved."""
    project = open_project(session, principal, project_id, need=EDIT)
    name = check_identifier(name, "step")
    _check_unique(session, project_id, name)
    earlier = steps_of(session, project_id)
    readable = [s.name for s in sources_of(session, project_id)] + [s.name for s in earlier]
    sql = engine.validate_step_sql(_check_sql(sql), readable)
    now = utcnow()
    step = Step(
        id=new_id("stp"),
        project_id=project_id,
        name=name,
        sql=sql,
        position=(max((s.position for s in earlier), default=-1) + 1),
        depends_on=_dependencies(sql, depends_on, earlier),
        created_by=principal.user_id,
        created_at=now,
        updated_at=now,
    )
    session.add(step)
    _touch(project)
    session.flush()
    _audit(
        session, principal, "project.step_created", project_id, {"step_id": step.id, "name": name, "sql": sql}, context
    )
    return step


def _step_of(session: Session, project_id: str, step_id: str) -> Step:
    step = session.get(Step, step_id)
    if step is None or step.project_id != project_id:
        raise NotFound("step_not_found", f"No step {step_id!r} in this project.")
    return step


def _readers_of(steps: list[Step], step: Step) -> list[Step]:
    """Later steps that read `step` (by id in depends_on or by name in their SQL)."""
    readers = []
    for other in steps:
        if other.position <= step.position:
            continue
        if step.id in (other.depends_on or []) or step.name.lower() in {
            n.lower() for n in engine.referenced_names(other.sql)
        }:
            readers.append(other)
    return readers


def update_step(
    session: Session,
    principal: Principal,
    project_id: str,
    step_id: str,
    *,
    changes: dict[str, Any],
    context: RequestContext | None = None,
) -> Step:
    project = open_project(session, principal, project_id, need=EDIT)
    step = _step_of(session, project_id, step_id)
    steps = steps_of(session, project_id)
    earlier = [s for s in steps if s.position < step.position]
    diff: dict[str, Any] = {}
    name = step.name
    if changes.get("name") is not None and changes["name"] != step.name:
        name = check_identifier(changes["name"], "step")
        _check_unique(session, project_id, name, except_step=step.id)
        readers = [s.name for s in _readers_of(steps, step) if step.name.lower() in engine.referenced_names(s.sql)]
        if readers and name.lower() != step.name.lower():
            raise Conflict(
                "step_in_use", f"Steps {', '.join(readers)} read this step by name; rename would break them."
            )
        diff["name"] = {"old": step.name, "new": name}
    sql = step.sql
    if changes.get("sql") is not None and changes["sql"] != step.sql:
        readable = [s.name for s in sources_of(session, project_id)] + [s.name for s in earlier]
        sql = engine.validate_step_sql(_check_sql(changes["sql"]), readable)
        diff["sql"] = {"old": step.sql, "new": sql}
    if "depends_on" in changes:
        given = changes["depends_on"]
    else:  # new SQL: what it reads now (old dependencies found in the old SQL would be stale)
        given = None if "sql" in diff else list(step.depends_on or [])
    depends_on = _dependencies(sql, given, earlier, step.id)
    if depends_on != list(step.depends_on or []):
        diff["depends_on"] = {"old": list(step.depends_on or []), "new": depends_on}
    if diff:  # everything checked: only now is anything changed
        step.name, step.sql, step.depends_on, step.updated_at = name, sql, depends_on, utcnow()
        _touch(project)
        _audit(session, principal, "project.step_updated", project_id, {"step_id": step.id, **diff}, context)
    return step


def delete_step(
    session: Session, principal: Principal, project_id: str, step_id: str, *, context: RequestContext | None = None
) -> None:
    """Refused (409) while a later step reads it: delete or change those first."""
    project = open_project(session, principal, project_id, need=EDIT)
    step = _step_of(session, project_id, step_id)
    readers = _readers_of(steps_of(session, project_id), step)
    if readers:
        raise Conflict(
            "step_in_use", f"Steps {', '.join(s.name for s in readers)} read this step; change or delete them first."
        )
    session.delete(step)
    _touch(project)
    _audit(session, principal, "project.step_deleted", project_id, {"step_id": step_id, "name": step.name}, context)


# -- sources -------------------------------------------------------------------------------


def attach_source(
    session: Session,
    principal: Principal,
    project_id: str,
    source_id: str,
    *,
    name: str | None = None,
    with_step: bool = True,
    context: RequestContext | None = None,
) -> tuple[ProjectSource, Step | None]:
    """Attach a source the caller may open, by `name` (default: from the source's name), and
    (with_step) add a last step `SELECT * FROM <name>`. Who reads the project later reads
    the source under their own access, never the attacher's."""
    project = open_project(session, principal, project_id, need=EDIT)
    access = open_source(session, principal, source_id, with_filter=False)
    taken = _taken_names(session, project_id)
    if name is not None:
        name = check_identifier(name, "source")
        _check_unique(session, project_id, name)
    else:
        name = identifier_from(access.opened_source.name, taken)
    attached = ProjectSource(
        id=new_id("psrc"),
        project_id=project_id,
        source_id=access.opened_source.id,
        name=name,
        added_by=principal.user_id,
        created_at=utcnow(),
    )
    session.add(attached)
    step = None
    if with_step:
        earlier = steps_of(session, project_id)
        now = utcnow()
        step = Step(
            id=new_id("stp"),
            project_id=project_id,
            name=identifier_from(f"load_{name}", taken | {name.lower()}),
            sql=f"SELECT * FROM {name}",
            position=max((s.position for s in earlier), default=-1) + 1,
            depends_on=[],
            created_by=principal.user_id,
            created_at=now,
            updated_at=now,
        )
        session.add(step)
    _touch(project)
    session.flush()
    _audit(
        session,
        principal,
        "project.source_added",
        project_id,
        {"source_id": attached.source_id, "name": name, **({"step_id": step.id} if step else {})},
        context,
    )
    return attached, step


def detach_source(
    session: Session,
    principal: Principal,
    project_id: str,
    project_source_id: str,
    *,
    context: RequestContext | None = None,
) -> None:
    """Steps that read it then report an error (until changed); nothing else breaks."""
    project = open_project(session, principal, project_id, need=EDIT)
    attached = session.get(ProjectSource, project_source_id)
    if attached is None or attached.project_id != project_id:
        raise NotFound("project_source_not_found", f"No source {project_source_id!r} in this project.")
    session.delete(attached)
    _touch(project)
    _audit(
        session,
        principal,
        "project.source_removed",
        project_id,
        {"source_id": attached.source_id, "name": attached.name},
        context,
    )


# -- step results, under the reader's access ----------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one reader gets from one step: its shape, or why it failed."""

    step_id: str
    ok: bool
    num_rows: int | None = None
    headers: tuple[str, ...] = ()
    message: str | None = None
    code: str | None = None  # the error's code (query_timeout: it took too long, no fault found)


async def step_results(
    limits: QueryLimits, principal: Principal, plan: engine.ProjectPlan, *, timeout: float | None = None
) -> list[StepResult]:
    """Every step of `plan` (the reader's plan), computed for the reader through the query pool.
    A step that fails (bad source, deleted source, an error in a step it reads, too large)
    is reported with its message; capacity refusals (429, 503) are raised as they are.
    `timeout`: at most this long per step (default: the query deadline)."""
    results = []
    for spec in plan.steps:
        try:
            table = await engine.run_step(limits, principal, plan, spec.id, timeout=timeout)
        except InvalidRequest as exc:
            results.append(StepResult(spec.id, ok=False, message=exc.message, code=exc.code))
            continue
        results.append(StepResult(spec.id, ok=True, num_rows=table.num_rows, headers=tuple(table.column_names)))
    return results
