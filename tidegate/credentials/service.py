"""Creating, listing, renaming and revoking API keys."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, text
from sqlalchemy.orm import Session

from tidegate.access.authorize import Rule, authorize, note_scopes_needed
from tidegate.access.policies import validate_policy_ids
from tidegate.audit.record import Actor, RequestContext, record
from tidegate.core.principal import Principal
from tidegate.core.restrictions import SourceSelection
from tidegate.core.scopes import expand, validate_scopes
from tidegate.credentials.bounds import KeyTerms, bound_by_parent
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import display_prefix, generate_key
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, Forbidden, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import Organization, User

DEFAULT_RATE_LIMIT = 60
MAX_NAME_LENGTH = 200
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
    source_scope: dict[str, Any] | None = None
    access_policy_ids: list[str] | None = None
    bound_user_id: str | None = None


@dataclass
class CreatedKey:
    key: ApiKey
    secret: str


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
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
        raise InvalidRequest(
            "invalid_ip_allowlist", "ip_allowlist must list at least one address (omit it to allow all)."
        )
    return normalized


def _check_source_scope(scope: dict[str, Any] | None) -> dict[str, Any] | None:
    if scope is None:
        return None
    mode = scope.get("mode")
    if mode == "all" and set(scope) <= {"mode", "source_ids"} and not scope.get("source_ids"):
        return {"mode": "all"}
    if mode == "selected":
        ids = scope.get("source_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise InvalidRequest(
                "invalid_source_scope", "source_scope 'selected' needs a non-empty list of source_ids."
            )
        return {"mode": "selected", "source_ids": sorted(set(ids))}
    raise InvalidRequest(
        "invalid_source_scope",
        'source_scope must be {"mode": "all"} or {"mode": "selected", "source_ids": [...]}.',
    )


def create_key(
    session: Session,
    creator: Principal,
    request: KeyRequest,
    *,
    pepper: bytes,
    context: RequestContext | None = None,
    via: str = "api",
    parent: ApiKey | None = None,
    exact_parent: bool = False,
    replacing: ApiKey | None = None,
) -> CreatedKey:
    """A new key of `creator`'s. When the request is authenticated by a key, that key is the
    new key's parent: the new key is bounded by its whole restriction set (credentials.bounds)
    and revoked with it. `parent` names one explicitly (rotation keeps a child a child), with
    `exact_parent` even None (a key rotating itself: the replacement takes its place, still
    bounded by it); `replacing` is a key retired in the same transaction (not counted
    against the limit)."""
    org = session.get(Organization, creator.org_id)
    if org is None or not org.api_key_creation_enabled:
        raise Forbidden(
            "api_key_creation_disabled", "An admin has switched off API key creation for this organization."
        )
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
    if creator.key_id is not None:
        note_scopes_needed(expand(scopes))  # (a key narrowed below these could not grant them)
    terms = _check_terms(session, creator, request)
    if parent is None and creator.key_id is not None and not exact_parent:
        parent = session.get(ApiKey, creator.key_id)
    if parent is not None:
        terms = bound_by_parent(parent, terms)
    if creator.key_id is not None and (parent is None or parent.id != creator.key_id):
        # A key rotating another key's child gets a secret: never one beyond itself either.
        caller = session.get(ApiKey, creator.key_id)
        if caller is not None:
            terms = bound_by_parent(caller, terms)
    _lock_key_creation(session, creator.user_id)
    _check_key_limit(session, org, creator.user_id, replacing)

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
        expires_at=terms.expires_at,
        rate_limit_per_minute=terms.rate_limit_per_minute or DEFAULT_RATE_LIMIT,
        ip_allowlist=terms.ip_allowlist,
        source_scope=terms.source_scope,
        access_policy_ids=terms.access_policy_ids,
        bound_user_id=terms.bound_user_id,
        parent_key_id=parent.id if parent is not None else None,
    )
    session.add(key)
    session.flush()
    details = {
        "name": name,
        "scopes": scopes,
        "key_prefix": key.key_prefix,
        "via": via,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }
    if parent is not None:
        details["parent_key_id"] = parent.id
    record(
        session,
        creator,
        "api_key.created",
        org_id=creator.org_id,
        target_type="api_key",
        target_id=key.id,
        details=details,
        context=context,
    )
    bump_access_epoch(session, creator.org_id)
    return CreatedKey(key=key, secret=secret)


def _check_terms(session: Session, creator: Principal, request: KeyRequest) -> KeyTerms:
    """The request's restrictions, validated (400 on bad input); omitted ones stay None."""
    rate = request.rate_limit_per_minute
    if rate is not None and not 1 <= rate <= MAX_RATE_LIMIT:
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
            raise InvalidRequest(
                "invalid_bound_user", f"No active user {request.bound_user_id!r} in this organization."
            )
        bound_user_id = bound.id
    policy_ids = None
    if request.access_policy_ids is not None:
        # Every id must name a policy of this organization now; a key's own policies can
        # only narrow what it reads, and an unknown id would silently deny everything.
        policy_ids = sorted(set(validate_policy_ids(session, creator.org_id, request.access_policy_ids)))
    return KeyTerms(
        rate_limit_per_minute=rate,
        expires_at=expires_at,
        ip_allowlist=_check_ip_allowlist(request.ip_allowlist),
        source_scope=_check_source_scope(request.source_scope),
        access_policy_ids=policy_ids,
        bound_user_id=bound_user_id,
    )


