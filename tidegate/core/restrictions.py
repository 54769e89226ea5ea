"""A key's restrictions as one immutable value, each restriction a small object.

In the style of macaroon caveats (PyPI Warehouse): every restriction on a key is a small
uniform object that checks one thing. `KeyRestrictions` is built when the key is read
(authentication, and the key cache: so it must stay a value, no ORM objects) and rides on
the `Principal`; the readers (source visibility, row filters, the IP check, the child-key
bounds) ask it instead of reading the key's row.

Two kinds of check:
- at request time, `verify(...)` on the restriction that concerns the request (the client
  IP, the source opened);
- when a key makes a key, `KeyRestrictions.bound(terms)`: each dimension either fills in an
  omitted value from the parent (a child that says nothing is exactly as narrow as its
  parent) or says whether the given value stays within the parent's.

Scopes are bounded elsewhere (`Principal.missing`: a key acts with its own effective scopes).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

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


def ip_allowed(client_ip: str | None, allowlist: tuple[str, ...] | list[str]) -> bool:
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in allowlist)


def _subnet_of(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network, parent: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    """`net` lies within `parent` (never across IP versions)."""
    if isinstance(net, ipaddress.IPv4Network) and isinstance(parent, ipaddress.IPv4Network):
        return net.subnet_of(parent)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(parent, ipaddress.IPv6Network):
        return net.subnet_of(parent)
    return False


# --------------------------------------------------------------------------- the restrictions


@dataclass(frozen=True)
class RateLimit:
    per_minute: int

    # (field in a refusal, what "within" means)
    field, rule = "rate_limit_per_minute", "no higher than this key's"

    def unbounded(self) -> bool:
        return False  # every key has a rate limit

    def within(self, child: int) -> bool:
        return child <= self.per_minute

    def stored(self) -> int:
        return self.per_minute


@dataclass(frozen=True)
class Expiry:
    at: datetime | None

    field, rule = "expires_in_days", "no later than this key's expiry"

    def unbounded(self) -> bool:
        return self.at is None

    def within(self, child: datetime) -> bool:
        return self.at is not None and child <= self.at

    def stored(self) -> datetime | None:
        return self.at


@dataclass(frozen=True)
class IpAllowlist:
    networks: tuple[str, ...] | None

    field, rule = "ip_allowlist", "each range inside one of this key's"

    def unbounded(self) -> bool:
        return not self.networks

    def verify(self, client_ip: str | None) -> None:
        """403 `ip_not_allowed` unless the request comes from an allowed address."""
        if self.networks and not ip_allowed(client_ip, self.networks):
            raise Forbidden("ip_not_allowed", f"Requests from {client_ip} are not allowed for this API key.")

    def within(self, child: list[str]) -> bool:
        parents = [ipaddress.ip_network(p, strict=False) for p in self.networks or ()]
        return all(
            any(_subnet_of(net, p) for p in parents) for net in (ipaddress.ip_network(c, strict=False) for c in child)
        )

    def stored(self) -> list[str] | None:
        return list(self.networks) if self.networks is not None else None


@dataclass(frozen=True)
class SourceSelection:
    """The key's `source_scope`: None = every source its subjects may open; else only these."""

    source_ids: frozenset[str] | None
    # The stored JSON as given ({"mode": "all"} stays distinguishable from no scope at all).
    raw: tuple[tuple[str, Any], ...] | None = None

    field, rule = "source_scope", "only sources this key selects"

    @classmethod
    def of(cls, scope: dict | None) -> SourceSelection:
        if not scope:
            return cls(None, None if scope is None else ())
        raw = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in scope.items())
        if scope.get("mode") == "selected":
            return cls(frozenset(scope.get("source_ids") or ()), raw)
        return cls(None, raw)

    def allows(self, source_id: str) -> bool:
        return self.source_ids is None or source_id in self.source_ids

    def unbounded(self) -> bool:
        return self.source_ids is None

    def within(self, child: dict) -> bool:
        return child.get("mode") == "selected" and set(child["source_ids"]) <= (self.source_ids or frozenset())

    def stored(self) -> dict | None:
        if self.raw is None:
            return None
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.raw}


