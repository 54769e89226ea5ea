"""A key's stored restrictions as the `access.restrictions.KeyRestrictions` value, and the
rule that a key never exceeds the key that made it.

When a request authenticated by a key creates a key, the new key (the child) is bounded by
the calling key's (the parent's) whole restriction set, not only its scopes: that rule is
`KeyRestrictions.bound`; this module only reads the parent's row into the value.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.core.restrictions import KeyRestrictions, KeyTerms
from tidegate.credentials.models import ApiKey

__all__ = ["KeyTerms", "bound_by_parent", "keys_naming_policy", "restrictions_of"]


def restrictions_of(key: ApiKey) -> KeyRestrictions:
    """The key's restrictions as stored now, as an immutable value (no ORM object kept)."""
    return KeyRestrictions.of(
        key_id=key.id,
        org_id=key.org_id,
        creator_id=key.created_by,
        scopes=key.scopes,
        access_policy_ids=key.access_policy_ids,
        source_scope=key.source_scope,
        bound_user_id=key.bound_user_id,
        ip_allowlist=key.ip_allowlist,
        expires_at=key.expires_at,
        rate_limit_per_minute=key.rate_limit_per_minute,
        parent_key_id=key.parent_key_id,
    )


def bound_by_parent(parent: ApiKey, terms: KeyTerms) -> KeyTerms:
    """The child's terms, every omitted one inherited from `parent`; or 403
    `exceeds_parent_key` naming every restriction the request goes beyond."""
    return restrictions_of(parent).bound(terms)


def keys_naming_policy(session: Session, org_id: str, policy_id: str) -> list[str]:
    """Ids of the organization's unrevoked keys whose own access policies include `policy_id`
    (they fail closed once it is deleted: `access.policies.delete_policy` lists them)."""
    return sorted(
        key_id
        for key_id, ids in session.execute(
            select(ApiKey.id, ApiKey.access_policy_ids).where(
                ApiKey.org_id == org_id, ApiKey.revoked_at.is_(None), ApiKey.access_policy_ids.is_not(None)
            )
        )
        if ids and policy_id in ids
    )