def _lock_key_creation(session: Session, user_id: str) -> None:
    """Serialise key creation per user until commit, so that counting a user's keys and
    adding one is atomic (two concurrent requests cannot both take the last slot)."""
    if session.get_bind().dialect.name == "sqlite":
        # A write takes SQLite's single writer lock now (the driver opens the transaction
        # at the first write): the count below then sees every committed key, and no other
        # writer can add one before this transaction ends.
        session.execute(text("UPDATE users SET is_active = is_active WHERE id = :id"), {"id": user_id})
    else:
        # FOR NO KEY UPDATE: blocks a concurrent creation for the same user, not inserts
        # that merely reference the user row.
        session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


def active_key_count(session: Session, user_id: str, *, excluding: str | None = None) -> int:
    now = utcnow()
    query = (
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.created_by == user_id,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    )
    if excluding is not None:
        query = query.where(ApiKey.id != excluding)
    return session.scalar(query) or 0


def _check_key_limit(session: Session, org: Organization, user_id: str, replacing: ApiKey | None) -> None:
    limit = org.max_keys_per_user
    held = active_key_count(session, user_id, excluding=replacing.id if replacing is not None else None)
    if held >= limit:
        raise Conflict(
            "key_limit_reached",
            f"This user already holds {held} active API keys, the organization's limit (max_keys_per_user "
            f"{limit}); revoke one first.",
        )


def visible_keys(principal: Principal) -> Select[ApiKey]:
    query = select(ApiKey).where(ApiKey.org_id == principal.org_id)
    if not principal.is_admin:
        # Members see and manage only their own keys.
        query = query.where(ApiKey.created_by == principal.user_id)
    return query


def get_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    key = session.scalar(visible_keys(principal).where(ApiKey.id == key_id))
    if key is None:
        raise NotFound("api_key_not_found", f"No API key {key_id!r}.")
    return key


def list_keys(
    session: Session,
    principal: Principal,
    *,
    limit: int,
    after: str | None,
    search: str | None = None,
    status: str | None = None,
) -> list[ApiKey]:
    query = _filtered_keys(principal, search, status)
    if after:
        query = query.where(ApiKey.id > after)
    return list(session.scalars(query.order_by(ApiKey.id).limit(limit + 1)))


# The web list's sortable columns (the API pages by id with a cursor instead).
KEY_SORTS = {
    "name": ApiKey.name,
    "created": ApiKey.created_at,
    "last_used": ApiKey.last_used_at,
    "expires": ApiKey.expires_at,
}


