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

The filter also carries the reader's column rules (`core.columnrules`: hidden and masked
columns), so that no read can get rows without them: the same value reaches every reader of
rows, and its `cache_key` covers both. `both` adds the rules up (hide beats mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidegate.core.columnrules import NO_COLUMN_RULES, ColumnRules


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
    column_rules: ColumnRules = NO_COLUMN_RULES  # hidden and masked columns (applied to every read)

    def __post_init__(self) -> None:
        if not isinstance(self.column_rules, ColumnRules):
            raise TypeError("column_rules must be a tidegate.core.columnrules.ColumnRules")

    @classmethod
    def deny(cls, reason: str, policy_ids: tuple[str, ...] = ()) -> RowFilter:
        return cls(clauses=(), deny_all=True, policy_ids=policy_ids, reasons=(reason,))

    @property
    def is_unrestricted(self) -> bool:
        """Every row and every column as it is."""
        return not self.deny_all and not self.clauses and self.column_rules.is_empty

    def both(self, other: RowFilter) -> RowFilter:
        """Rows that pass this filter AND the other."""
        return RowFilter(
            clauses=self.clauses + other.clauses,
            deny_all=self.deny_all or other.deny_all,
            policy_ids=tuple(dict.fromkeys(self.policy_ids + other.policy_ids)),
            reasons=self.reasons + other.reasons,
            column_rules=self.column_rules.both(other.column_rules),
        )

    def cache_key(self) -> tuple:
        """Hashable identity for caches kept per (source version, effective filter)."""
        key = self.__dict__.get("_cache_key")
        if key is None:  # computed once: it is asked for on every page read
            clauses = tuple(sorted((c.column, tuple(sorted(c.values))) for c in self.clauses))
            key = (self.deny_all, clauses, self.column_rules.cache_key())
            self.__dict__["_cache_key"] = key  # (a frozen dataclass: not through __setattr__)
        return key
