"""Resolved column rules: which columns of one source a reader may not see as they are.

- `hidden`: the column does not exist for the reader (every read drops it, metadata too).
- `masked`: the reader sees a masked value instead (text: its first character + `***`;
  every other type: null), computed BEFORE any SQL of the reader's runs, so no filter,
  grouping, ordering, join or aggregate can reach the original.

Names are the source's exact column names (resolution matches policy columns
case-insensitively, as for row filters). Rules only ever add up (`both`): hide beats mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HIDE, MASK = "hide", "mask"
ACTIONS = (HIDE, MASK)
MASK_SUFFIX = "***"
# What a projection selects when the reader sees no column at all (SQL needs one): it keeps the
# row count true and is dropped from every result, so no reader ever sees it as a column.
NO_VISIBLE_COLUMN = "__no_visible_column"


@dataclass(frozen=True)
class ColumnRules:
    hidden: frozenset[str] = frozenset()
    masked: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, frozenset) or not isinstance(self.masked, frozenset):
            raise TypeError("hidden and masked are frozensets of column names")
        if self.masked & self.hidden:  # hide beats mask
            object.__setattr__(self, "masked", self.masked - self.hidden)

    @property
    def is_empty(self) -> bool:
        return not self.hidden and not self.masked

    def both(self, other: ColumnRules) -> ColumnRules:
        """Every restriction of this AND the other (a column hidden by either is hidden)."""
        if other.is_empty:
            return self
        if self.is_empty:
            return other
        return ColumnRules(hidden=self.hidden | other.hidden, masked=self.masked | other.masked)

    def visible(self, columns: Iterable[str]) -> list[str]:
        """The names of `columns` the reader sees (masked ones included), in order."""
        return [c for c in columns if c not in self.hidden]

    def cache_key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(sorted(self.hidden)), tuple(sorted(self.masked))


NO_COLUMN_RULES = ColumnRules()
