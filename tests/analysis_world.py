"""Projects, steps and shares written straight to the database, for the dashboard tests
(the projects API is another module's; widgets only need the rows to exist)."""

from __future__ import annotations

from sqlalchemy import delete

from tidegate.catalog.analysis import Project, ProjectSource, ResourceShare, Step
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.ids import new_id

SALES = [
    {"region": "US", "tier": "gold", "amount": 10},
    {"region": "US", "tier": "silver", "amount": 20},
    {"region": "EU", "tier": "gold", "amount": 30},
    {"region": "EU", "tier": "silver", "amount": 40},
    {"region": "APAC", "tier": "gold", "amount": 50},
]


def make_project(
    database_url: str, org_id: str, owner_id: str, sources: dict[str, str], steps: list[tuple[str, str]]
) -> tuple[str, list[str]]:
    """A project owned by `owner_id` reading `sources` (name -> source id) with `steps`
    (name, sql) in order; returns its id and its steps' ids."""
    with session_scope(database_url) as session:
        project = Project(
            id=new_id("prj"), org_id=org_id, name="analysis", created_by=owner_id, created_at=utcnow(), revision=0
        )
        session.add(project)
        session.flush()
        for name, source_id in sources.items():
            session.add(
                ProjectSource(
                    id=new_id("psrc"), project_id=project.id, source_id=source_id, name=name, added_by=owner_id
                )
            )
        step_ids = []
        for position, (name, sql) in enumerate(steps):
            step = Step(
                id=new_id("stp"),
                project_id=project.id,
                name=name,
                sql=sql,
                position=position,
                depends_on=[],
                created_by=owner_id,
            )
            session.add(step)
            step_ids.append(step.id)
        return project.id, step_ids


def share(database_url: str, org_id: str, resource_type: str, resource_id: str, user_id: str, by: str) -> None:
    with session_scope(database_url) as session:
        session.add(
            ResourceShare(
                id=new_id("shr"),
                org_id=org_id,
                resource_type=resource_type,
                resource_id=resource_id,
                user_id=user_id,
                permission="view",
                granted_by=by,
            )
        )


def delete_step(database_url: str, step_id: str) -> None:
    with session_scope(database_url) as session:
        session.execute(delete(Step).where(Step.id == step_id))


def delete_project(database_url: str, project_id: str) -> None:
    with session_scope(database_url) as session:
        session.execute(delete(Step).where(Step.project_id == project_id))
        session.execute(delete(ProjectSource).where(ProjectSource.project_id == project_id))
        session.execute(delete(Project).where(Project.id == project_id))
