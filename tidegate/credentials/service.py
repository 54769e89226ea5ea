"""Creating, listing, renaming and revoking API keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tidegate.access.policies import validate_policy_ids
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
        # Every id must name a policy of this organization now; a key's own policies can
        # only narrow what it reads, and an unknown id would silently deny everything.
        policy_ids = sorted(set(validate_policy_ids(session, creator.org_id, request.access_policy_ids)))

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


MAX_ROTATION_GRACE = timedelta(days=30)


def rotate_key(
    session: Session, principal: Principal, key: ApiKey, *, grace: timedelta, pepper: bytes,
    context: RequestContext | None = None, via: str = "api",
) -> CreatedKey:
    """Replace `key` with a new key of the same settings, and retire the old one.

    The replacement has the old key's name, scopes, rate limit, IP allowlist, source scope,
    access policies, bound user and lifetime (counted from now). With `grace` zero the old
    key is revoked at once; otherwise its `expires_at` is set to now + grace (never later
    than it already was), so it keeps working for the grace period and is then refused
    with the ordinary `api_key_expired` error. Only the key's own creator may rotate it: a
    replacement made by someone else would act with that person's permissions.
    """
    now = utcnow()
    if key.created_by != principal.user_id:
        raise Forbidden("not_key_owner", "Only the user who created a key can rotate it; revoke it instead.")
    if key.status_at(now) != "active":
        raise InvalidRequest("api_key_not_active", "Only an active key can be rotated.")
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise InvalidRequest("invalid_grace_period", "The grace period must be between 0 and 30 days.")
    lifetime_days = None
    if key.expires_at is not None:
        lifetime_days = max(1, min(MAX_EXPIRY_DAYS, round((key.expires_at - key.created_at) / timedelta(days=1))))
    created = create_key(
        session, principal,
        KeyRequest(
            name=key.name,
            scopes=list(key.scopes),
            expires_in_days=lifetime_days,
            rate_limit_per_minute=key.rate_limit_per_minute,
            ip_allowlist=list(key.ip_allowlist) if key.ip_allowlist is not None else None,
            source_scope=dict(key.source_scope) if key.source_scope is not None else None,
            access_policy_ids=list(key.access_policy_ids) if key.access_policy_ids is not None else None,
            bound_user_id=key.bound_user_id,
        ),
        pepper=pepper, context=context, via=via,
    )
    record(session, principal, "api_key.rotated", org_id=key.org_id, target_type="api_key", target_id=key.id,
           details={"name": key.name, "key_prefix": key.key_prefix, "replacement_key_id": created.key.id,
                    "grace_seconds": int(grace.total_seconds()), "via": via},
           context=context)
    if grace == timedelta(0):
        revoke_key(session, principal, key, context=context, via=via)
    else:
        retire_at = now + grace
        if key.expires_at is None or retire_at < key.expires_at:
            old = key.expires_at
            key.expires_at = retire_at
            record(session, principal, "api_key.expiry_scheduled", org_id=key.org_id, target_type="api_key",
                   target_id=key.id,
                   details={"old": old.isoformat() if old else None, "new": retire_at.isoformat(),
                            "reason": "rotation", "via": via},
                   context=context)
    return created
