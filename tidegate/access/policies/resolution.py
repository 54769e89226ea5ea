"""Resolution: the policies reaching a user or a key -> the RowFilter of one source.

Resolution (`resolve_user_filter`, `resolve_key_filter`) runs on every data request. It
reads the database every time (nothing is cached in the process, so a change is seen by the
very next request everywhere) with a couple of indexed queries per principal:
  1. the organization's deny_by_default flag joined with the user's active flag;
  2. the policies reaching the user directly or through a group (index-led subqueries).

Semantics (see also core.rowfilter):
- Binding: `source_ids` empty = Auto, the policy applies to every source having its
  column(s); each of its filters applies where the source has that column and is skipped
  where it does not; a filterless Auto policy applies to every source. Non-empty =
  Explicit: the policy applies only to those sources, and if such a source lacks one of the
  policy's columns the whole result fails closed (deny_all), with a reason naming the
  policy and the column.
- Columns match case-insensitively; clauses carry the source's actual column name (a
  policy column matching several source columns that differ only by case restricts each).
- Across all applicable policies (direct and group alike, no priority): filters on the same
  column union their values; filters on different columns AND.
- No applicable policy: all rows, or none when the organization's deny_by_default is on.
- Column rules (`column_rules`: hide or mask a column) match columns the same way, wherever
  the policy is bound (Auto: every source having the column, whether or not its row filters
  apply there; Explicit: its sources, and a bound source lacking a rule's column fails closed
  like a missing filter column). They never make a policy apply for rows (a hide rule must
  not open a deny-by-default organization). All rules reaching a principal add up and hide
  beats mask; between principals they add up too (`RowFilter.both`).
- A key: its creator's filter AND (if set) its own access_policy_ids composed as if they were
  the only policies (an id that no longer exists fails closed) AND (if set) its bound user's
  filter. AND-ing means a key's policies can only narrow what its creator sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, select, union
from sqlalchemy.orm import Session

from tidegate.access.models import GroupMember, GroupPolicy, Policy, PolicyAssignment
from tidegate.core.columnrules import HIDE, ColumnRules
from tidegate.core.restrictions import KeyRestrictions
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.orgs.models import Organization, User


@dataclass(frozen=True)
class _PolicyRow:
    id: str
    name: str
    source_ids: list[str]
    row_filters: list[dict[str, Any]]
    column_rules: list[dict[str, Any]]


_POLICY_COLUMNS = (Policy.id, Policy.name, Policy.source_ids, Policy.row_filters, Policy.column_rules)


def _rows(result: Iterable[Row[str, str, list[str], list[dict[str, Any]], list[dict[str, Any]]]]) -> list[_PolicyRow]:
    return sorted(
        (
            _PolicyRow(r.id, r.name, list(r.source_ids or []), list(r.row_filters or []), list(r.column_rules or []))
            for r in result
        ),
        key=lambda p: p.id,
    )


def _subject_state(session: Session, org_id: str, user_id: str) -> tuple[bool, bool | None]:
    """(org deny_by_default, user active?) in one query; user None if not a user of the org."""
    row = session.execute(
        select(Organization.deny_by_default, User.is_active)
        .select_from(Organization)
        .outerjoin(User, and_(User.id == user_id, User.org_id == Organization.id))
        .where(Organization.id == org_id)
    ).first()
    if row is None:
        return True, None  # no such organization: nothing to see
    return bool(row[0]), row[1]


def _load_user_policies(session: Session, org_id: str, user_id: str) -> list[_PolicyRow]:
    direct = select(PolicyAssignment.policy_id).where(PolicyAssignment.user_id == user_id)
    via_groups = (
        select(GroupPolicy.policy_id)
        .join(GroupMember, GroupMember.group_id == GroupPolicy.group_id)
        .where(GroupMember.user_id == user_id)
    )
    return _rows(
        session.execute(
            # One IN over a UNION: each policy is then a seek on (org_id, id), whatever the org's size.
            select(*_POLICY_COLUMNS).where(Policy.org_id == org_id, Policy.id.in_(union(direct, via_groups)))
        )
    )


def _column_index(source_columns: Sequence[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for column in source_columns:
        names = index.setdefault(column.casefold(), [])
        if column not in names:
            names.append(column)
    return index


def _label(policy: _PolicyRow) -> str:
    return f"policy {policy.id} ({policy.name!r})"


def _values(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in sorted(values))


def _compose(
    policies: Sequence[_PolicyRow],
    source_id: str,
    source_columns: Sequence[str],
    *,
    deny_by_default: bool,
    subject: str,
) -> tuple[RowFilter, list[str]]:
    """One principal's policies -> its RowFilter for the source, plus notes explaining it."""
    columns = _column_index(source_columns)
    union: dict[str, set[str]] = {}
    applicable: list[str] = []  # policies that apply for rows
    ruling: list[str] = []  # policies that only set column rules here
    denials: list[str] = []
    notes: list[str] = []
    hidden: set[str] = set()
    masked: set[str] = set()
    for policy in policies:
        explicit = bool(policy.source_ids)
        if explicit and source_id not in policy.source_ids:
            notes.append(f"{_label(policy)} is bound to other sources; it does not apply here.")
            continue
        denied_before = len(denials)
        _collect_column_rules(policy, columns, explicit, source_id, hidden, masked, denials, notes)
        if len(denials) > denied_before:
            applicable.append(policy.id)  # (recorded like a policy whose filter column is missing)
        if policy.column_rules and not policy.row_filters:
            # Column rules never make a policy apply for rows: a policy made only to hide a
            # column must not open every row in an organization that denies by default. It
            # is still among the policies that shaped what is read.
            if explicit or any(rule["column"].casefold() in columns for rule in policy.column_rules):
                ruling.append(policy.id)
            notes.append(f"{_label(policy)} has column rules only: it grants no rows.")
            continue
        matched: list[tuple[list[str], list[str]]] = []
        missing: list[str] = []
        for row_filter in policy.row_filters:
            names = columns.get(row_filter["column"].casefold())
            if names:
                matched.append((names, row_filter["values"]))
            else:
                missing.append(row_filter["column"])
        if explicit and missing:
            if policy.id not in applicable:
                applicable.append(policy.id)
            for column in missing:
                denials.append(
                    f"{_label(policy)} is bound to source {source_id} but that source has no column {column!r}: "
                    f"access fails closed."
                )
            continue
        if not explicit and policy.row_filters and not matched:
            notes.append(
                f"{_label(policy)} (auto) does not apply: the source has none of its columns "
                f"({', '.join(repr(c) for c in missing)})."
            )
            continue
        applicable.append(policy.id)
        for names, values in matched:
            for name in names:
                union.setdefault(name, set()).update(values)
        parts = [f"{names[0] if len(names) == 1 else names} IN ({_values(values)})" for names, values in matched]
        note = f"{_label(policy)} applies: " + (" AND ".join(parts) if parts else "no row filter (all rows)")
        if missing:
            note += f"; its filter(s) on absent column(s) {', '.join(repr(c) for c in missing)} do not apply here"
        notes.append(note + ".")
    rules = ColumnRules(hidden=frozenset(hidden), masked=frozenset(masked))
    shaped_by = tuple(dict.fromkeys(applicable + ruling))
    if denials:
        denied = RowFilter(clauses=(), deny_all=True, policy_ids=shaped_by, reasons=tuple(denials))
        return _with_rules(denied, rules), notes
    if not applicable:
        if deny_by_default:
            reason = (
                f"No access policy applies to {subject} on source {source_id} for rows, and the "
                f"organization denies by default: no rows."
            )
            return _with_rules(RowFilter.deny(reason, policy_ids=shaped_by), rules), notes
        notes.append(f"No access policy applies to {subject} on source {source_id} for rows: all rows.")
        # No policy applies for rows and none is required: every row (column rules still apply).
        return RowFilter(clauses=(), policy_ids=shaped_by, column_rules=rules), notes
    clauses = tuple(Clause(column, frozenset(values)) for column, values in sorted(union.items()))
    return RowFilter(clauses=clauses, policy_ids=shaped_by, column_rules=rules), notes


