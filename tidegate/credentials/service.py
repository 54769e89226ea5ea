"""Creating, listing, renaming and revoking API keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tidegate.access.principal import Principal
from tidegate.access.scopes import expand, validate_scopes
from tidegate.audit.record import RequestContext, record
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import display_prefix, generate_key
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.errors import Forbidden, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.models import Organization, User

DEFAULT_RATE_LIMIT = 60
MAX_RATE_LIMIT = 10_000
MAX_EXPIRY_DAYS = 3650
KEY_STATUSES = ("active", "revoked", "expired")


@dataclass
class KeyRequest:
    name: str
    scopes: list[str]
    expires_in_days: int | None = None
    rate_limit_per_minute: int | None = None
    ip_allowlist: list[str] | None = None
    source_scope: dict | None = None
    access_policy_ids: list[str] | None = None
    bound_user_id: str | None = None


@dataclass
class CreatedKey:
    key: ApiKey
    secret: str


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("invalid_name", "Key name must be 1-200 characters.")
    return name


def _check_ip_allowlist(entries: list[str] | None) -> list[str] | None:
    if entries is None:
        return None
    normalized = []
    for entry in entries:
        try:
            normalized.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError:
            raise InvalidRequest("invalid_ip_allowlist", f"{entry!r} is not an IP address or CIDR range.") from None
    if not normalized:
        raise InvalidRequest("invalid_ip_allowlist", "ip_allowlist must list at least one address (omit it to allow all).")
    return normalized


def _check_source_scope(scope: dict | None) -> dict | None:
    if scope is None:
        return None
    mode = scope.get("mode")
    if mode == "all" and set(scope) <= {"mode", "source_ids"} and not scope.get("source_ids"):
        return {"mode": "all"}
    if mode == "selected":
        ids = scope.get("source_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise InvalidRequest("invalid_source_scope", "source_scope 'selected' needs a non-empty list of source_ids.")
        return {"mode": "selected", "source_ids": sorted(set(ids))}
    raise InvalidRequest(
        "invalid_source_scope",
        'source_scope must be {"mode": "all"} or {"mode": "selected", "source_ids": [...]}.',
    )


def create_key(
    session: Session, creator: Principal, request: KeyRequest, *, pepper: bytes,
    context: RequestContext | None = None, via: str = "api",
) -> CreatedKey:
    org = session.get(Organization, creator.org_id)
    if not org.api_key_creation_enabled:
        raise Forbidden("api_key_creation_disabled", "An admin has switched off API key creation for this organization.")
    name = _check_name(request.name)
    scopes = validate_scopes(request.scopes)
    # No escalation: a new key may hold only what the caller holds right now. When a key
    # creates a key, that is the calling key's own effective scopes, not its creator's.
    missing = creator.missing(expand(scopes))
    if missing:
        raise Forbidden(
            "insufficient_scope",
            f"You cannot grant scope(s) you do not hold: {', '.join(sorted(missing))}.",
        )
    rate = request.rate_limit_per_minute if request.rate_limit_per_minute is not None else DEFAULT_RATE_LIMIT
    if not 1 <= rate <= MAX_RATE_LIMIT:
        raise InvalidRequest("invalid_rate_limit", f"rate_limit_per_minute must be between 1 and {MAX_RATE_LIMIT}.")
    expires_at = None
    if request.expires_in_days is not None:
        if not 1 <= request.expires_in_days <= MAX_EXPIRY_DAYS:
            raise InvalidRequest("invalid_expiry", f"expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}.")
        expires_at = utcnow() + timedelta(days=request.expires_in_days)
    bound_user_id = None
    if request.bound_user_id is not None:
        bound = session.get(User, request.bound_user_id)
        if bound is None or bound.org_id != creator.org_id or not bound.is_active:
            raise InvalidRequest("invalid_bound_user", f"No active user {request.bound_user_id!r} in this organization.")
        bound_user_id = bound.id
    policy_ids = None
    if request.access_policy_ids is not None:
        if not all(isinstance(p, str) and p for p in request.access_policy_ids):
            raise InvalidRequest("invalid_access_policy_ids", "access_policy_ids must be a list of policy ids.")
        policy_ids = sorted(set(request.access_policy_ids))

    secret = generate_key()
    key = ApiKey(
        id=new_id("key"),
        org_id=creator.org_id,
        name=name,
        key_prefix=display_prefix(secret),
        secret_hash=hash_secret(pepper, secret),
        scopes=scopes,
        created_by=creator.user_id,
        created_at=utcnow(),
        expires_at=expires_at,
        rate_limit_per_minute=rate,
        ip_allowlist=_check_ip_allowlist(request.ip_allowlist),
        source_scope=_check_source_scope(request.source_scope),
        access_policy_ids=policy_ids,
        bound_user_id=bound_user_id,
    )
    session.add(key)
    session.flush()
    record(session, creator, "api_key.created", org_id=creator.org_id, target_type="api_key", target_id=key.id,
           details={"name": name, "scopes": scopes, "key_prefix": key.key_prefix, "via": via,
                    "expires_at": expires_at.isoformat() if expires_at else None},
           context=context)
    return CreatedKey(key=key, secret=secret)


def _visible_keys(principal: Principal):
    query = select(ApiKey).where(ApiKey.org_id == principal.org_id)
    if not principal.is_admin:
        # Members see and manage only their own keys.
        query = query.where(ApiKey.created_by == principal.user_id)
    return query


def get_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    key = session.scalar(_visible_keys(principal).where(ApiKey.id == key_id))
    if key is None:
        raise NotFound("api_key_not_found", f"No API key {key_id!r}.")
    return key


def list_keys(
    session: Session, principal: Principal, *, limit: int, after: str | None,
    search: str | None = None, status: str | None = None,
) -> list[ApiKey]:
    query = _visible_keys(principal)
    now = utcnow()
    if search:
        pattern = search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(or_(
            ApiKey.name.ilike(f"%{pattern}%", escape="\\"),
            ApiKey.key_prefix.ilike(f"{pattern}%", escape="\\"),
        ))
    if status is not None:
        if status not in KEY_STATUSES:
            raise InvalidRequest("invalid_status", f"status must be one of: {', '.join(KEY_STATUSES)}.")
        if status == "revoked":
            query = query.where(ApiKey.revoked_at.is_not(None))
        elif status == "expired":
            query = query.where(ApiKey.revoked_at.is_(None), ApiKey.expires_at <= now)
        else:
            query = query.where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    if after:
        query = query.where(ApiKey.id > after)
    return list(session.scalars(query.order_by(ApiKey.id).limit(limit + 1)))


def rename_key(session: Session, principal: Principal, key: ApiKey, name: str, *,
               context: RequestContext | None = None) -> ApiKey:
    name = _check_name(name)
    if name != key.name:
        old = key.name
        key.name = name
        record(session, principal, "api_key.renamed", org_id=key.org_id, target_type="api_key", target_id=key.id,
               details={"old": old, "new": name}, context=context)
    return key


def revoke_key(session: Session, principal: Principal | None, key: ApiKey, *,
               context: RequestContext | None = None, via: str = "api") -> ApiKey:
    """Idempotent: revoking a revoked key changes nothing and records nothing."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        key.revoked_by = principal.user_id if principal else None
        record(session, principal, "api_key.revoked", org_id=key.org_id, target_type="api_key", target_id=key.id,
               details={"name": key.name, "key_prefix": key.key_prefix, "via": via}, context=context)
    return key
