"""A key never exceeds the key that made it.

When a request authenticated by a key creates a key, the new key (the child) is bounded by
the calling key's (the parent's) whole restriction set, not only its scopes. Each
restriction below is one small check in the style of a macaroon caveat: given the parent's
stored value and the child's requested value, it either fills in an omitted value from the
parent (so a child that says nothing is exactly as narrow as its parent) or says whether a
given value stays within the parent's.

Scopes are bounded elsewhere (`Principal.missing`: a key acts with its own effective scopes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from tidegate.credentials.models import ApiKey
from tidegate.errors import Forbidden


@dataclass(frozen=True)
class KeyTerms:
    """A new key's restrictions, validated and normalized; None = not given (for the rate
    limit and expiry too, until a parent or the default fills them in)."""

    rate_limit_per_minute: int | None
    expires_at: datetime | None
    ip_allowlist: list[str] | None
    source_scope: dict | None
    access_policy_ids: list[str] | None
    bound_user_id: str | None


class Restriction:
    """One dimension of a parent key's restriction set."""

    #: The KeyTerms / ApiKey attribute.
    attr: str
    #: The name a refusal gives it (the request field a client would change).
    field: str
    #: What "within" means, for the refusal's message.
    rule: str

    def unbounded(self, parent_value: Any) -> bool:
        """The parent places no restriction here (None or empty: anything goes)."""
        return not parent_value

    def within(self, parent_value: Any, child_value: Any) -> bool:
        raise NotImplementedError

    def verify(self, parent: ApiKey, terms: KeyTerms) -> tuple[KeyTerms, bool]:
        """(the child's terms with this dimension inherited if omitted, whether it is within)."""
        parent_value = getattr(parent, self.attr)
        child_value = getattr(terms, self.attr)
        if child_value is None:
            return replace(terms, **{self.attr: _copy(parent_value)}), True
        return terms, self.unbounded(parent_value) or self.within(parent_value, child_value)


class RateLimit(Restriction):
    attr, field, rule = "rate_limit_per_minute", "rate_limit_per_minute", "no higher than this key's"

    def unbounded(self, parent_value: int) -> bool:
        return False  # every key has a rate limit

    def within(self, parent_value: int, child_value: int) -> bool:
        return child_value <= parent_value


class Expiry(Restriction):
    attr, field, rule = "expires_at", "expires_in_days", "no later than this key's expiry"

    def unbounded(self, parent_value: datetime | None) -> bool:
        return parent_value is None

    def within(self, parent_value: datetime, child_value: datetime) -> bool:
        return child_value <= parent_value


class IpAllowlist(Restriction):
    attr, field, rule = "ip_allowlist", "ip_allowlist", "each range inside one of this key's"

    def within(self, parent_value: list[str], child_value: list[str]) -> bool:
        parents = [ipaddress.ip_network(p, strict=False) for p in parent_value]
        return all(
            any(net.version == p.version and net.subnet_of(p) for p in parents)
            for net in (ipaddress.ip_network(c, strict=False) for c in child_value)
        )


class SourceScope(Restriction):
    attr, field, rule = "source_scope", "source_scope", "only sources this key selects"

    def unbounded(self, parent_value: dict | None) -> bool:
        return not parent_value or parent_value.get("mode") != "selected"

    def within(self, parent_value: dict, child_value: dict) -> bool:
        return child_value.get("mode") == "selected" and set(child_value["source_ids"]) <= set(
            parent_value["source_ids"]
        )


class AccessPolicies(Restriction):
    # Exactly the parent's, not "at least": a key's own policies compose like a user's
    # (filters on the same column union their values; a policy that applies where the
    # parent's did not turns "no policy applies" into rows), so an added policy can WIDEN
    # what the key reads. Equality is the rule that can never exceed.
    attr, field, rule = "access_policy_ids", "access_policy_ids", "exactly this key's policies"

    def within(self, parent_value: list[str], child_value: list[str]) -> bool:
        return set(child_value) == set(parent_value)


class BoundUser(Restriction):
    attr, field, rule = "bound_user_id", "bound_user_id", "this key's bound user"

    def within(self, parent_value: str, child_value: str) -> bool:
        return child_value == parent_value


RESTRICTIONS: tuple[Restriction, ...] = (
    AccessPolicies(),
    SourceScope(),
    BoundUser(),
    IpAllowlist(),
    Expiry(),
    RateLimit(),
)


def bound_by_parent(parent: ApiKey, terms: KeyTerms) -> KeyTerms:
    """The child's terms, every omitted one inherited from `parent`; or 403
    `exceeds_parent_key` naming every restriction the request goes beyond."""
    exceeded: list[Restriction] = []
    for restriction in RESTRICTIONS:
        terms, ok = restriction.verify(parent, terms)
        if not ok:
            exceeded.append(restriction)
    if exceeded:
        raise Forbidden(
            "exceeds_parent_key",
            f"A key cannot create a key broader than itself; exceeds the parent key in: "
            f"{', '.join(r.field for r in exceeded)}. Allowed: "
            f"{'; '.join(f'{r.field} {r.rule}' for r in exceeded)}. Omit a field to inherit this key's value.",
        )
    return terms


def _copy(value: Any) -> Any:
    # Stored JSON values must not be shared between two ORM objects.
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
    return value
