"""Projects, their steps (with what one reader gets from each), sources and runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from tidegate.catalog.analysis import Project, ProjectSource, Step
from tidegate.db.base import isoformat

if TYPE_CHECKING:  # types only: the wire shapes do not pull the analysis layer in
    from tidegate.analysis.projects import StepResult
    from tidegate.analysis.runs import RunState

STEP_TYPE = "duckdb_query"


class StepLike(Protocol):
    """A stored step or the engine's StepSpec of it."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def sql(self) -> str: ...
    @property
    def depends_on(self) -> Sequence[str]: ...


class StepSummaryOut(BaseModel):
    """The SDK's StepSummary, as one reader sees it (status, counts and headers are computed
    under the reader's access), plus the step's `sql` (tidegate extension)."""

    id: str
    name: str
    type: str
    status: str  # complete | error
    order: int
    has_data: bool
    has_figure: bool
    parent: str | None  # the step it reads first, if any
    children: list[str]  # the steps that read it (as dependents)
    dependencies: list[str]
    dependents: list[str]
    figure_url: str | None  # steps draw no figures (dashboards' widgets do)
    message: str | None
    num_rows: int | None
    num_cols: int | None
    headers: list[str] | None
    sql: str

    @classmethod
    def of(cls, step: StepLike, order: int, dependents: list[str], result: StepResult | None) -> StepSummaryOut:
        ok = result is not None and result.ok
        return cls(
            id=step.id,
            name=step.name,
            type=STEP_TYPE,
            status="complete" if ok else "error",
            order=order,
            has_data=ok,
            has_figure=False,
            parent=next(iter(step.depends_on or []), None),
            children=dependents,
            dependencies=list(step.depends_on or []),
            dependents=dependents,
            figure_url=None,
            message=None if ok or result is None else result.message,
            num_rows=result.num_rows if ok and result else None,
            num_cols=len(result.headers) if ok and result else None,
            headers=list(result.headers) if ok and result else None,
            sql=step.sql,
        )

    @classmethod
    def all_of(cls, steps: Sequence[StepLike], results: Sequence[StepResult]) -> list[StepSummaryOut]:
        by_id = {r.step_id: r for r in results}
        dependents: dict[str, list[str]] = {s.id: [] for s in steps}
        for step in steps:
            for dep in step.depends_on or []:
                dependents.setdefault(dep, []).append(step.id)
        return [cls.of(s, i, dependents.get(s.id, []), by_id.get(s.id)) for i, s in enumerate(steps)]


class ProjectSourceOut(BaseModel):
    """A source a project's steps read by `name` (tidegate extension)."""

    id: str
    source_id: str
    name: str
    added_by: str
    created_at: str | None

    @classmethod
    def of(cls, attached: ProjectSource) -> ProjectSourceOut:
        return cls(
            id=attached.id,
            source_id=attached.source_id,
            name=attached.name,
            added_by=attached.added_by,
            created_at=isoformat(attached.created_at),
        )


class ProjectOut(BaseModel):
    id: str
    name: str
    description: str | None
    status: str  # the last run's: idle | running | complete | error
    step_count: int
    chat_count: int
    created_by: str
    created_at: str | None
    updated_at: str | None
    revision: int

    @classmethod
    def fields_of(cls, project: Project, status: str, step_count: int) -> dict[str, Any]:
        return {
            "id": project.id,
            "name": project.name,
            "description": project.description,
            "status": status,
            "step_count": step_count,
            "chat_count": 0,  # chats are an AI feature tidegate does not have
            "created_by": project.created_by,
            "created_at": isoformat(project.created_at),
            "updated_at": isoformat(project.updated_at),
            "revision": project.revision or 0,
        }

    @classmethod
    def of(cls, project: Project, status: str, step_count: int) -> ProjectOut:
        return cls(**cls.fields_of(project, status, step_count))


class ProjectDetailOut(ProjectOut):
    steps: list[StepSummaryOut]
    sources: list[ProjectSourceOut]


class StepOut(BaseModel):
    """A step as stored (after POST or PATCH): its rows are read from .../steps/{id}/data."""

    id: str
    project_id: str
    name: str
    type: str
    sql: str
    order: int
    dependencies: list[str]
    created_by: str
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, step: Step, order: int) -> StepOut:
        return cls(
            id=step.id,
            project_id=step.project_id,
            name=step.name,
            type=STEP_TYPE,
            sql=step.sql,
            order=order,
            dependencies=list(step.depends_on or []),
            created_by=step.created_by,
            created_at=isoformat(step.created_at),
            updated_at=isoformat(step.updated_at),
        )


class StepDataOut(BaseModel):
    """The SDK's DataPage of a step's rows, for one reader."""

    data: list[dict[str, Any]]
    total_count: int
    page: int
    page_size: int
    columns: list[str]


class AddSourceOut(BaseModel):
    """The SDK's AddSourceResponse, plus the attached source (tidegate extension)."""

    step_id: str
    project_id: str
    status: str  # running (a run was started) | added
    source_id: str
    project_source_id: str
    name: str


class RunOut(BaseModel):
    id: str
    run_id: str
    status: str


class RunStatusOut(BaseModel):
    id: str
    status: str  # idle | running | complete | error
    is_running: bool
    run_id: str | None
    message: str | None
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, state: RunState) -> RunStatusOut:
        return cls(
            id=state.project_id,
            status=state.status,
            is_running=state.is_running,
            run_id=state.run_id,
            message=state.message,
            started_at=state.started_at,
            finished_at=state.finished_at,
        )


class RunCancelOut(BaseModel):
    id: str
    cancelled: bool
    run_id: str | None
