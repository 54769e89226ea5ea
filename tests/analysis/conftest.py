"""A real world for the step engine: an organization, users, sources with rows, policies
made through the services (not mocks), and projects stored as the catalog stores them.

The projects API is not ours (another module writes projects): a project, its sources and
steps are inserted as rows, exactly as `tidegate.catalog.analysis` defines them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

import tidegate.tables  # noqa: F401  (registers every table)
from tidegate.access import policies
from tidegate.analysis import engine as step_engine
from tidegate.catalog.analysis import RESOURCE_PROJECT, Project, ProjectSource, ResourceShare, Step
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.data import engine as data_engine
from tidegate.data import service as data_service
from tidegate.data import storage
from tidegate.db.engine import session_scope
from tidegate.ids import new_id
from tidegate.orgs import service as orgs

SALES = [
    {"region": "US", "product": "a", "amount": 10},
    {"region": "US", "product": "b", "amount": 20},
    {"region": "EU", "product": "a", "amount": 5},
    {"region": "EU", "product": "c", "amount": 7},
    {"region": "APAC", "product": "b", "amount": 1},
]


@pytest.fixture(autouse=True)
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    data_engine.configure(data_dir=path)
    step_engine.clear_cache()
    yield path
    step_engine.clear_cache()
    data_engine.clear_cache()
    storage.configure(None)


@dataclass
class World:
    url: str
    settings: Settings
    org_id: str
    admin_id: str

    def tx(self):
        return session_scope(self.url)

    @property
    def admin(self) -> Principal:
        return Principal.for_user(self.org_id, self.admin_id, "admin")

    def reader(self, user_id: str) -> Principal:
        return Principal.for_user(self.org_id, user_id, "member")

    def user(self) -> str:
        with self.tx() as s:
            return orgs.create_user(
                s, None, self.org_id, email=f"u-{uuid.uuid4().hex[:10]}@example.com", role="member"
            ).id

    def source(self, rows=SALES, name: str = "sales", shared_with=()) -> str:
        with self.tx() as s:
            source = data_service.create_source(s, self.admin, self.settings, name=name, rows=list(rows))
            for user_id in shared_with:
                data_service.share_source(s, self.admin, source.id, user_id, "view")
            return source.id

    def replace_rows(self, source_id: str, rows) -> None:
        with self.tx() as s:
            data_service.write_rows(s, self.admin, source_id, list(rows), replace=True)

    def delete_source(self, source_id: str) -> None:
        with self.tx() as s:
            data_service.delete_source(s, self.admin, source_id)

    def key_reader(self, user_id: str, access_policy_ids: list[str]) -> Principal:
        """A Principal of a new key of `user_id`'s, narrowed by its own access policies."""
        from tidegate.credentials import service as keys_service
        from tidegate.credentials.bounds import restrictions_of

        with self.tx() as s:
            creator = Principal.for_user(self.org_id, user_id, "member")
            created = keys_service.create_key(
                s,
                creator,
                keys_service.KeyRequest(name="k", scopes=["data:read"], access_policy_ids=access_policy_ids),
                pepper=self.settings.pepper,
            )
            return Principal.for_key("member", restrictions_of(created.key))

    def policy(self, column: str, values: list[str], users=()) -> str:
        with self.tx() as s:
            p = policies.create_policy(
                s,
                self.admin,
                self.org_id,
                name=f"p-{uuid.uuid4().hex[:8]}",
                row_filters=[{"column": column, "values": values}],
            )
            if users:
                policies.assign_users(s, self.admin, p, list(users))
            return p.id

    def edit_policy(self, policy_id: str, column: str, values: list[str]) -> None:
        with self.tx() as s:
            p = policies.get_policy(s, self.org_id, policy_id)
            policies.update_policy(s, self.admin, p, row_filters=[{"column": column, "values": values}])

    def project(self, sources: dict[str, str], steps: list[tuple[str, str]], shared_with=()) -> Project:
        """A project of the admin's: `sources` name -> source id, `steps` (name, sql) in order."""
        with self.tx() as s:
            project = Project(id=new_id("prj"), org_id=self.org_id, name="p", created_by=self.admin_id, revision=1)
            s.add(project)
            s.flush()
            for name, source_id in sources.items():
                s.add(
                    ProjectSource(
                        id=new_id("psrc"), project_id=project.id, source_id=source_id, name=name, added_by=self.admin_id
                    )
                )
            for position, (name, sql) in enumerate(steps):
                s.add(
                    Step(
                        id=new_id("stp"),
                        project_id=project.id,
                        name=name,
                        sql=sql,
                        position=position,
                        depends_on=[],
                        created_by=self.admin_id,
                    )
                )
            for user_id in shared_with:
                s.add(
                    ResourceShare(
                        id=new_id("shr"),
                        org_id=self.org_id,
                        resource_type=RESOURCE_PROJECT,
                        resource_id=project.id,
                        user_id=user_id,
                        permission="view",
                        granted_by=self.admin_id,
                    )
                )
            return project

    def plan(self, principal: Principal, project_id: str) -> step_engine.ProjectPlan:
        with self.tx() as s:
            return step_engine.plan(s, principal, project_id)

    def step_id(self, plan: step_engine.ProjectPlan, name: str) -> str:
        return next(step.id for step in plan.steps if step.name == name)


@pytest.fixture
def world(settings) -> World:
    """A fresh organization in the migrated database (SQLite and PostgreSQL: the root
    conftest's `settings`), so that the 0009 tables are read as migrated."""
    db_url = settings.database_url
    with session_scope(db_url) as s:
        created = orgs.create_organization(
            s, f"org-{uuid.uuid4().hex[:12]}", f"admin-{uuid.uuid4().hex[:6]}@example.com", None
        )
        return World(db_url, settings, created.org.id, created.admin.id)
