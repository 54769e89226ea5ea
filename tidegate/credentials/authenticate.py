"""Turning `Authorization: Bearer qk_...` + `X-Tenant-ID` into a Principal, or refusing.

Everything is read from the database on every request: a revocation, an expiry, a role
change or a deactivation is seen by the very next request in every worker process.
The lookup is one indexed read by keyed hash.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.access.principal import Principal
from tidegate.credentials.hashing import hash_secret, matches
from tidegate.credentials.keyformat import is_well_formed
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.errors import Forbidden, Unauthenticated
from tidegate.orgs.models import Organization, User

# One message for "no such key" and "key of another tenant": a caller must not learn
# whether a key exists by trying it against organizations.
INVALID_KEY = "The API key is invalid for this organization."


@dataclass
class Authenticated:
    principal: Principal
    key: ApiKey


def parse_bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing_credentials", "Send 'Authorization: Bearer qk_...' with every request.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("invalid_authorization", "The Authorization header must be 'Bearer qk_...'.")
    return token


def identify_key(session: Session, pepper: bytes, token: str, tenant_id: str | None) -> ApiKey:
    """The key the token names, in the named tenant, whatever its state."""
    if not tenant_id:
        raise Unauthenticated("missing_tenant", "Send 'X-Tenant-ID: org_...' with every request.")
    if not is_well_formed(token):
        # Checksum failed: a typo or not one of our keys. No database lookup.
        raise Unauthenticated("invalid_api_key", INVALID_KEY)
    digest = hash_secret(pepper, token)
    # The creator comes in the same query (check_key_usable then finds it in the session).
    row = session.execute(
        select(ApiKey, User, Organization.access_epoch)
        .join(User, User.id == ApiKey.created_by)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.secret_hash == digest)
    ).first()
    key = row[0] if row else None
    if row:
        # The identity map holds objects weakly: keep these two alive for the request, so
        # later session.get() calls for them (access checks) cost no query.
        session.info.setdefault("pinned", []).extend(row[:2])
        session.info["access_epoch"] = row[2]
    if key is None or not matches(pepper, token, key.secret_hash) or key.org_id != tenant_id:
        raise Unauthenticated("invalid_api_key", INVALID_KEY)
    return key


def principal_for_key(session: Session, key: ApiKey) -> Principal:
    """What `key` may do now, or the 401 that refuses it (revoked, expired, owner inactive).

    Also how the web UI previews "what this key would see": the same rules, one place.
    """
    status = key.status_at(utcnow())
    if status == "revoked":
        raise Unauthenticated("api_key_revoked", "This API key has been revoked.")
    if status == "expired":
        raise Unauthenticated("api_key_expired", "This API key has expired.")
    owner = session.get(User, key.created_by)
    if owner is None or not owner.is_active:
        raise Unauthenticated("api_key_owner_inactive", "The user who created this API key is deactivated.")
    return Principal.for_key(key.org_id, owner.id, owner.role, key.id, key.scopes,
                             epoch=session.info.get("access_epoch"))


def check_key_usable(session: Session, key: ApiKey, client_ip: str | None) -> Authenticated:
    principal = principal_for_key(session, key)
    if key.ip_allowlist and not ip_allowed(client_ip, key.ip_allowlist):
        raise Forbidden("ip_not_allowed", f"Requests from {client_ip} are not allowed for this API key.")
    return Authenticated(principal=principal, key=key)


def ip_allowed(client_ip: str | None, allowlist: list[str]) -> bool:
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in allowlist)