def _with_rules(row_filter: RowFilter, rules: ColumnRules) -> RowFilter:
    return row_filter if rules.is_empty else RowFilter.both(row_filter, RowFilter(clauses=(), column_rules=rules))


def _collect_column_rules(
    policy: _PolicyRow,
    columns: dict[str, list[str]],
    explicit: bool,
    source_id: str,
    hidden: set[str],
    masked: set[str],
    denials: list[str],
    notes: list[str],
) -> None:
    """Add the policy's column rules that match the source's columns to `hidden`/`masked`."""
    shown: list[str] = []
    for rule in policy.column_rules:
        names = columns.get(rule["column"].casefold())
        if not names:
            if explicit:
                denials.append(
                    f"{_label(policy)} is bound to source {source_id} but that source has no column "
                    f"{rule['column']!r} (column rule): access fails closed."
                )
            continue
        (hidden if rule["action"] == HIDE else masked).update(names)
        shown.append(f"{rule['action']} {names[0] if len(names) == 1 else names}")
    if shown:
        notes.append(f"{_label(policy)} column rules apply: {', '.join(shown)}.")


def _user_filter(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str], *, subject: str
) -> tuple[RowFilter, list[str], bool]:
    deny_by_default, active = _subject_state(session, org_id, user_id)
    if not active:
        return (
            RowFilter.deny(f"{subject} is not an active user of this organization: access fails closed."),
            [],
            deny_by_default,
        )
    policies = _load_user_policies(session, org_id, user_id)
    row_filter, notes = _compose(policies, source_id, source_columns, deny_by_default=deny_by_default, subject=subject)
    return row_filter, notes, deny_by_default


