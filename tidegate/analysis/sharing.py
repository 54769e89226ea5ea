"""Sharing a project or a dashboard with users of its organization (view | edit).

Only its owner (its creator, or an admin) shares it. Sharing never shares rows: whoever it
is shared with reads every step and widget under their own access.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tidegate.access.analysis import OWNER, open_dashboard, open_project
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.analysis import (
    RESOURCE_DASHBOARD,
    RESOURCE_PROJECT,
    RESOURCE_TYPES,
    Dashboard,
    Project,
    ResourceShare,
)
from tidegate.catalog.models import SHARE_PERMISSIONS
from tidegate.core.principal import Principal
from tidegate.db.base import utcnow
from tidegate.errors import InvalidRequest
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.service import get_user


def _open_owned(session: Session, principal: Principal, resource_type: str, resource_id: str) -> Project | Dashboard:
    if resource_type == RESOURCE_PROJECT:
        return open_project(session, principal, resource_id, need=OWNER)
    if resource_type == RESOURCE_DASHBOARD:
        return open_dashboard(session, principal, resource_id, need=OWNER)
    raise InvalidRequest("invalid_resource_type", f"resource_type must be one of: {', '.join(RESOURCE_TYPES)}.")


def _check_permission(permission: str) -> str:
    if permission not in SHARE_PERMISSIONS:
        raise InvalidRequest("invalid_permission", f"permission must be one of: {', '.join(SHARE_PERMISSIONS)}.")
    return permission


def list_shares(session: Session, principal: Principal, resource_type: str, resource_id: str) -> list[ResourceShare]:
    _open_owned(session, principal, resource_type, resource_id)
    return list(
        session.scalars(
            select(ResourceShare)
            .where(ResourceShare.resource_type == resource_type, ResourceShare.resource_id == resource_id)
            .order_by(ResourceShare.created_at, ResourceShare.id)
        )
    )


def share(
    session: Session,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    user_id: str,
    permission: str = "view",
    *,
    context: RequestContext | None = None,
) -> ResourceShare:
    """Grant (or change) `user_id`'s permission; the user must be an active user of the org."""
    resource = _open_owned(session, principal, resource_type, resource_id)
    _check_permission(permission)
    user = get_user(session, principal.org_id, user_id)
    grant = session.scalar(
        select(ResourceShare).where(
            ResourceShare.resource_type == resource_type,
            ResourceShare.resource_id == resource_id,
            ResourceShare.user_id == user.id,
        )
    )
    old = grant.permission if grant else None
    if grant is None:
        grant = ResourceShare(
            id=new_id("shr"),
            org_id=principal.org_id,
            resource_type=resource_type,
            resource_id=resource_id,
            user_id=user.id,
            permission=permission,
            granted_by=principal.user_id,
            created_at=utcnow(),
        )
        session.add(grant)
    else:
        grant.permission = permission
        grant.granted_by = principal.user_id
    session.flush()
    record(
        session,
        principal,
        f"{resource_type}.shared",
        org_id=principal.org_id,
        target_type=resource_type,
        target_id=resource_id,
        details={"user_id": user.id, "permission": permission, "old_permission": old, "name": resource.name},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return grant


def unshare(
    session: Session,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    user_id: str,
    *,
    context: RequestContext | None = None,
) -> bool:
    """True if a share was removed (False: there was none)."""
    _open_owned(session, principal, resource_type, resource_id)
    user = get_user(session, principal.org_id, user_id, include_inactive=True)
    removed = session.execute(
        delete(ResourceShare).where(
            ResourceShare.resource_type == resource_type,
            ResourceShare.resource_id == resource_id,
            ResourceShare.user_id == user.id,
        )
    ).rowcount  # type: ignore[attr-defined]  # a DELETE returns a CursorResult
    if removed:
        record(
            session,
            principal,
            f"{resource_type}.unshared",
            org_id=principal.org_id,
            target_type=resource_type,
            target_id=resource_id,
            details={"user_id": user.id},
            context=context,
        )
        bump_access_epoch(session, principal.org_id)
    return bool(removed)
