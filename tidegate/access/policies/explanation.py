"""Explanation: what a subject may read of a source and why, for people (the web preview,
POST /access/resolve), as a typed value; and the display-only SQL rendering of a filter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.access.models import Policy
from tidegate.access.policies.resolution import (
    _POLICY_COLUMNS,
    _column_index,
    _PolicyRow,
    _resolve_key,
    _rows,
    _subject_state,
    _user_filter,
)
from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.rowfilter import RowFilter
from tidegate.orgs.service import get_user


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def where_clause(row_filter: RowFilter) -> str:
    """A readable SQL rendering of the filter, for display only (never executed by tidegate).

    "" when unrestricted, "FALSE" when no row passes.
    """
    if row_filter.deny_all:
        return "FALSE"
    return " AND ".join(
        f"{quote_identifier(c.column)} IN ({', '.join(quote_literal(v) for v in sorted(c.values))})"
        for c in row_filter.clauses
    )


def effective_access(row_filter: RowFilter) -> str:
    """none, full (every row and column as it is) or filtered (some rows, or columns hidden or masked)."""
    if row_filter.deny_all:
        return "none"
    return "full" if row_filter.is_unrestricted else "filtered"


def filter_columns(row_filter: RowFilter) -> dict[str, list[str]]:
    """{column: [values]}; a column restricted twice (key composition) keeps the intersection."""
    merged: dict[str, frozenset[str]] = {}
    for clause in row_filter.clauses:
        merged[clause.column] = merged[clause.column] & clause.values if clause.column in merged else clause.values
    return {column: sorted(values) for column, values in merged.items()}


def _applies_to_source(policy: _PolicyRow, source_id: str, columns: dict[str, list[str]]) -> bool:
    if policy.source_ids:
        return source_id in policy.source_ids
    return (
        not policy.row_filters
        or any(f["column"].casefold() in columns for f in policy.row_filters)
        or any(r["column"].casefold() in columns for r in policy.column_rules)
    )


@dataclass(frozen=True)
class Explanation:
    """What one subject (a user, or a key) may read of one source, and why: the resolved row
    filter itself (the one data reads use) with the notes that explain it."""

    user_id: str  # the user, or the key's creator
    source_id: str
    row_filter: RowFilter
    notes: tuple[str, ...]
    # Some policy of the org applies to the source, or the org denies by default (or the
    # key has policies or a bound user of its own).
    source_is_access_controlled: bool

    @property
    def effective_access(self) -> str:
        return effective_access(self.row_filter)

    @property
    def where_clause(self) -> str:
        return where_clause(self.row_filter)

    @property
    def policy_ids(self) -> list[str]:
        return list(self.row_filter.policy_ids)

    @property
    def reasons(self) -> list[str]:
        return list(self.row_filter.reasons) + list(self.notes)

    @property
    def has_any_policy(self) -> bool:
        """At least one policy applies to this subject and source."""
        return bool(self.row_filter.policy_ids)

    @property
    def row_filters(self) -> dict[str, list[str]]:
        return {} if self.row_filter.deny_all else filter_columns(self.row_filter)

    @property
    def hidden_columns(self) -> list[str]:
        return sorted(self.row_filter.column_rules.hidden)

    @property
    def masked_columns(self) -> list[str]:
        return sorted(self.row_filter.column_rules.masked)

    def wire(self) -> dict[str, Any]:
        """The contract's ResolvedAccess, plus `policy_ids`, `reasons` and `column_rules`."""
        return {
            "user_id": self.user_id,
            "source_id": self.source_id,
            "source_is_access_controlled": self.source_is_access_controlled,
            "effective_access": self.effective_access,
            "resolved_filters": {"row_filters": self.row_filters, "has_any_policy": self.has_any_policy},
            "where_clause": self.where_clause,
            "policy_ids": self.policy_ids,
            "reasons": self.reasons,
            "column_rules": {"hidden": self.hidden_columns, "masked": self.masked_columns},
        }


def _source_is_access_controlled(
    session: Session, org_id: str, source_id: str, source_columns: Sequence[str], deny_by_default: bool
) -> bool:
    if deny_by_default:
        return True
    columns = _column_index(source_columns)
    return any(
        _applies_to_source(p, source_id, columns)
        for p in _rows(session.execute(select(*_POLICY_COLUMNS).where(Policy.org_id == org_id)))
    )


def explain_user(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]
) -> Explanation:
    """What `user_id` (a tidegate id of the org) may read of the source, resolved once."""
    row_filter, notes, deny_by_default = _user_filter(
        session, org_id, user_id, source_id, source_columns, subject=f"user {user_id}"
    )
    controlled = _source_is_access_controlled(session, org_id, source_id, source_columns, deny_by_default)
    return Explanation(user_id, source_id, row_filter, tuple(notes), controlled)


def explain_key(session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]) -> Explanation:
    """What a request with the key may read of the source (`user_id`: the key's creator):
    creator AND key policies AND bound user, resolved once."""
    row_filter, notes = _resolve_key(session, key, source_id, source_columns)
    deny_by_default, _ = _subject_state(session, key.org_id, key.creator_id)
    controlled = (
        _source_is_access_controlled(session, key.org_id, source_id, source_columns, deny_by_default)
        or bool(key.access_policy_ids)
        or bool(key.bound_user_id)
    )
    return Explanation(key.creator_id, source_id, row_filter, tuple(notes), controlled)


def resolve_view(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]
) -> Explanation:
    """What `user_id` may read of the source, and why (`.wire()`: the contract's ResolvedAccess
    for POST /access/resolve, plus `policy_ids` and `reasons`).

    `user_id` may be a tidegate id or an external id; NotFound `user_not_found` otherwise.
    `source_is_access_controlled`: some policy of the org applies to the source, or the org
    denies by default. `has_any_policy`: at least one policy applies to this user and source.
    """
    user = get_user(session, org_id, user_id)
    return explain_user(session, org_id, user.id, source_id, source_columns)


def resolve_key_view(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]
) -> Explanation:
    """What a request with the key may read (tidegate extension): `user_id` is the key's creator."""
    return explain_key(session, key, source_id, source_columns)
