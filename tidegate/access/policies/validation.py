"""Validation of what services are given: names, descriptions, row filters, column rules, source ids,
and lists of user or policy ids resolved against one organization (never across)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tidegate.access.models import Policy
from tidegate.core.columnrules import ACTIONS
from tidegate.errors import InvalidRequest
from tidegate.orgs.models import User

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_FILTERS = 50
MAX_COLUMN_RULES = 200
MAX_COLUMN = 200
MAX_VALUES = 1000
MAX_VALUE = 1000
MAX_SOURCE_IDS = 500
MAX_SOURCE_ID = 200
MAX_IDS_PER_CALL = 1000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "field not given" in updates (None may be a real value)


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME or _has_control(name):
        raise InvalidRequest("invalid_name", f"{what} name must be 1-{MAX_NAME} printable characters.")
    return name.strip()


def _check_description(description: Any) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or "\x00" in description:
        raise InvalidRequest(
            "invalid_description", f"description must be text of at most {MAX_DESCRIPTION} characters."
        )
    return description


def _column_entries(
    raw: Any, *, field: str, second: str, code: str, limit: int, noun: str, repeat_hint: str
) -> Iterator[tuple[str, str, Any]]:
    """(where, column, value of `second`) for each entry of a list of {column, `second`},
    checked alike for row filters and column rules: a list of at most `limit` objects (mappings
    or objects with those attributes), each column a non-empty printable string named once
    (case-insensitively: a column named twice is refused, never merged, so that what a policy
    says is what was sent)."""
    if raw is None:
        return
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest(code, f"{field} must be a list of {{column, {second}}}.")
    if len(raw) > limit:
        raise InvalidRequest(code, f"A policy holds at most {limit} {noun}.")
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if isinstance(item, Mapping):
            extra = sorted(set(item) - {"column", second})
            if extra:
                raise InvalidRequest(code, f"{where} has unknown field(s): {', '.join(map(str, extra))}.")
            column, value = item.get("column"), item.get(second)
        elif hasattr(item, "column") and hasattr(item, second):
            column, value = item.column, getattr(item, second)
        else:
            raise InvalidRequest(code, f"{where} must be an object {{column, {second}}}.")
        if not isinstance(column, str) or not column.strip():
            raise InvalidRequest(code, f"{where}.column must be a non-empty string.")
        if len(column) > MAX_COLUMN or _has_control(column):
            raise InvalidRequest(code, f"{where}.column must be at most {MAX_COLUMN} printable characters.")
        folded = column.casefold()
        if folded in seen:
            raise InvalidRequest(
                code,
                f"{where}.column {column!r} repeats column {seen[folded]!r} (columns match case-insensitively); "
                f"{repeat_hint}.",
            )
        seen[folded] = column
        yield where, column, value


def normalize_row_filters(raw: Any) -> list[dict[str, Any]]:
    """Validate `row_filters` ([{column, values: [str]}]); return them de-duplicated, as stored.

    Accepts mappings or objects with `column`/`values` attributes (e.g. pydantic models).
    """
    result: list[dict[str, Any]] = []
    entries = _column_entries(
        raw,
        field="row_filters",
        second="values",
        code="invalid_row_filters",
        limit=MAX_FILTERS,
        noun="row filters",
        repeat_hint="list every allowed value in one filter",
    )
    for where, column, values in entries:
        if not isinstance(values, (list, tuple)) or not values:
            raise InvalidRequest("invalid_row_filters", f"{where}.values must be a non-empty list of strings.")
        if len(values) > MAX_VALUES:
            raise InvalidRequest("invalid_row_filters", f"{where}.values holds at most {MAX_VALUES} values.")
        for value in values:
            if not isinstance(value, str):
                raise InvalidRequest(
                    "invalid_row_filters",
                    f'{where}.values must be strings; got {type(value).__name__} {value!r} (send it as "{value}").',
                )
            if len(value) > MAX_VALUE or "\x00" in value:
                raise InvalidRequest(
                    "invalid_row_filters", f"{where}.values: each value is at most {MAX_VALUE} characters, without NUL."
                )
        result.append({"column": column, "values": list(dict.fromkeys(values))})
    return result


def normalize_column_rules(raw: Any) -> list[dict[str, str]]:
    """Validate `column_rules` ([{column, action: hide | mask}]); return them as stored.

    One rule per column. Accepts mappings or objects with `column`/`action` attributes.
    """
    result: list[dict[str, str]] = []
    entries = _column_entries(
        raw,
        field="column_rules",
        second="action",
        code="invalid_column_rules",
        limit=MAX_COLUMN_RULES,
        noun="column rules",
        repeat_hint="give each column one rule",
    )
    for where, column, action in entries:
        if action not in ACTIONS:
            raise InvalidRequest(
                "invalid_column_rule_action",
                f"{where}.action must be one of {', '.join(ACTIONS)}; got {repr(action)[:60]}.",
            )
        result.append({"column": column, "action": action})
    return result


def normalize_source_ids(raw: Any) -> list[str]:
    """Validate `source_ids`; empty or None means Auto binding. Returned de-duplicated, sorted."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest("invalid_source_ids", "source_ids must be a list of source ids.")
    if len(raw) > MAX_SOURCE_IDS:
        raise InvalidRequest("invalid_source_ids", f"A policy is bound to at most {MAX_SOURCE_IDS} sources.")
    for source_id in raw:
        if (
            not isinstance(source_id, str)
            or not source_id.strip()
            or len(source_id) > MAX_SOURCE_ID
            or _has_control(source_id)
        ):
            raise InvalidRequest("invalid_source_ids", f"{source_id!r} is not a source id.")
    return sorted(set(raw))


