"""authorize: the one place that decides what a principal may do (Datasette's `allowed()`).

A scope is allowed when the key holds it AND its creator holds it now (`Principal.scopes` is
already that intersection); a `Rule` adds a role or ownership condition on top.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.errors import Forbidden


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
    checks = _scope_checks.get()
    if checks is not None:
        if isinstance(action, Scope):
            checks.append((action.value,))
        elif isinstance(action, AnyOf):
            checks.append(tuple(s.value for s in action.scopes if s in principal.scopes))


# The scope checks the current request passed, each as the scopes that satisfied it (one, or
# those of an AnyOf the caller holds): written into its audit event, from which a key's
# insights derive the least privilege it needs. None outside a tracked request.
_scope_checks: ContextVar[list[tuple[str, ...]] | None] = ContextVar("tidegate_scope_checks", default=None)


def track_scope_checks() -> tuple[list[tuple[str, ...]], Token[list[tuple[str, ...]] | None]]:
    """Start recording the scope checks of the current request (its task and the threads it
    hands work to, which run in a copy of its context: they append to the same list)."""
    checks: list[tuple[str, ...]] = []
    return checks, _scope_checks.set(checks)


def stop_tracking_scope_checks(token: Token[list[tuple[str, ...]] | None]) -> None:
    _scope_checks.reset(token)


def note_scopes_needed(scopes: frozenset[str] | set[str]) -> None:
    """Record scopes a request needed without a check of its own (a key creating a key needs
    every scope it grants: it cannot delegate what it does not hold)."""
    checks = _scope_checks.get()
    if checks is not None:
        checks.extend((scope,) for scope in sorted(scopes))


def allowed(principal: Principal, action: Action, resource: Owned | None = None) -> bool:
    """`authorize` as a yes/no, for pages that show or hide what the viewer may do."""
    return _denial(principal, action, resource) is None