def resolve_user_filter(
    session: Session, org_id: str, user_id: str, source_id: str, source_columns: Sequence[str]
) -> RowFilter:
    """The rows `user_id` may see in the source (columns as the source names them).

    Fails closed (deny_all) for a user who is not an active user of the organization.
    """
    return _user_filter(session, org_id, user_id, source_id, source_columns, subject=f"user {user_id}")[0]


def _key_policy_filter(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str], deny_by_default: bool
) -> tuple[RowFilter, list[str]]:
    ids = list(dict.fromkeys(key.access_policy_ids))
    policies = _rows(session.execute(select(*_POLICY_COLUMNS).where(Policy.org_id == key.org_id, Policy.id.in_(ids))))
    found = {p.id for p in policies}
    unknown = [p for p in ids if p not in found]
    if unknown:
        return RowFilter(
            clauses=(),
            deny_all=True,
            policy_ids=tuple(ids),
            reasons=tuple(
                f"key {key.key_id} names access policy {p}, which does not exist in this organization: access fails closed."
                for p in unknown
            ),
        ), []
    return _compose(
        policies, source_id, source_columns, deny_by_default=deny_by_default, subject=f"key {key.key_id}'s own policies"
    )


def _resolve_key(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]
) -> tuple[RowFilter, list[str]]:
    result, notes, deny_by_default = _user_filter(
        session, key.org_id, key.creator_id, source_id, source_columns, subject=f"key creator {key.creator_id}"
    )
    if key.access_policy_ids:
        key_filter, key_notes = _key_policy_filter(session, key, source_id, source_columns, deny_by_default)
        result, notes = result.both(key_filter), notes + key_notes
    if key.bound_user_id:
        bound, bound_notes, _ = _user_filter(
            session, key.org_id, key.bound_user_id, source_id, source_columns, subject=f"bound user {key.bound_user_id}"
        )
        result, notes = result.both(bound), notes + bound_notes
    return result, notes


def resolve_key_filter(
    session: Session, key: KeyRestrictions, source_id: str, source_columns: Sequence[str]
) -> RowFilter:
    """The rows a request with `key` may see: creator AND key policies AND bound user (each if set)."""
    return _resolve_key(session, key, source_id, source_columns)[0]