def page_of_keys(
    session: Session,
    principal: Principal,
    *,
    sort: str = "created",
    descending: bool = True,
    offset: int = 0,
    limit: int,
    search: str | None = None,
    status: str | None = None,
) -> tuple[list[ApiKey], int]:
    """One page of the keys `principal` may see, in `sort` order (never-set dates last
    either way), and how many there are in all."""
    if sort not in KEY_SORTS:
        raise InvalidRequest("invalid_sort", f"sort must be one of: {', '.join(KEY_SORTS)}.")
    query = _filtered_keys(principal, search, status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    column = KEY_SORTS[sort]
    order = (column.desc() if descending else column.asc()).nulls_last()
    tiebreak = ApiKey.id.desc() if descending else ApiKey.id.asc()
    rows = session.scalars(query.order_by(order, tiebreak).offset(offset).limit(limit))
    return list(rows), total


def _filtered_keys(principal: Principal, search: str | None, status: str | None) -> Select[ApiKey]:
    query = visible_keys(principal)
    now = utcnow()
    if search:
        pattern = search.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(
            or_(
                ApiKey.name.ilike(f"%{pattern}%", escape="\\"),
                ApiKey.key_prefix.ilike(f"{pattern}%", escape="\\"),
            )
        )
    if status is not None:
        if status not in KEY_STATUSES:
            raise InvalidRequest("invalid_status", f"status must be one of: {', '.join(KEY_STATUSES)}.")
        if status == "revoked":
            query = query.where(ApiKey.revoked_at.is_not(None))
        elif status == "expired":
            query = query.where(ApiKey.revoked_at.is_(None), ApiKey.expires_at <= now)
        else:
            query = query.where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
    return query


def rename_key(
    session: Session, principal: Principal, key: ApiKey, name: str, *, context: RequestContext | None = None
) -> ApiKey:
    name = _check_name(name)
    if name != key.name:
        old = key.name
        key.name = name
        record(
            session,
            principal,
            "api_key.renamed",
            org_id=key.org_id,
            target_type="api_key",
            target_id=key.id,
            details={"old": old, "new": name},
            context=context,
        )
        bump_access_epoch(session, key.org_id)
    return key


def narrow_scopes(
    session: Session, principal: Principal, key: ApiKey, scopes: list[str], *, context: RequestContext | None = None
) -> ApiKey:
    """Replace `key`'s scopes with a subset of them; 403 `scope_widening_not_allowed` for
    any scope it does not hold (widening a key in place would grant it silently: make a new
    key instead, which goes through the creation checks)."""
    new = validate_scopes(scopes)
    added = expand(new) - expand(list(key.scopes))
    if added:
        raise Forbidden(
            "scope_widening_not_allowed",
            f"A key's scopes can only be narrowed; {', '.join(sorted(added))} would widen it. Make a new key instead.",
        )
    if key.status_at(utcnow()) != "active":
        raise InvalidRequest("api_key_not_active", "Only an active key's scopes can be changed.")
    old = sorted(key.scopes)
    if new != old:
        key.scopes = new
        record(
            session,
            principal,
            "api_key.scopes_narrowed",
            org_id=key.org_id,
            target_type="api_key",
            target_id=key.id,
            details={"old": old, "new": new, "removed": sorted(expand(old) - expand(new))},
            context=context,
        )
        bump_access_epoch(session, key.org_id)
    return key


def narrow_source_scope(
    session: Session,
    principal: Principal,
    key: ApiKey,
    source_scope: dict[str, Any],
    *,
    context: RequestContext | None = None,
) -> ApiKey:
    """Restrict `key` to fewer sources: `{"mode": "selected", "source_ids": [...]}` within
    what it may read now (any ids for a key on every source; a subset of its selection
    otherwise). Anything else is 403 `source_scope_widening_not_allowed` (make a new key)."""
    new = _check_source_scope(source_scope)
    assert new is not None
    current = SourceSelection.of(key.source_scope)
    if not current.unbounded() and not current.within(new):
        extra = sorted(set(new.get("source_ids") or []) - set(current.source_ids or ())) or ["every source"]
        raise Forbidden(
            "source_scope_widening_not_allowed",
            f"A key's source restriction can only be narrowed; {', '.join(extra)} would widen it. "
            "Make a new key instead.",
        )
    if key.status_at(utcnow()) != "active":
        raise InvalidRequest("api_key_not_active", "Only an active key's source restriction can be changed.")
    if new.get("mode") == "selected" and new != key.source_scope:
        old = key.source_scope
        key.source_scope = new
        record(
            session,
            principal,
            "api_key.source_scope_narrowed",
            org_id=key.org_id,
            target_type="api_key",
            target_id=key.id,
            details={"old": old, "new": new},
            context=context,
        )
        bump_access_epoch(session, key.org_id)
    return key


def revoke_key(
    session: Session,
    principal: Actor,
    key: ApiKey,
    *,
    context: RequestContext | None = None,
    via: str = "api",
) -> ApiKey:
    """Revoke `key` and every key descended from it (the keys it minted, theirs, ...), each
    with its own audit event. Idempotent: nothing already revoked is changed or recorded."""
    now = utcnow()
    _revoke_one(session, principal, key, now, {"via": via}, context)
    for child in descendants(session, key):
        _revoke_one(
            session,
            principal,
            child,
            now,
            {"via": via, "reason": "parent_revoked", "parent_key_id": child.parent_key_id, "revoked_with": key.id},
            context,
        )
    return key


def _revoke_one(
    session: Session,
    principal: Actor,
    key: ApiKey,
    now: datetime,
    details: dict[str, Any],
    context: RequestContext | None,
) -> None:
    if key.revoked_at is not None:
        return
    key.revoked_at = now
    key.revoked_by = principal.user_id if isinstance(principal, Principal) else None
    record(
        session,
        principal,
        "api_key.revoked",
        org_id=key.org_id,
        target_type="api_key",
        target_id=key.id,
        details={"name": key.name, "key_prefix": key.key_prefix, **details},
        context=context,
    )
    bump_access_epoch(session, key.org_id)


def descendants(session: Session, key: ApiKey) -> list[ApiKey]:
    """Every key minted by `key`, directly or through its children, parents before children."""
    found: list[ApiKey] = []
    seen = {key.id}
    frontier = [key.id]
    while frontier:
        children = list(
            session.scalars(
                select(ApiKey)
                .where(ApiKey.parent_key_id.in_(frontier), ApiKey.org_id == key.org_id)
                .order_by(ApiKey.id)
            )
        )
        children = [c for c in children if c.id not in seen]
        seen.update(c.id for c in children)
        found.extend(children)
        frontier = [c.id for c in children]
    return found


MAX_ROTATION_GRACE = timedelta(days=30)
# "<name> (rotated YYYY-MM-DD)": what a replacement is called. A name that already ends so
# (a replacement rotated again) gets its date replaced, not a second suffix.
_ROTATION_SUFFIX = re.compile(r" \(rotated \d{4}-\d{2}-\d{2}\)$")


def rotated_name(name: str, day: date) -> str:
    """The replacement's name: `name` without any earlier rotation suffix, cut so that the
    new suffix fits the name limit, then " (rotated <day>)"."""
    suffix = f" (rotated {day.isoformat()})"
    base = _ROTATION_SUFFIX.sub("", name).rstrip()[: MAX_NAME_LENGTH - len(suffix)].rstrip()
    return (base + suffix).strip()


def rotate_key(
    session: Session,
    principal: Principal,
    key: ApiKey,
    *,
    grace: timedelta,
    pepper: bytes,
    context: RequestContext | None = None,
    via: str = "api",
) -> CreatedKey:
    """Replace `key` with a new key of the same settings, and retire the old one.

    The replacement has the old key's name (with a rotation suffix: `rotated_name`), scopes,
    rate limit, IP allowlist, source scope, access policies, bound user and lifetime (counted
    from now). With `grace` zero the old key is revoked at once; otherwise its `expires_at` is
    set to now + grace (never later than it already was), so it keeps working for the grace
    period and is then refused with the ordinary `api_key_expired` error. Only the key's own creator may rotate it: a
    replacement made by someone else would act with that person's permissions.
    """
    now = utcnow()
    authorize(principal, Rule.ROTATE_KEY, key)
    if key.status_at(now) != "active":
        raise InvalidRequest("api_key_not_active", "Only an active key can be rotated.")
    if key.rotated_to_key_id is not None:
        # One replacement per key: a second would leave two live successors of one secret.
        raise Conflict(
            "api_key_already_rotated",
            f"This key was already rotated into {key.rotated_to_prefix}…; rotate or revoke that key instead.",
        )
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise InvalidRequest("invalid_grace_period", "The grace period must be between 0 and 30 days.")
    lifetime_days = None
    if key.expires_at is not None:
        lifetime_days = max(1, min(MAX_EXPIRY_DAYS, round((key.expires_at - key.created_at) / timedelta(days=1))))
    # A child key's replacement is still its parent's child: bounded by it (an expiry past
    # the parent's becomes the parent's) and revoked with it.
    parent = session.get(ApiKey, key.parent_key_id) if key.parent_key_id else None
    # Rotated through the API by a key, the replacement is also bounded by that key (by the
    # old key itself when it rotates itself: no lifetime past its own expiry).
    caller = session.get(ApiKey, principal.key_id) if principal.key_id is not None else None
    for bound in (parent, caller):
        if (
            bound is not None
            and bound.expires_at is not None
            and lifetime_days is not None
            and now + timedelta(days=lifetime_days) > bound.expires_at
        ):
            lifetime_days = None  # (inherits the bound's expiry)
    created = create_key(
        session,
        principal,
        KeyRequest(
            name=rotated_name(key.name, now.date()),
            scopes=list(key.scopes),
            expires_in_days=lifetime_days,
            rate_limit_per_minute=key.rate_limit_per_minute,
            ip_allowlist=list(key.ip_allowlist) if key.ip_allowlist is not None else None,
            source_scope=dict(key.source_scope) if key.source_scope is not None else None,
            access_policy_ids=list(key.access_policy_ids) if key.access_policy_ids is not None else None,
            bound_user_id=key.bound_user_id,
        ),
        pepper=pepper,
        context=context,
        via=via,
        parent=parent,
        # A key rotating itself: the replacement takes its place (its parent, or none), not
        # its child, which would be revoked or expired with it.
        exact_parent=principal.key_id == key.id,
        replacing=key if grace == timedelta(0) else None,
    )
    created.key.rotated_from_key_id = key.id
    key.rotated_to_key_id = created.key.id
    key.rotated_to_prefix = created.key.key_prefix
    key.rotated_at = now
    record(
        session,
        principal,
        "api_key.rotated",
        org_id=key.org_id,
        target_type="api_key",
        target_id=key.id,
        details={
            "name": key.name,
            "key_prefix": key.key_prefix,
            "replacement_key_id": created.key.id,
            "grace_seconds": int(grace.total_seconds()),
            "via": via,
        },
        context=context,
    )
    bump_access_epoch(session, key.org_id)
    if grace == timedelta(0):
        revoke_key(session, principal, key, context=context, via=via)
    else:
        retire_at = now + grace
        _expire_by(session, principal, key, retire_at, "rotation", via, context)
        # The keys it minted may not outlive it (a child's expiry is never later than its parent's).
        for child in descendants(session, key):
            _expire_by(session, principal, child, retire_at, "parent_rotation", via, context)
    return created


def _expire_by(
    session: Session,
    principal: Principal,
    key: ApiKey,
    retire_at: datetime,
    reason: str,
    via: str,
    context: RequestContext | None,
) -> None:
    """Bring `key`'s expiry forward to `retire_at` (never later than it already was)."""
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= retire_at):
        return
    old = key.expires_at
    key.expires_at = retire_at
    record(
        session,
        principal,
        "api_key.expiry_scheduled",
        org_id=key.org_id,
        target_type="api_key",
        target_id=key.id,
        details={"old": old.isoformat() if old else None, "new": retire_at.isoformat(), "reason": reason, "via": via},
        context=context,
    )
    bump_access_epoch(session, key.org_id)
