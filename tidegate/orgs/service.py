"""Organizations and users: creation, roles, deactivation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.core.scopes import ROLE_ADMIN, ROLES
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs import embeds
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import Organization, User
from tidegate.orgs.passwords import hash_password
from tidegate.orgs.retention import check_retention_days

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
MIN_PASSWORD_LENGTH = 12


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise InvalidRequest("invalid_email", f"{email!r} is not an email address.")
    return email


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest("invalid_role", f"Unknown role {role!r}; use one of: {', '.join(ROLES)}.")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest("weak_password", f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.")
    return password


@dataclass
class NewOrganization:
    org: Organization
    admin: User


def create_organization(session: Session, name: str, admin_email: str, admin_password: str | None) -> NewOrganization:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("invalid_name", "Organization name must be 1-200 characters.")
    if session.scalar(select(Organization).where(func.lower(Organization.name) == name.lower())):
        raise Conflict("organization_exists", f"An organization named {name!r} already exists.")
    org = Organization(id=new_id("org"), name=name, api_key_creation_enabled=True)
    session.add(org)
    session.flush()
    admin = User(
        id=new_id("user"),
        org_id=org.id,
        email=normalize_email(admin_email),
        role=ROLE_ADMIN,
        password_hash=hash_password(check_password(admin_password)) if admin_password else None,
        is_active=True,
    )
    session.add(admin)
    session.flush()
    record(
        session,
        None,
        "organization.created",
        org_id=org.id,
        target_type="organization",
        target_id=org.id,
        details={"name": name, "admin_user_id": admin.id},
    )
    bump_access_epoch(session, org.id)
    return NewOrganization(org=org, admin=admin)


def get_org(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("organization_not_found", f"No organization {org_id!r}.")
    return org


def find_org(session: Session, id_or_name: str) -> Organization:
    """Operator lookup for the CLI: an org id or an exact (case-insensitive) name."""
    org = session.get(Organization, id_or_name) or session.scalar(
        select(Organization).where(func.lower(Organization.name) == id_or_name.strip().lower())
    )
    if org is None:
        raise NotFound("organization_not_found", f"No organization {id_or_name!r}.")
    return org


def get_user(session: Session, org_id: str, user_id: str, *, include_inactive: bool = False) -> User:
    """By tidegate id or, as the Querri SDK allows, by external id."""
    user = session.get(User, user_id)
    if user is None or user.org_id != org_id:
        user = session.scalar(select(User).where(User.org_id == org_id, User.external_id == user_id))
    if user is None or (not user.is_active and not include_inactive):
        raise NotFound("user_not_found", f"No user {user_id!r} in this organization.")
    return user


def get_user_by_email(session: Session, org_id: str, email: str) -> User:
    user = session.scalar(select(User).where(User.org_id == org_id, User.email == normalize_email(email)))
    if user is None:
        raise NotFound("user_not_found", f"No user with email {email!r} in this organization.")
    return user


def list_users(session: Session, org_id: str, *, limit: int, after: str | None, external_id: str | None) -> list[User]:
    query = select(User).where(User.org_id == org_id, User.is_active.is_(True))
    if external_id is not None:
        query = query.where(User.external_id == external_id)
    if after:
        query = query.where(User.id > after)
    return list(session.scalars(query.order_by(User.id).limit(limit + 1)))


def create_user(
    session: Session,
    actor: Principal | None,
    org_id: str,
    *,
    email: str,
    role: str,
    first_name: str | None = None,
    last_name: str | None = None,
    external_id: str | None = None,
    password: str | None = None,
    context: RequestContext | None = None,
) -> User:
    email = normalize_email(email)
    check_role(role)
    lock_organization(session, org_id)
    if session.scalar(select(User.id).where(User.org_id == org_id, User.email == email)):
        raise Conflict("user_exists", f"A user with email {email!r} already exists in this organization.")
    if external_id is not None and session.scalar(
        select(User.id).where(User.org_id == org_id, User.external_id == external_id)
    ):
        raise Conflict("external_id_exists", f"A user with external id {external_id!r} already exists.")
    user = User(
        id=new_id("user"),
        org_id=org_id,
        email=email,
        role=role,
        first_name=first_name,
        last_name=last_name,
        external_id=external_id,
        password_hash=hash_password(check_password(password)) if password else None,
        is_active=True,
    )
    session.add(user)
    session.flush()
    record(
        session,
        actor,
        "user.created",
        org_id=org_id,
        target_type="user",
        target_id=user.id,
        details={"email": email, "role": role},
        context=context,
    )
    bump_access_epoch(session, org_id)
    return user


def lock_organization(session: Session, org_id: str) -> None:
    """Hold the organization's write lock until the caller's transaction ends.

    Every check-then-act rule of an organization (the last active admin, unique emails,
    external ids and names) takes it before its check, so two concurrent changes run one
    after the other and the second checks what the first committed. On PostgreSQL the
    UPDATE row-locks the organization (READ COMMITTED: later reads see the other
    transaction's commit); on SQLite the first write of a transaction takes the database's
    write lock, and pysqlite runs the reads before it outside the transaction, so reads
    after it are current. (The bump is what `audit.record` does for every change anyway.)
    """
    session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(access_epoch=Organization.access_epoch + 1)
        .execution_options(synchronize_session=False)
    )


def _active_admin_count(session: Session, org_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.org_id == org_id, User.role == ROLE_ADMIN, User.is_active.is_(True))
        )
        or 0
    )


def _guard_last_admin(session: Session, user: User) -> None:
    # An organization with no active admin could never be administered again.
    if user.role == ROLE_ADMIN and _active_admin_count(session, user.org_id) <= 1:
        raise Conflict("last_admin", "This is the organization's only active admin; promote another user first.")


def update_user(
    session: Session,
    actor: Principal | None,
    user: User,
    *,
    role: str | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    context: RequestContext | None = None,
) -> User:
    changes: dict[str, dict] = {}
    if role is not None and role != user.role:
        check_role(role)
        lock_organization(session, user.org_id)
        session.refresh(user)  # as committed by a concurrent change we waited for
        if not user.is_active:
            raise Conflict("user_inactive", f"{user.email} was deactivated meanwhile.")
    if role is not None and role != user.role:
        _guard_last_admin(session, user)
        changes["role"] = {"old": user.role, "new": role}
        user.role = role
    for field, value in (("first_name", first_name), ("last_name", last_name)):
        if value is not None and value != getattr(user, field):
            changes[field] = {"old": getattr(user, field), "new": value}
            setattr(user, field, value)
    if changes:
        action = "user.role_changed" if "role" in changes else "user.updated"
        record(
            session,
            actor,
            action,
            org_id=user.org_id,
            target_type="user",
            target_id=user.id,
            details=changes,
            context=context,
        )
        bump_access_epoch(session, user.org_id)
    return user


def deactivate_user(
    session: Session, actor: Principal | None, user: User, *, context: RequestContext | None = None
) -> User:
    """Deactivated users cannot sign in, and every key they created stops working."""
    if not user.is_active:
        return user
    lock_organization(session, user.org_id)
    session.refresh(user)  # as committed by a concurrent change we waited for
    if not user.is_active:
        return user
    _guard_last_admin(session, user)
    user.is_active = False
    user.deactivated_at = utcnow()
    record(
        session,
        actor,
        "user.deactivated",
        org_id=user.org_id,
        target_type="user",
        target_id=user.id,
        details={"email": user.email},
        context=context,
    )
    bump_access_epoch(session, user.org_id)
    return user


def get_or_create_external(
    session: Session,
    actor: Principal,
    org_id: str,
    external_id: str,
    *,
    email: str | None,
    role: str,
    first_name: str | None,
    last_name: str | None,
    context: RequestContext | None = None,
) -> tuple[User, bool]:
    lock_organization(session, org_id)  # two concurrent PUTs: one creates, the other finds it
    existing = session.scalar(select(User).where(User.org_id == org_id, User.external_id == external_id))
    if existing is not None:
        if not existing.is_active:
            raise Conflict("user_inactive", f"The user with external id {external_id!r} is deactivated.")
        return existing, False
    if not email:
        raise InvalidRequest("missing_field", "email is required to create a user.")
    user = create_user(
        session,
        actor,
        org_id,
        email=email,
        role=role,
        first_name=first_name,
        last_name=last_name,
        external_id=external_id,
        context=context,
    )
    return user, True


def unlink_external_id(
    session: Session, actor: Principal, org_id: str, external_id: str, *, context: RequestContext | None = None
) -> User:
    user = session.scalar(select(User).where(User.org_id == org_id, User.external_id == external_id))
    if user is None:
        raise NotFound("user_not_found", f"No user with external id {external_id!r}.")
    user.external_id = None
    record(
        session,
        actor,
        "user.external_id_removed",
        org_id=org_id,
        target_type="user",
        target_id=user.id,
        details={"external_id": external_id},
        context=context,
    )
    bump_access_epoch(session, org_id)
    return user


MAX_KEYS_PER_USER = 100_000
MAX_USER_RATE_LIMIT = 100_000_000


def check_max_keys_per_user(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEYS_PER_USER:
        raise InvalidRequest(
            "invalid_max_keys_per_user",
            f"max_keys_per_user must be a whole number between 1 and {MAX_KEYS_PER_USER:,}.",
        )
    return value


MAX_UNUSED_KEY_DAYS = 3650


def check_unused_key_days(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_UNUSED_KEY_DAYS:
        raise InvalidRequest(
            "invalid_unused_key_days",
            f"unused_key_days must be a whole number of days between 1 and {MAX_UNUSED_KEY_DAYS:,}.",
        )
    return value


def check_user_rate_limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_USER_RATE_LIMIT:
        raise InvalidRequest(
            "invalid_user_rate_limit",
            f"user_rate_limit_per_minute must be a whole number between 1 and {MAX_USER_RATE_LIMIT:,}.",
        )
    return value


def update_settings(
    session: Session,
    actor: Principal | None,
    org: Organization,
    *,
    api_key_creation_enabled: bool | None,
    max_keys_per_user: int | None = None,
    user_rate_limit_per_minute: int | None = None,
    embeds_enabled: bool | None = None,
    embed_allowed_origins: list[str] | None = None,
    embed_ui_config: dict[str, Any] | None = None,
    public_share_links_enabled: bool | None = None,
    unused_key_days: int | None = None,
    audit_retention_days: int | None = None,
    context: RequestContext | None = None,
) -> Organization:
    """Validates everything before changing anything: a refused update changes nothing."""
    if unused_key_days is not None:
        check_unused_key_days(unused_key_days)
    if audit_retention_days is not None:
        check_retention_days(audit_retention_days)
    if max_keys_per_user is not None:
        check_max_keys_per_user(max_keys_per_user)
    if user_rate_limit_per_minute is not None:
        check_user_rate_limit(user_rate_limit_per_minute)
    if embed_allowed_origins is not None:
        embed_allowed_origins = embeds.check_allowed_origins(embed_allowed_origins)
    if embed_ui_config is not None:
        embed_ui_config = embeds.check_ui_config(embed_ui_config)
    changes = {}
    for field, value in (
        ("api_key_creation_enabled", api_key_creation_enabled),
        ("max_keys_per_user", max_keys_per_user),
        ("user_rate_limit_per_minute", user_rate_limit_per_minute),
        ("embeds_enabled", embeds_enabled),
        ("embed_allowed_origins", embed_allowed_origins),
        ("embed_ui_config", embed_ui_config),
        # Off deactivates every public dashboard link at once (checked on each use).
        ("public_share_links_enabled", public_share_links_enabled),
        ("unused_key_days", unused_key_days),
        ("audit_retention_days", audit_retention_days),
    ):
        if value is not None and value != getattr(org, field):
            changes[field] = {"old": getattr(org, field), "new": value}
            setattr(org, field, value)
    if changes:
        record(
            session,
            actor,
            "org.settings_updated",
            org_id=org.id,
            target_type="organization",
            target_id=org.id,
            details=changes,
            context=context,
        )
        bump_access_epoch(session, org.id)
    return org
