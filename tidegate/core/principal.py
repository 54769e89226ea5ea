"""Who is asking, and what they may do right now."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tidegate.core.restrictions import BoundUser, KeyRestrictions
from tidegate.core.scopes import EMBED_SESSION_EXCLUDED, ROLE_ADMIN, expand, role_permissions


@dataclass(frozen=True)
class Principal:
    """The caller of one request, from the key's and its creator's current state (read from
    the database, or from the key cache while nothing has been committed since).

    `scopes` is already the intersection of the key's granted scopes with its creator's
    current role permissions (or, for a browser session, the user's role permissions).
    """

    org_id: str
    user_id: str
    role: str
    scopes: frozenset[str]
    key_id: str | None = None
    key_scopes: frozenset[str] = field(default_factory=frozenset)
    # The organization's access epoch read with the key (None: do not use cached access).
    epoch: int | None = None
    # The key's restrictions, read with it (None: a browser session, no key).
    restrictions: KeyRestrictions | None = None
    # An embed session acting as `user_id` (None: not a session); `key_id` is then the key
    # that created it.
    embed_session_id: str | None = None

    @classmethod
    def for_user(cls, org_id: str, user_id: str, role: str) -> Principal:
        perms = role_permissions(role)
        return cls(org_id=org_id, user_id=user_id, role=role, scopes=perms)

    @classmethod
    def for_key(cls, role: str, restrictions: KeyRestrictions, epoch: int | None = None) -> Principal:
        key_scopes = expand(list(restrictions.scopes))
        return cls(
            org_id=restrictions.org_id,
            user_id=restrictions.creator_id,
            role=role,
            scopes=key_scopes & role_permissions(role),
            key_id=restrictions.key_id,
            key_scopes=key_scopes,
            epoch=epoch,
            restrictions=restrictions,
        )

    @classmethod
    def for_embed_session(
        cls,
        *,
        session_id: str,
        user_id: str,
        role: str,
        key_role: str,
        key_restrictions: KeyRestrictions,
        epoch: int | None = None,
    ) -> Principal:
        """A session acts as its user, live, and never beyond the key that created it: its
        scopes are the user's role permissions, minus what a session may never do, within the
        key's effective scopes; its rows are the key's (creator and own policies) AND the
        user's, by binding the key's restrictions to the user."""
        key_effective = expand(list(key_restrictions.scopes)) & role_permissions(key_role)
        scopes = (role_permissions(role) - EMBED_SESSION_EXCLUDED) & key_effective
        return cls(
            org_id=key_restrictions.org_id,
            user_id=user_id,
            role=role,
            scopes=scopes,
            key_id=key_restrictions.key_id,
            epoch=epoch,
            restrictions=replace(key_restrictions, bound_user=BoundUser(user_id)),
            embed_session_id=session_id,
        )

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def actor_type(self) -> str:
        if self.embed_session_id:
            return "user"  # a session is audited as its user (details name the key)
        return "api_key" if self.key_id else "user"

    @property
    def actor_id(self) -> str:
        if self.embed_session_id:
            return self.user_id
        return self.key_id or self.user_id

    def missing(self, scopes: frozenset[str]) -> frozenset[str]:
        """Those of `scopes` this principal does not hold now (so may not delegate)."""
        return scopes - self.scopes
