"""A resolved row filter: the one value every read of source data must be given.

A filter is a conjunction of clauses `column IN (values)`; values are strings (policy values
are strings on the wire) and are compared against the column cast to text. `deny_all`
means no row at all (deny-by-default, or a policy that fails closed).

Composition:
- Within one principal's policies (direct and group), filters on the same column OR their
  values and filters on different columns AND: `access.policies` builds one clause per
  column with the union of values.
- Between principals (a key's creator, the key's own policies, its bound user) the filters
  AND: `RowFilter.both` keeps every clause of both, so a column restricted twice must
  satisfy both value sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Clause:
    column: str  # the column's exact name in the source
    values: frozenset[str]


@dataclass(frozen=True)
class RowFilter:
    """Rows are read only through an `access.sources.SourceAccess` carrying one: a filter
    alone reads nothing. `clauses` has no default, so that "no restriction" is always
    written out (`clauses=()`), where a reader (and tests/test_security_capability.py) sees it."""

    clauses: tuple[Clause, ...]
    deny_all: bool = False
    policy_ids: tuple[str, ...] = ()  # the policies that produced it, for audit and resolve
    reasons: tuple[str, ...] = field(default=(), compare=False)  # why rows are denied, if they are

    @classmethod
    def deny(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> RowFilter:
        return cls(clauses=(), deny_all=True, policy_ids=policy_ids, reasons=(reason,))

    @property
    def is_unrestricted(self) -> bool:
        return not self.deny_all and not self.clauses

    def both(self, other: RowFilter) -> RowFilter:
        """Rows that pass this filter AND the other."""
        return RowFilter(
            clauses=self.clauses + other.clauses,
            deny_all=self.deny_all or other.deny_all,
            policy_ids=tuple(dict.fromkeys(self.policy_ids + other.policy_ids)),
            reasons=self.reasons + other.reasons,
        )

    def cache_key(self) -> tuple:
        """Hashable identity for caches kept per (source version, effective filter)."""
        key = self.__dict__.get("_cache_key")
        if key is None:  # computed once: it is asked for on every page read
            key = (self.deny_all, tuple(sorted((c.column, tuple(sorted(c.values))) for c in self.clauses)))
            self.__dict__["_cache_key"] = key  # (a frozen dataclass: not through __setattr__)
        return key
