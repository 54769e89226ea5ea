"""Fixtures for the access-policy library: a real SQLite database file, no mocks.

Tables come from `Base.metadata.create_all` (the Alembic migration for the policy tables is
generated later). The engine is tidegate's own (`get_engine`: WAL, foreign keys on), and
every step runs in its own transaction through `session_scope`, as requests do.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

import tidegate.access.models  # noqa: F401  (registers the policy tables)
import tidegate.tables  # noqa: F401  (registers every other table)
from tidegate.access import policies
from tidegate.core.principal import Principal
from tidegate.credentials import service as keys_service
from tidegate.db.base import Base
from tidegate.db.engine import get_engine, session_scope
from tidegate.orgs import service as orgs

PEPPER = b"p" * 32


@pytest.fixture(scope="session")
def db_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('access') / 'access.db'}"
    Base.metadata.create_all(get_engine(url))
    yield url
    get_engine(url).dispose()


@dataclass
class OrgWorld:
    """One fresh organization (so tests never see each other's rows) and helpers."""

    url: str
    id: str
    admin_id: str

    def tx(self):
        return session_scope(self.url)

    @property
    def admin(self) -> Principal:
        return Principal.for_user(self.id, self.admin_id, "admin")

    def user(self, role: str = "member", external_id: str | None = None) -> str:
        with self.tx() as s:
            return orgs.create_user(
                s, None, self.id, email=f"u-{uuid.uuid4().hex[:10]}@example.com", role=role, external_id=external_id
            ).id

    def deactivate(self, user_id: str) -> None:
        with self.tx() as s:
            orgs.deactivate_user(s, None, orgs.get_user(s, self.id, user_id))

    def policy(self, name: str | None = None, row_filters=None, source_ids=None, users=(), column_rules=None) -> str:
        with self.tx() as s:
            p = policies.create_policy(
                s,
                self.admin,
                self.id,
                name=name or f"p-{uuid.uuid4().hex[:8]}",
                row_filters=row_filters,
                source_ids=source_ids,
                column_rules=column_rules,
            )
            if users:
                policies.assign_users(s, self.admin, p, list(users))
            return p.id

    def group(self, name: str | None = None, members=(), policy_ids=()) -> str:
        with self.tx() as s:
            g = policies.create_group(s, self.admin, self.id, name=name or f"g-{uuid.uuid4().hex[:8]}")
            if members:
                policies.add_group_members(s, self.admin, g, list(members))
            if policy_ids:
                policies.assign_group_policies(s, self.admin, g, list(policy_ids))
            return g.id

    def deny_by_default(self, enabled: bool) -> None:
        with self.tx() as s:
            policies.set_deny_by_default(s, self.admin, orgs.get_org(s, self.id), enabled)

    def key(self, creator_id: str, access_policy_ids=None, bound_user_id=None) -> str:
        with self.tx() as s:
            creator = orgs.get_user(s, self.id, creator_id)
            principal = Principal.for_user(self.id, creator.id, creator.role)
            created = keys_service.create_key(
                s,
                principal,
                keys_service.KeyRequest(
                    name="k", scopes=["data:read"], access_policy_ids=access_policy_ids, bound_user_id=bound_user_id
                ),
                pepper=PEPPER,
            )
            return created.key.id

    def user_filter(self, user_id: str, source_id: str, columns: list[str]):
        with self.tx() as s:
            return policies.resolve_user_filter(s, self.id, user_id, source_id, columns)

    def key_filter(self, key_id: str, source_id: str, columns: list[str]):
        from tidegate.credentials.bounds import restrictions_of
        from tidegate.credentials.models import ApiKey

        with self.tx() as s:
            return policies.resolve_key_filter(s, restrictions_of(s.get(ApiKey, key_id)), source_id, columns)


@pytest.fixture
def make_world(db_url):
    def make() -> OrgWorld:
        with session_scope(db_url) as s:
            created = orgs.create_organization(
                s, f"org-{uuid.uuid4().hex[:12]}", f"admin-{uuid.uuid4().hex[:6]}@example.com", None
            )
            return OrgWorld(db_url, created.org.id, created.admin.id)

    return make


@pytest.fixture
def world(make_world) -> OrgWorld:
    return make_world()


def visible(row_filter, rows: list[dict]) -> list[dict]:
    """Apply a RowFilter to in-memory rows exactly as its docstring defines it (values as text)."""
    if row_filter.deny_all:
        return []
    return [r for r in rows if all(str(r[c.column]) in c.values for c in row_filter.clauses)]
