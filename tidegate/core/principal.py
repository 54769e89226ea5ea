"""Who is asking, and what they may do right now."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.scopes import ROLE_ADMIN, expand, role_permissions


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

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def actor_type(self) -> str:
        return "api_key" if self.key_id else "user"

    @property
    def actor_id(self) -> str:
        return self.key_id or self.user_id

    def missing(self, scopes: frozenset[str]) -> frozenset[str]:
        """Those of `scopes` this principal does not hold now (so may not delegate)."""
        return scopes - self.scopes
