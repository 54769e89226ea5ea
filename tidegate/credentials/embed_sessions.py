"""Embed sessions: short-lived `es_` credentials a key makes for one user of its organization.

A session holds no rights of its own. Each request reads, in one query, the session, its
user, the key that created it with that key's creator, and the organization; then acts as
the user's current role within the key's current rights (`Principal.for_embed_session`).
So revoking the session or its key, deactivating or demoting the user, or switching embeds
off is seen by the very next request in every process: nothing is cached.

The token is `es_` + 43 url-safe characters (256 random bits), stored only as a keyed hash
under the pepper like keys; its first characters are kept in clear to recognise it in lists.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.credentials.bounds import restrictions_of
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.models import ApiKey, EmbedSession, key_status
from tidegate.db.base import utcnow
from tidegate.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated
from tidegate.ids import new_id
from tidegate.orgs.embeds import normalize_origin
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import Organization, User
from tidegate.orgs.service import get_user

PREFIX = "es_"
TOKEN_PATTERN = re.compile(r"^es_[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 256 bits
DISPLAY_PREFIX_LENGTH = 16  # `es_` + 13 characters (78 bits): unique, recognisable, useless as a secret
PREFIX_PATTERN = re.compile(r"^es_[A-Za-z0-9_-]{13}$")
MIN_TTL, MAX_TTL, DEFAULT_TTL = 900, 86_400, 3_600
MAX_LIST_LIMIT = 200

INVALID_SESSION = "The embed session token is invalid."


def generate_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_well_formed(token: str) -> bool:
    return bool(TOKEN_PATTERN.match(token))


def clamp_ttl(ttl: int | None) -> int:
    """The contract: out-of-range TTLs are clamped silently."""
    if ttl is None:
        return DEFAULT_TTL
    return max(MIN_TTL, min(MAX_TTL, ttl))


def allowed_origins(org: Organization) -> list[str]:
    return list(org.embed_allowed_origins or [])


def check_embeds_enabled(org: Organization) -> None:
    if not org.embeds_enabled:
        raise Forbidden("embeds_disabled", "Embed sessions are switched off for this organization.")


# --------------------------------------------------------------------------- lifecycle


@dataclass
class CreatedSession:
    session: EmbedSession
    token: str
    expires_in: int  # the TTL granted, in seconds


def create_session(
    session: Session,
    pepper: bytes,
    principal: Principal,
    user_id: str,
    *,
    ttl: int | None = None,
    origin: str | None = None,
    context: RequestContext | None = None,
) -> CreatedSession:
    """A new session for `user_id` (a tidegate id or an external id) made by the caller's key."""
    org = _org(session, principal.org_id)
    check_embeds_enabled(org)
    origin = _check_origin(org, origin)
    key_id = _creating_key_id(principal)
    user = get_user(session, org.id, user_id)  # 404 user_not_found; active users only
    bound = principal.restrictions.bound_user_id if principal.restrictions is not None else None
    if bound and bound != user.id:
        raise Forbidden(
            "exceeds_parent_key",
            "This key is bound to one user; it can create embed sessions only for that user.",
        )
    created = _new_session(session, pepper, org.id, user.id, key_id, origin, clamp_ttl(ttl), refreshed_from=None)
    record(
        session,
        principal,
        "embed_session.created",
        org_id=org.id,
        target_type="embed_session",
        target_id=created.session.id,
        details=_details(created.session),
        context=context,
    )
    bump_access_epoch(session, org.id)
    return created


def refresh_session(
    session: Session, pepper: bytes, principal: Principal, token: str, *, context: RequestContext | None = None
) -> CreatedSession:
    """A new token for the same user and origin, with the old one's TTL; the old one ends now."""
    org = _org(session, principal.org_id)
    check_embeds_enabled(org)
    _creating_key_id(principal)
    old = _live_by_token(session, pepper, principal.org_id, token)
    key = session.get(ApiKey, old.created_by_key_id)
    if key is None or key.status_at(utcnow()) != "active":
        raise Unauthenticated(
            "embed_session_key_revoked", "The API key that created this embed session is no longer valid."
        )
    ttl = int((old.expires_at - old.created_at).total_seconds())
    now = utcnow()
    old.revoked_at = now
    created = _new_session(
        session, pepper, org.id, old.user_id, old.created_by_key_id, old.origin, clamp_ttl(ttl), refreshed_from=old.id
    )
    record(
        session,
        principal,
        "embed_session.refreshed",
        org_id=org.id,
        target_type="embed_session",
        target_id=created.session.id,
        details={**_details(created.session), "replaced_session_id": old.id},
        context=context,
    )
    bump_access_epoch(session, org.id)
    return created


