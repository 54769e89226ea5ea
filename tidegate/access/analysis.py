"""Who may open which project or dashboard (visibility and permission, never rows).

- A project or dashboard is private to its creator (its owner) until shared with a user,
  view or edit; admins see and manage every one of their organization.
- A key (or embed session) sees one only if EVERY user it acts for may (its creator, its
  bound user, a session's user): the same subjects as sources, the weaker permission wins.
- Rows are not decided here: a step or widget is always computed under the reader's own
  access to each source it reads (tidegate.analysis), so sharing a project never shares
  its author's rows.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import ColumnElement, Select, exists, false, or_, select
from sqlalchemy.orm import Session

from tidegate.access.sources import EDIT, OWNER, VIEW, at_least, subjects_of, weakest
from tidegate.catalog.analysis import RESOURCE_DASHBOARD, RESOURCE_PROJECT, Dashboard, Project, ResourceShare
from tidegate.core.principal import Principal
from tidegate.core.scopes import ROLE_ADMIN
from tidegate.errors import Forbidden, NotFound
from tidegate.orgs.models import User

__all__ = ["EDIT", "OWNER", "VIEW", "at_least", "open_dashboard", "open_project", "permission_of", "visible_query"]

Resource = TypeVar("Resource", Project, Dashboard)
_TYPE_OF: dict[type, str] = {Project: RESOURCE_PROJECT, Dashboard: RESOURCE_DASHBOARD}


def _user_may_see(model: type[Project] | type[Dashboard], user: User) -> ColumnElement[bool]:
    if user.role == ROLE_ADMIN:
        return model.org_id == user.org_id
    shared = exists().where(
        ResourceShare.resource_type == _TYPE_OF[model],
        ResourceShare.resource_id == model.id,
        ResourceShare.user_id == user.id,
    )
    return (model.org_id == user.org_id) & or_(model.created_by == user.id, shared)


def visible_query(session: Session, principal: Principal, model: type[Resource]) -> Select[Resource]:
    """A SELECT of the projects (or dashboards) this caller may open now."""
    query = select(model).where(model.org_id == principal.org_id)
    subjects = subjects_of(session, principal)
    if not subjects:
        return query.where(false())
    for user in subjects:
        query = query.where(_user_may_see(model, user))
    return query


def permission_of(session: Session, user: User, resource: Project | Dashboard) -> str | None:
    """`user`'s permission on it: owner (its creator, or an admin), edit, view, or None."""
    if resource.org_id != user.org_id:
        return None
    if user.role == ROLE_ADMIN or resource.created_by == user.id:
        return OWNER
    return session.scalar(
        select(ResourceShare.permission).where(
            ResourceShare.resource_type == _TYPE_OF[type(resource)],
            ResourceShare.resource_id == resource.id,
            ResourceShare.user_id == user.id,
        )
    )


def _open(session: Session, principal: Principal, model: type[Resource], resource_id: str, need: str) -> Resource:
    kind = _TYPE_OF[model]
    missing = NotFound(f"{kind}_not_found", f"No {kind} {resource_id!r}.")
    resource = session.get(model, resource_id)
    if resource is None or resource.org_id != principal.org_id:
        raise missing
    found = [permission_of(session, user, resource) for user in subjects_of(session, principal)]
    permissions = [p for p in found if p is not None]
    if not permissions or len(permissions) < len(found):
        raise missing  # never reveal that it exists
    permission = weakest(permissions)
    if not at_least(permission, need):
        raise Forbidden(f"{kind}_permission_denied", f"You need {need} permission on this {kind}.")
    return resource


def open_project(session: Session, principal: Principal, project_id: str, *, need: str = VIEW) -> Project:
    """The project if this caller may open it with `need` (view, edit, owner); else 404, or
    403 when it may see it but not with `need`."""
    return _open(session, principal, Project, project_id, need)


def open_dashboard(session: Session, principal: Principal, dashboard_id: str, *, need: str = VIEW) -> Dashboard:
    """As open_project, for a dashboard."""
    return _open(session, principal, Dashboard, dashboard_id, need)
