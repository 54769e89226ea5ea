"""A dashboard's share links: revocable, expiring URLs that open it.

- A member link opens the dashboard for SIGNED-IN members of its organization; each still
  sees only their own rows (every widget is evaluated under the viewer's access), and the
  projects and sources it draws still need their own shares: a link opens the dashboard,
  never more.
- A public link opens it without signing in, only while the organization allows public
  links (`public_share_links_enabled`, read on every use: switching it off deactivates every
  public link at once). It renders with the access of the link's named policies AND its
  creator's current access: a Principal for the creator whose restrictions add those
  policies, as a key's access_policy_ids do. Never more than the creator may see now.

The token (`dl_` + 43 random characters) is shown once, at creation; the database holds only
its keyed hash (credentials.hashing) and a short display prefix.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.access.analysis import OWNER, VIEW, open_dashboard
from tidegate.access.models import Policy
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.analysis import RESOURCE_DASHBOARD, Dashboard, ShareLink
from tidegate.core.principal import Principal
from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.scopes import Scope
from tidegate.credentials.hashing import hash_secret
from tidegate.db.base import utcnow
from tidegate.errors import Forbidden, InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.models import Organization, User

PREFIX = "dl_"
DISPLAY_PREFIX_LENGTH = 12  # `dl_` + 9 characters: recognisable, useless as a secret
TOKEN_PATTERN = re.compile(r"^dl_[A-Za-z0-9_-]{43}$")
DEFAULT_EXPIRY_DAYS = 30
MAX_EXPIRY_DAYS = 365
MAX_POLICIES = 50
# What a public link's reader may do: read the dashboard and what its widgets draw.
PUBLIC_SCOPES = (Scope.DASHBOARDS_READ, Scope.PROJECTS_READ, Scope.DATA_READ, Scope.SOURCES_READ)


@dataclass(frozen=True)
class CreatedLink:
    link: ShareLink
    token: str  # shown once; never stored


@dataclass(frozen=True)
class LinkUse:
    """A live link, resolved from its token (values only)."""

    link_id: str
    org_id: str
    dashboard_id: str
    public: bool
    created_by: str
    policy_ids: tuple[str, ...]
    expires_at: datetime | None


def generate_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def state_of(link: ShareLink, now: datetime | None = None) -> str:
    """active | revoked | expired (whether the org allows public links is checked on use)."""
    now = now or utcnow()
    if link.revoked_at is not None:
        return "revoked"
    if link.expires_at is not None and link.expires_at <= now:
        return "expired"
    return "active"


def _org(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("organization_not_found", "No such organization.")
    return org


def _check_policies(session: Session, org_id: str, policy_ids: list[str]) -> list[str]:
    ids = list(dict.fromkeys(policy_ids))
    if len(ids) > MAX_POLICIES:
        raise InvalidRequest("invalid_policy_ids", f"At most {MAX_POLICIES} policies.")
    found = set(session.scalars(select(Policy.id).where(Policy.org_id == org_id, Policy.id.in_(ids))))
    unknown = [p for p in ids if p not in found]
    if unknown:
        raise NotFound("policy_not_found", f"No access policy {', '.join(map(repr, unknown))} in this organization.")
    return ids


def _check_within_key(principal: Principal, policy_ids: list[str]) -> None:
    """A public link reads as its creator (the USER) narrowed by its policies. Made with a key
    (or an embed session) that is itself narrower than its user, it could show more than that
    key may read: refused unless the key's only narrowing is its own policies and the link
    names exactly those (policies compose by union on a column, so only equality never widens)."""
    restrictions = principal.restrictions
    if restrictions is None:
        return
    narrower = not restrictions.source_selection.unbounded() or restrictions.bound_user_id is not None
    key_policies = set(restrictions.access_policy_ids)
    if narrower or (key_policies and key_policies != set(policy_ids)):
        raise Forbidden(
            "public_link_exceeds_key",
            "This key reads less than its creator (a source scope, a bound user, or its own access policies): "
            "a public link it makes must name exactly the key's own access policies, and a key with a source "
            "scope or a bound user cannot make one.",
        )


def create_link(
    session: Session,
    principal: Principal,
    pepper: bytes,
    dashboard_id: str,
    *,
    expires_in_days: int | None,
    public: bool,
    policy_ids: list[str] | None,
    context: RequestContext | None = None,
) -> CreatedLink:
    """The dashboard's owner (creator or admin) only."""
    dashboard = open_dashboard(session, principal, dashboard_id, need=OWNER)
    days = DEFAULT_EXPIRY_DAYS if expires_in_days is None else expires_in_days
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise InvalidRequest("invalid_expiry", f"expires_in_days must be from 1 to {MAX_EXPIRY_DAYS}.")
    if public:
        if not _org(session, principal.org_id).public_share_links_enabled:
            raise Forbidden(
                "public_links_disabled",
                "Public share links are off for this organization (org setting public_share_links_enabled).",
            )
        if not policy_ids:
            raise InvalidRequest(
                "policy_ids_required",
                "A public link renders with the access of named policies: give a non-empty policy_ids.",
            )
        policy_ids = _check_policies(session, principal.org_id, policy_ids)
        _check_within_key(principal, policy_ids)
    elif policy_ids:
        raise InvalidRequest(
            "policy_ids_public_only",
            "policy_ids apply to public links only: a member link shows each viewer their rows.",
        )
    token = generate_token()
    now = utcnow()
    link = ShareLink(
        id=new_id("lnk"),
        org_id=principal.org_id,
        dashboard_id=dashboard.id,
        token_prefix=token[:DISPLAY_PREFIX_LENGTH],
        secret_hash=hash_secret(pepper, token),
        public=public,
        policy_ids=list(policy_ids or []),
        created_by=principal.user_id,
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    session.add(link)
    session.flush()
    record(
        session,
        principal,
        "dashboard.link_created",
        org_id=principal.org_id,
        target_type=RESOURCE_DASHBOARD,
        target_id=dashboard.id,
        details={
            "link_id": link.id,
            "token_prefix": link.token_prefix,
            "public": public,
            "policy_ids": link.policy_ids,
            "expires_at": link.expires_at.isoformat() if link.expires_at else None,
        },
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return CreatedLink(link, token)


def list_links(session: Session, principal: Principal, dashboard_id: str) -> list[ShareLink]:
    dashboard = open_dashboard(session, principal, dashboard_id, need=OWNER)
    return list(session.scalars(select(ShareLink).where(ShareLink.dashboard_id == dashboard.id).order_by(ShareLink.id)))


def revoke_link(
    session: Session, principal: Principal, dashboard_id: str, link_id: str, *, context: RequestContext | None = None
) -> ShareLink:
    dashboard = open_dashboard(session, principal, dashboard_id, need=OWNER)
    link = session.get(ShareLink, link_id)
    if link is None or link.dashboard_id != dashboard.id:
        raise NotFound("link_not_found", f"No link {link_id!r} on dashboard {dashboard.id!r}.")
    if link.revoked_at is None:
        link.revoked_at = utcnow()
        record(
            session,
            principal,
            "dashboard.link_revoked",
            org_id=principal.org_id,
            target_type=RESOURCE_DASHBOARD,
            target_id=dashboard.id,
            details={"link_id": link.id, "token_prefix": link.token_prefix},
            context=context,
        )
        bump_access_epoch(session, principal.org_id)
    return link


# -- using a link ---------------------------------------------------------------------------

_GONE = "This link does not exist, was revoked or has expired."


def open_link(session: Session, pepper: bytes, token: str) -> LinkUse:
    """The live link of `token`, or 404 (unknown, malformed, revoked, expired; a public link
    while its organization does not allow them; a link whose creator left or can no longer
    open the dashboard). One answer for all: the page says nothing about which."""
    if not TOKEN_PATTERN.match(token):
        raise NotFound("link_not_found", _GONE)
    link = session.scalar(select(ShareLink).where(ShareLink.secret_hash == hash_secret(pepper, token)))
    if link is None or state_of(link) != "active":
        raise NotFound("link_not_found", _GONE)
    if link.public and not _org(session, link.org_id).public_share_links_enabled:
        raise NotFound("link_not_found", _GONE)
    creator = session.get(User, link.created_by)
    if creator is None or not creator.is_active or creator.org_id != link.org_id:
        raise NotFound("link_not_found", _GONE)
    try:  # the creator must still be able to open it: a link outlives no loss of access
        open_dashboard(session, Principal.for_user(creator.org_id, creator.id, creator.role), link.dashboard_id)
    except (NotFound, Forbidden):
        raise NotFound("link_not_found", _GONE) from None
    return LinkUse(
        link_id=link.id,
        org_id=link.org_id,
        dashboard_id=link.dashboard_id,
        public=link.public,
        created_by=link.created_by,
        policy_ids=tuple(link.policy_ids or ()),
        expires_at=link.expires_at,
    )


def public_reader(session: Session, use: LinkUse) -> Principal:
    """Who a public link's anonymous reader reads as: the creator, narrowed by the link's
    policies (ANDed with the creator's own, as a key's access_policy_ids are)."""
    if not use.public or not use.policy_ids:
        raise NotFound("link_not_found", _GONE)  # (a public link always names policies)
    creator = session.get(User, use.created_by)
    if creator is None:
        raise NotFound("link_not_found", _GONE)
    restrictions = KeyRestrictions.of(
        key_id=use.link_id,
        org_id=use.org_id,
        creator_id=creator.id,
        scopes=PUBLIC_SCOPES,
        access_policy_ids=use.policy_ids,
        source_scope=None,
        bound_user_id=None,
        ip_allowlist=None,
        expires_at=use.expires_at,
        rate_limit_per_minute=0,
    )
    return Principal.for_key(creator.role, restrictions)


def linked_dashboard(session: Session, use: LinkUse, reader: Principal) -> Dashboard:
    """The linked dashboard, for `reader`: a member of the link's organization (a member link
    opens it whether or not it was shared with them) or a public link's reader."""
    if reader.org_id != use.org_id:
        raise NotFound("link_not_found", _GONE)
    if use.public:
        return open_dashboard(session, reader, use.dashboard_id, need=VIEW)
    dashboard = session.get(Dashboard, use.dashboard_id)
    if dashboard is None:
        raise NotFound("link_not_found", _GONE)
    return dashboard