def list_sessions(session: Session, org_id: str, *, limit: int) -> tuple[list[EmbedSession], bool]:
    """Usable sessions of the organization, newest first (and whether there are more)."""
    now = utcnow()
    rows = list(
        session.scalars(
            select(EmbedSession)
            .join(ApiKey, ApiKey.id == EmbedSession.created_by_key_id)
            .join(User, User.id == EmbedSession.user_id)
            .where(EmbedSession.org_id == org_id, EmbedSession.revoked_at.is_(None), EmbedSession.expires_at > now)
            # Not those whose key or user can no longer be used (each request refuses them).
            .where(ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
            .where(User.is_active.is_(True))
            .order_by(EmbedSession.id.desc())
            .limit(limit + 1)
        )
    )
    return rows[:limit], len(rows) > limit


def find_session(session: Session, pepper: bytes, org_id: str, reference: str) -> EmbedSession:
    """A session of the organization by its token, its id or its listed prefix; 404 otherwise."""
    query = select(EmbedSession).where(EmbedSession.org_id == org_id)
    if is_well_formed(reference):
        query = query.where(EmbedSession.secret_hash == hash_secret(pepper, reference))
    elif PREFIX_PATTERN.match(reference):
        query = query.where(EmbedSession.token_prefix == reference)
    elif reference.startswith("ses_") and len(reference) <= 40:
        query = query.where(EmbedSession.id == reference)
    else:
        raise NotFound("embed_session_not_found", "No such embed session.")
    row = session.scalar(query)
    if row is None:
        raise NotFound("embed_session_not_found", "No such embed session.")
    return row


def revoke_session(
    session: Session, principal: Principal | None, row: EmbedSession, *, context: RequestContext | None = None
) -> EmbedSession:
    """Ends the session at once (idempotent: an ended one is left as it is)."""
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record(
            session,
            principal,
            "embed_session.revoked",
            org_id=row.org_id,
            target_type="embed_session",
            target_id=row.id,
            details=_details(row),
            context=context,
        )
        bump_access_epoch(session, row.org_id)
    return row


def _new_session(
    session: Session,
    pepper: bytes,
    org_id: str,
    user_id: str,
    key_id: str,
    origin: str | None,
    ttl: int,
    *,
    refreshed_from: str | None,
) -> CreatedSession:
    token = generate_token()
    now = utcnow()
    row = EmbedSession(
        id=new_id("ses"),
        org_id=org_id,
        user_id=user_id,
        created_by_key_id=key_id,
        token_prefix=token[:DISPLAY_PREFIX_LENGTH],
        secret_hash=hash_secret(pepper, token),
        origin=origin,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
        refreshed_from_id=refreshed_from,
    )
    session.add(row)
    session.flush()
    return CreatedSession(row, token, ttl)


def _details(row: EmbedSession) -> dict[str, Any]:
    # Never the token: its prefix and id identify it.
    return {
        "user_id": row.user_id,
        "token_prefix": row.token_prefix,
        "origin": row.origin,
        "created_by_key_id": row.created_by_key_id,
        "expires_at": row.expires_at.isoformat(),
    }


def _org(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("organization_not_found", "No such organization.")
    return org


def _creating_key_id(principal: Principal) -> str:
    if principal.embed_session_id is not None or principal.key_id is None:
        raise Forbidden("api_key_required", "Embed sessions are created and managed with an API key.")
    return principal.key_id


def _check_origin(org: Organization, origin: str | None) -> str | None:
    allowed = allowed_origins(org)
    if origin is None:
        if allowed:
            raise InvalidRequest(
                "origin_required", "This organization allows embeds only on listed origins: send origin."
            )
        return None
    origin = normalize_origin(origin)
    if allowed and origin not in allowed:
        raise InvalidRequest("origin_not_allowed", f"The origin {origin} is not in this organization's embed origins.")
    return origin


def _live_by_token(session: Session, pepper: bytes, org_id: str, token: str) -> EmbedSession:
    if not is_well_formed(token):
        raise Unauthenticated("invalid_embed_session", INVALID_SESSION)
    row = session.scalar(
        select(EmbedSession).where(
            EmbedSession.org_id == org_id, EmbedSession.secret_hash == hash_secret(pepper, token)
        )
    )
    if row is None:
        raise Unauthenticated("invalid_embed_session", INVALID_SESSION)
    _check_live(row.revoked_at, row.expires_at, utcnow())
    return row


def _check_live(revoked_at: datetime | None, expires_at: datetime, now: datetime) -> None:
    status = key_status(revoked_at, expires_at, now)
    if status == "revoked":
        raise Unauthenticated("embed_session_revoked", "This embed session has been revoked.")
    if status == "expired":
        raise Unauthenticated("embed_session_expired", "This embed session has expired.")


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True)
class SessionUse:
    """What one request with a session acts as, and what its audit event names."""

    principal: Principal
    session_id: str
    origin: str | None
    allowed_origins: tuple[str, ...]
    key_rate_limit_per_minute: int
    key_owner_id: str
    owner_rate_limit_per_minute: int
    embeds_enabled: bool

    def check_allowed(self, request_origin: str | None) -> None:
        """The refusals that come once the session is known (and so are audited as it)."""
        if not self.embeds_enabled:
            raise Forbidden("embeds_disabled", "Embed sessions are switched off for this organization.")
        check_request_origin(self, request_origin)


def authenticate_session(
    session: Session, pepper: bytes, token: str, tenant_id: str | None, now: datetime | None = None
) -> SessionUse:
    """The principal of a request carrying `X-Embed-Session: token`, or the 401 refusing it
    (then `SessionUse.check_allowed`: embeds switched off, the request's origin)."""
    if not is_well_formed(token):
        raise Unauthenticated("invalid_embed_session", INVALID_SESSION)
    key_owner, session_user = aliased(User), aliased(User)
    row = session.execute(
        select(EmbedSession, session_user, ApiKey, key_owner, Organization)
        .join(session_user, session_user.id == EmbedSession.user_id)
        .join(ApiKey, ApiKey.id == EmbedSession.created_by_key_id)
        .outerjoin(key_owner, key_owner.id == ApiKey.created_by)
        .join(Organization, Organization.id == EmbedSession.org_id)
        .where(EmbedSession.secret_hash == hash_secret(pepper, token))
    ).first()
    # A session of another organization than the one named (when one is): the same answer
    # as an unknown token.
    if row is None or (tenant_id and row[0].org_id != tenant_id):
        raise Unauthenticated("invalid_embed_session", INVALID_SESSION)
    embed, user, key, owner, org = row
    now = now or utcnow()
    _check_live(embed.revoked_at, embed.expires_at, now)
    if key_status(key.revoked_at, key.expires_at, now) != "active" or owner is None or not owner.is_active:
        raise Unauthenticated(
            "embed_session_key_revoked", "The API key that created this embed session is no longer valid."
        )
    if not user.is_active or user.org_id != org.id:
        raise Unauthenticated("embed_session_user_inactive", "The user of this embed session is deactivated.")
    principal = Principal.for_embed_session(
        session_id=embed.id,
        user_id=user.id,
        role=user.role,
        key_role=owner.role,
        key_restrictions=restrictions_of(key),
        epoch=org.access_epoch,
    )
    return SessionUse(
        principal=principal,
        session_id=embed.id,
        origin=embed.origin,
        allowed_origins=tuple(allowed_origins(org)),
        key_rate_limit_per_minute=key.rate_limit_per_minute,
        key_owner_id=key.created_by,
        owner_rate_limit_per_minute=org.user_rate_limit_per_minute,
        embeds_enabled=org.embeds_enabled,
    )


def check_request_origin(use: SessionUse, request_origin: str | None) -> None:
    """A browser sends `Origin`: it must be the session's origin (and an allowed one)."""
    if request_origin is None:
        return  # not a cross-origin browser request (a server, or a same-origin page)
    try:
        origin = normalize_origin(request_origin)
    except InvalidRequest:
        origin = None
    if origin is None or (use.origin is not None and origin != use.origin):
        raise Forbidden("origin_not_allowed", "This embed session cannot be used from this origin.")
    if use.allowed_origins and origin not in use.allowed_origins:
        raise Forbidden("origin_not_allowed", "This embed session cannot be used from this origin.")