@dataclass(frozen=True)
class AccessPolicies:
    """The key's own access policies (None: none), ANDed with its creator's."""

    ids: tuple[str, ...] | None

    # Exactly the parent's, not "at least": a key's own policies compose like a user's
    # (filters on the same column union their values; a policy that applies where the
    # parent's did not turns "no policy applies" into rows), so an added policy can WIDEN
    # what the key reads. Equality is the rule that can never exceed.
    field, rule = "access_policy_ids", "exactly this key's policies"

    def unbounded(self) -> bool:
        return not self.ids

    def within(self, child: list[str]) -> bool:
        return set(child) == set(self.ids or ())

    def stored(self) -> list[str] | None:
        return list(self.ids) if self.ids is not None else None


@dataclass(frozen=True)
class BoundUser:
    """A user whose visibility and policies the key is also bounded by (None: none)."""

    user_id: str | None

    field, rule = "bound_user_id", "this key's bound user"

    def unbounded(self) -> bool:
        return not self.user_id

    def within(self, child: str) -> bool:
        return child == self.user_id

    def stored(self) -> str | None:
        return self.user_id


@dataclass(frozen=True)
class KeyRestrictions:
    """Everything that narrows what one key may do, read with the key at one moment."""

    key_id: str
    org_id: str
    creator_id: str
    scopes: tuple[str, ...]
    access_policies: AccessPolicies
    source_selection: SourceSelection
    bound_user: BoundUser
    ip_allowlist: IpAllowlist
    expiry: Expiry
    rate_limit: RateLimit
    parent_key_id: str | None = None

    @classmethod
    def of(
        cls,
        *,
        key_id: str,
        org_id: str,
        creator_id: str,
        scopes: Any,
        access_policy_ids: Any,
        source_scope: dict | None,
        bound_user_id: str | None,
        ip_allowlist: Any,
        expires_at: datetime | None,
        rate_limit_per_minute: int,
        parent_key_id: str | None = None,
    ) -> KeyRestrictions:
        """From a key's stored values (JSON lists and dicts are copied into tuples)."""
        return cls(
            key_id=key_id,
            org_id=org_id,
            creator_id=creator_id,
            scopes=tuple(scopes or ()),
            access_policies=AccessPolicies(tuple(access_policy_ids) if access_policy_ids is not None else None),
            source_selection=SourceSelection.of(source_scope),
            bound_user=BoundUser(bound_user_id),
            ip_allowlist=IpAllowlist(tuple(ip_allowlist) if ip_allowlist is not None else None),
            expiry=Expiry(expires_at),
            rate_limit=RateLimit(rate_limit_per_minute),
            parent_key_id=parent_key_id,
        )

    # Shorthands for the readers.
    @property
    def access_policy_ids(self) -> tuple[str, ...]:
        return self.access_policies.ids or ()

    @property
    def bound_user_id(self) -> str | None:
        return self.bound_user.user_id

    def bounding(self) -> tuple[tuple[str, Any], ...]:
        """(KeyTerms attribute, restriction) for every dimension a child key is bounded in."""
        return (
            ("access_policy_ids", self.access_policies),
            ("source_scope", self.source_selection),
            ("bound_user_id", self.bound_user),
            ("ip_allowlist", self.ip_allowlist),
            ("expires_at", self.expiry),
            ("rate_limit_per_minute", self.rate_limit),
        )

    def bound(self, terms: KeyTerms) -> KeyTerms:
        """A child key's terms with every omitted one inherited from this (the parent) key;
        or 403 `exceeds_parent_key` naming every restriction the request goes beyond."""
        exceeded = []
        for attr, restriction in self.bounding():
            child = getattr(terms, attr)
            if child is None:
                terms = replace(terms, **{attr: restriction.stored()})
            elif not (restriction.unbounded() or restriction.within(child)):
                exceeded.append(restriction)
        if exceeded:
            raise Forbidden(
                "exceeds_parent_key",
                f"A key cannot create a key broader than itself; exceeds the parent key in: "
                f"{', '.join(r.field for r in exceeded)}. Allowed: "
                f"{'; '.join(f'{r.field} {r.rule}' for r in exceeded)}. Omit a field to inherit this key's value.",
            )
        return terms
