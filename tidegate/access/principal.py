"""Who is asking, and what they may do right now."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from tidegate.access.restrictions import KeyRestrictions
from tidegate.access.scopes import ROLE_ADMIN, Scope, expand, role_permissions
from tidegate.errors import Forbidden


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


# --- authorize: the one place that decides what a principal may do ---------------------


@dataclass(frozen=True)
class AnyOf:
    """An action the contract allows with any one of several scopes (e.g. deleting a source
    with admin:sources:write or data:write)."""

    scopes: tuple[Scope, ...]

    def __init__(self, *scopes: Scope) -> None:
        object.__setattr__(self, "scopes", scopes)


class Rule(StrEnum):
    """Actions decided by role or ownership on top of a scope the caller already passed."""

    CREATE_CONNECTOR = "create_connector"  # admins only: a connector reaches other systems with stored credentials
    CONFIGURE_CONNECTOR = "configure_connector"  # admins only, for the same reason
    ROTATE_KEY = "rotate_key"  # the key's creator only: a replacement acts with its maker's permissions


class Owned(Protocol):
    created_by: str


Action = Scope | AnyOf | Rule

_RULE_DENIALS = {
    Rule.CREATE_CONNECTOR: ("admin_required", "Only admins can create connector sources."),
    Rule.CONFIGURE_CONNECTOR: ("admin_required", "Only admins can change a connector's configuration."),
    Rule.ROTATE_KEY: ("not_key_owner", "Only the user who created a key can rotate it; revoke it instead."),
}


def _denial(principal: Principal, action: Action, resource: Owned | None) -> Forbidden | None:
    """Why `principal` may not do `action` (on `resource`) now, or None if it may."""
    if isinstance(action, Scope):
        if action in principal.scopes:
            return None
        if principal.key_id and action in principal.key_scopes:
            # The key was granted it, but its creator no longer holds it.
            return Forbidden(
                "insufficient_scope",
                f"This key's creator (role {principal.role}) no longer has the '{action}' permission; "
                "the key cannot use it.",
            )
        return Forbidden("insufficient_scope", f"This request requires the '{action}' scope.")
    if isinstance(action, AnyOf):
        if any(scope in principal.scopes for scope in action.scopes):
            return None
        return Forbidden("insufficient_scope", f"This request requires one of the scopes: {', '.join(action.scopes)}.")
    if action is Rule.ROTATE_KEY:
        permitted = resource is not None and resource.created_by == principal.user_id
    else:  # the admin-only rules
        permitted = principal.is_admin
    return None if permitted else Forbidden(*_RULE_DENIALS[action])


def authorize(principal: Principal, action: Action, resource: Owned | None = None) -> None:
    """Raise Forbidden (403, with the precise code and message) unless `principal` may do
    `action` now. A scope counts only when the key holds it AND its creator holds it now
    (`Principal.scopes` is that intersection, read with the key)."""
    denial = _denial(principal, action, resource)
    if denial is not None:
        raise denial


def allowed(principal: Principal, action: Action, resource: Owned | None = None) -> bool:
    """`authorize` as a yes/no, for pages that show or hide what the viewer may do."""
    return _denial(principal, action, resource) is None