def _check_id_list(raw: Any, field: str) -> list[str]:
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest(f"invalid_{field}", f"{field} must be a list of ids.")
    if len(raw) > MAX_IDS_PER_CALL:
        raise InvalidRequest(f"invalid_{field}", f"{field} holds at most {MAX_IDS_PER_CALL} ids.")
    for item in raw:
        if not isinstance(item, str) or not item or len(item) > 200:
            raise InvalidRequest(f"invalid_{field}", f"{item!r} in {field} is not an id.")
    return list(dict.fromkeys(raw))


def resolve_user_ids(session: Session, org_id: str, user_ids: Any) -> list[str]:
    """Active users of the org, by tidegate id or external id; all or nothing.

    Raises InvalidRequest `invalid_user_ids` naming every id that is not an active user here.
    Returns tidegate user ids, de-duplicated, in request order.
    """
    wanted = _check_id_list(user_ids, "user_ids")
    if not wanted:
        return []
    rows = session.execute(
        select(User.id, User.external_id, User.is_active).where(
            User.org_id == org_id, or_(User.id.in_(wanted), User.external_id.in_(wanted))
        )
    ).all()
    by_id = {r.id: r for r in rows}
    by_external = {r.external_id: r for r in rows if r.external_id is not None}
    resolved, bad = [], []
    for item in wanted:
        row = by_id.get(item) or by_external.get(item)
        if row is None or not row.is_active:
            bad.append(item)
        else:
            resolved.append(row.id)
    if bad:
        raise InvalidRequest("invalid_user_ids", f"No active user(s) {', '.join(map(repr, bad))} in this organization.")
    return list(dict.fromkeys(resolved))


def validate_policy_ids(session: Session, org_id: str, policy_ids: Any) -> list[str]:
    """Existing policies of the org; all or nothing (InvalidRequest `invalid_policy_ids`).

    Also what key creation should call on a key's `access_policy_ids`.
    """
    wanted = _check_id_list(policy_ids, "policy_ids")
    if not wanted:
        return []
    found = set(session.scalars(select(Policy.id).where(Policy.org_id == org_id, Policy.id.in_(wanted))))
    bad = [p for p in wanted if p not in found]
    if bad:
        raise InvalidRequest(
            "invalid_policy_ids", f"No access policy {', '.join(map(repr, bad))} in this organization."
        )
    return wanted
