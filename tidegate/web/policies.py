"""Settings > Security > Access Policies (admins): list, create, edit, delete; assign users
and groups; and a preview of what a user would see in a source.

The column picker is fed by the columns of the sources the admin may open (their current
versions), and the value suggestions by `engine.distinct_values` over those sources with
the ADMIN's own row filter (from `open_source`), so an admin who is filtered themselves is
never shown values from rows they may not read. Every change goes through
`tidegate.access.policies`, audited like its /api/v1/access twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData

from tidegate.access import policies as service
from tidegate.access.models import Group, Policy
from tidegate.access.sources import open_source, permission_of, preview_as_user, visible_sources_query
from tidegate.catalog.models import Source, SourceVersion
from tidegate.core.columnrules import HIDE, MASK
from tidegate.core.scopes import Scope
from tidegate.credentials.bounds import keys_naming_policy
from tidegate.data import engine
from tidegate.errors import TidegateError
from tidegate.http import request_context
from tidegate.orgs.models import User
from tidegate.orgs.service import get_user
from tidegate.web.common import (
    FORM,
    LARGE_FORM,
    FieldRefusal,
    PageError,
    as_page,
    db,
    field_error,
    required_text,
    router,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.names import linked
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer
from tidegate.web.sources import PREVIEW_ROWS, RESTRICTED_VIEWER, Preview

READ = Scope.POLICIES_READ
WRITE = Scope.POLICIES_WRITE
BASE = "/settings/security/access-policies"
LIST_LIMIT = 200
SPARE_ROWS = 8  # hidden blank filter rows that "Add another filter" reveals
CATALOG_SOURCES = 500
SUGGESTED_VALUES = 50
SUGGESTION_BUDGET = 200  # distinct_values calls per page
NO_SUGGESTIONS = ("float", "timestamp")
NOTICES = {
    "created": "The access policy was created. Assign it to people or groups below.",
    "saved": "The access policy was saved. It applies from the next request.",
    "deleted": "The access policy was deleted.",
    "user_assigned": "The policy was assigned. It applies from their next request.",
    "user_removed": "The person no longer has this policy directly.",
    "group_assigned": "The policy was assigned to the group.",
    "group_removed": "The policy was removed from the group.",
}


def PolicyId():
    return Path(max_length=100)


# -- what the pages are built from ---------------------------------------------------------


@dataclass
class CatalogColumn:
    key: str  # "c0", "c1"...: names the <template> holding its suggested values
    name: str  # first spelling seen (policies match columns case-insensitively)
    types: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)


@dataclass
class Catalog:
    sources: list[dict]  # {id, name, columns}
    columns: list[CatalogColumn]

    def column(self, name: str) -> CatalogColumn | None:
        folded = name.casefold()
        return next((c for c in self.columns if c.name.casefold() == folded), None)

    def source_name(self, source_id: str) -> str:
        return next((s["name"] for s in self.sources if s["id"] == source_id), f"{source_id} (no longer exists)")


def catalog(session, viewer: Viewer, *, with_values: bool) -> Catalog:
    """The sources the viewer may open, their columns, and (optionally) suggested values."""
    query = (
        visible_sources_query(session, viewer.principal)
        .add_columns(SourceVersion)
        .outerjoin(SourceVersion, SourceVersion.id == Source.current_version_id)
        .order_by(Source.updated_at.desc(), Source.id)
        .limit(CATALOG_SOURCES)
    )
    found = session.execute(query).all()
    sources: list[dict[str, Any]] = []
    columns: list[CatalogColumn] = []
    by_fold: dict[str, CatalogColumn] = {}
    for source, version in found:
        names = version.column_names if version else []
        sources.append({"id": source.id, "name": source.name, "columns": names, "version": version})
        for column in version.columns if version else []:
            entry = by_fold.get(column["name"].casefold())
            if entry is None:
                entry = by_fold[column["name"].casefold()] = CatalogColumn(f"c{len(columns)}", column["name"])
                columns.append(entry)
            if column["type"] not in entry.types:
                entry.types.append(column["type"])
            entry.sources.append(source.name)
    if with_values:
        _suggest(session, viewer, sources, by_fold)
    sources.sort(key=lambda s: s["name"].lower())
    columns.sort(key=lambda c: c.name.lower())
    return Catalog(sources=sources, columns=columns)


def _suggest(session, viewer: Viewer, sources: list[dict], by_fold: dict[str, CatalogColumn]) -> None:
    budget = SUGGESTION_BUDGET
    values: dict[str, set[str]] = {}
    for item in sources:  # most recently updated first
        if item["version"] is None or budget <= 0:
            continue
        # The admin's OWN access: never values from rows they may not read.
        access = open_source(session, viewer.principal, item["id"])
        if access.version is None:
            continue
        for column in access.visible_columns:  # never a hidden column's or a masked column's values
            if column["name"] in access.masked_columns:
                continue
            folded = column["name"].casefold()
            seen = values.setdefault(folded, set())
            if column["type"] in NO_SUGGESTIONS or len(seen) >= SUGGESTED_VALUES or budget <= 0:
                continue
            budget -= 1
            seen.update(engine.distinct_values(access, column["name"], SUGGESTED_VALUES))
    for folded, found in values.items():
        by_fold[folded].values = sorted(found)[:SUGGESTED_VALUES]


@dataclass
class FilterRow:
    column: str = ""
    values: list[str] = field(default_factory=list)


@dataclass
class PolicyForm:
    """The policy form's fields as typed, so that a refused form comes back filled in."""

    name: str = ""
    description: str = ""
    binding: str = "auto"
    source_ids: list[str] = field(default_factory=list)
    filters: list[FilterRow] = field(default_factory=list)
    hidden_columns: list[str] = field(default_factory=list)
    masked_columns: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, policy: Policy) -> PolicyForm:
        rules = policy.column_rules or []
        return cls(
            name=policy.name,
            description=policy.description or "",
            binding="explicit" if policy.source_ids else "auto",
            source_ids=list(policy.source_ids or []),
            filters=[FilterRow(f["column"], list(f["values"])) for f in policy.row_filters or []],
            hidden_columns=[r["column"] for r in rules if r["action"] == HIDE],
            masked_columns=[r["column"] for r in rules if r["action"] == MASK],
        )

    @classmethod
    def read(cls, form: FormData) -> PolicyForm:
        given_source_ids = form.getlist("source_ids")
        source_ids = [s for s in given_source_ids if isinstance(s, str)]
        if len(given_source_ids) > service.MAX_SOURCE_IDS or len(source_ids) != len(given_source_ids):
            raise PageError(400, "Bad request", "Too many or malformed sources.")
        filters = []
        for i in range(service.MAX_FILTERS):
            column = text(form, f"column_{i}", service.MAX_COLUMN + 50)
            typed = [v.strip() for v in text(form, f"values_{i}", 200_000).splitlines()]
            given_picks = form.getlist(f"pick_{i}")
            picks = [p for p in given_picks if isinstance(p, str)]
            if len(picks) != len(given_picks):
                raise PageError(400, "Bad request", "Malformed values.")
            values = list(dict.fromkeys(v for v in picks + typed if v))
            if column or values:
                filters.append(FilterRow(column, values))
        return cls(
            name=text(form, "name", 300),
            description=text(form, "description", 5000),
            binding=text(form, "binding", 20),
            source_ids=list(dict.fromkeys(source_ids)),
            filters=filters,
            hidden_columns=_column_lines(text(form, "hidden_columns", 100_000)),
            masked_columns=_column_lines(text(form, "masked_columns", 100_000)),
        )

    def changes(self) -> dict:
        """The service's arguments. What the form can tell is wrong is refused here, at its
        field in plain words (FieldRefusal); the service checks everything again."""
        if self.binding not in ("auto", "explicit"):
            raise FieldRefusal("binding", "invalid_binding", "Choose Auto or Explicit.")
        if self.binding == "explicit" and not self.source_ids:
            raise FieldRefusal(
                "source_ids", "invalid_source_ids", "Choose at least one source, or apply the policy to Auto."
            )
        self._check_filters()
        self._check_column_rules()
        return {
            "name": self.name,
            "description": self.description or None,
            "source_ids": self.source_ids if self.binding == "explicit" else [],
            "row_filters": [{"column": r.column, "values": r.values} for r in self.filters],
            "column_rules": [{"column": c, "action": HIDE} for c in self.hidden_columns]
            + [{"column": c, "action": MASK} for c in self.masked_columns],
        }

    def _check_filters(self) -> None:
        seen: dict[str, int] = {}
        for i, row in enumerate(self.filters):
            column, values = f"column_{i}", f"values_{i}"
            if not row.column:
                raise FieldRefusal(column, "invalid_row_filters", "Choose the column this filter is on.")
            if len(row.column) > service.MAX_COLUMN:
                raise FieldRefusal(
                    column, "invalid_row_filters", f"A column name is at most {service.MAX_COLUMN} characters."
                )
            earlier = seen.setdefault(row.column.casefold(), i)
            if earlier != i:
                raise FieldRefusal(
                    column,
                    "invalid_row_filters",
                    f"Row filter {earlier + 1} is already on {self.filters[earlier].column}: "
                    "put all its allowed values there.",
                )
            if not row.values:
                raise FieldRefusal(values, "invalid_row_filters", "Choose or type at least one allowed value.")
            if len(row.values) > service.MAX_VALUES:
                raise FieldRefusal(
                    values, "invalid_row_filters", f"A filter allows at most {service.MAX_VALUES:,} values."
                )
            if any(len(v) > service.MAX_VALUE for v in row.values):
                raise FieldRefusal(
                    values, "invalid_row_filters", f"Each value is at most {service.MAX_VALUE:,} characters."
                )

    def _check_column_rules(self) -> None:
        if len(self.hidden_columns) + len(self.masked_columns) > service.MAX_COLUMN_RULES:
            raise FieldRefusal(
                "hidden_columns",
                "invalid_column_rules",
                f"Hide and mask at most {service.MAX_COLUMN_RULES} columns in all.",
            )
        seen: dict[str, str] = {}  # column, case-folded -> the list it is in
        for field_name, columns in (("hidden_columns", self.hidden_columns), ("masked_columns", self.masked_columns)):
            for column in columns:
                if len(column) > service.MAX_COLUMN:
                    raise FieldRefusal(
                        field_name, "invalid_column_rules", f"A column name is at most {service.MAX_COLUMN} characters."
                    )
                folded = column.casefold()
                if folded in seen:  # (the lists hold no exact repeats: _column_lines drops them)
                    twice = f"{column} is listed twice (column names match whatever their case)."
                    also = f"{column} is also hidden: list each column once."
                    raise FieldRefusal(
                        field_name, "invalid_column_rules", twice if seen[folded] == field_name else also
                    )
                seen[folded] = field_name


# The rest of the policy form (name, description, and what only the service can tell): which
# field a refusal is about, and plain words for the API's.
FIELD_OF_CODE = {
    "invalid_name": "name",
    "policy_exists": "name",
    "invalid_description": "description",
    "invalid_row_filters": "filters",
    "invalid_column_rules": "column_rules",
    "invalid_column_rule_action": "column_rules",
    "invalid_source_ids": "source_ids",
}
PLAIN_WORDS = {
    "invalid_name": f"Give the policy a name of 1 to {service.MAX_NAME} characters.",
    "policy_exists": "An access policy with this name already exists: choose a different name.",
    "invalid_description": f"Keep the description to at most {service.MAX_DESCRIPTION:,} characters.",
    "invalid_row_filters": (
        f"Check the row filters: at most {service.MAX_FILTERS}, each on a different column, "
        "with at least one allowed value."
    ),
    "invalid_column_rules": "Check the column rules: one column name per line, each column once.",
    "invalid_source_ids": "Choose the policy's sources from the list.",
}


def _column_lines(typed: str) -> list[str]:
    """Column names typed one per line (blank lines and repeats dropped)."""
    return list(dict.fromkeys(line.strip() for line in typed.splitlines() if line.strip()))


def filter_rows(form: PolicyForm, cat: Catalog) -> list[dict]:
    """The filter rows to draw: the policy's, one blank, then hidden spares."""
    rows = []
    for row in form.filters:
        known = cat.column(row.column) if row.column else None
        suggestions = known.values if known else []
        rows.append(
            {
                "column": known.name if known else row.column,
                "known": known is not None,
                "suggestions": suggestions,
                "picked": [v for v in row.values if v in suggestions],
                "other": [v for v in row.values if v not in suggestions],
                "spare": False,
            }
        )
    visible = len(rows) + 1
    total = min(service.MAX_FILTERS, visible + SPARE_ROWS)
    while len(rows) < total:
        rows.append(
            {"column": "", "known": True, "suggestions": [], "picked": [], "other": [], "spare": len(rows) >= visible}
        )
    return rows


def summary(policy: Policy, cat: Catalog) -> dict:
    filters = [f"{f['column']} IN ({', '.join(f['values'])})" for f in policy.row_filters or []]
    return {
        "id": policy.id,
        "name": policy.name,
        "description": policy.description,
        "binding": "Explicit" if policy.source_ids else "Auto",
        "sources": [cat.source_name(s) for s in policy.source_ids or []],
        "filters": filters,
        "column_rules": [f"{r['action']} {r['column']}" for r in policy.column_rules or []],
        "updated_at": policy.updated_at,
    }


def _emails(session, org_id: str, ids) -> dict[str, str]:
    ids = set(ids)
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.email).where(User.org_id == org_id, User.id.in_(ids))).all())


def _active_users(session, org_id: str) -> list[User]:
    return list(
        session.scalars(select(User).where(User.org_id == org_id, User.is_active.is_(True)).order_by(User.email))
    )


def _group_names(session, org_id: str) -> dict[str, str]:
    return dict(session.execute(select(Group.id, Group.name).where(Group.org_id == org_id).order_by(Group.name)).all())


# -- the list, and the "what would this user see" preview ----------------------------------


@dataclass
class UserPreview(Preview):
    user_email: str = ""
    source_name: str = ""
    can_open: bool = True
    policy_names: list[str] = field(default_factory=list)


def user_preview(session, viewer: Viewer, user_id: str, source_id: str, page_number: int = 1) -> UserPreview:
    with as_page(viewer, "Not found"):
        user = get_user(session, viewer.org.id, user_id)
        mine = open_source(session, viewer.principal, source_id)  # the admin's own filter
    source = mine.opened_source
    seen = preview_as_user(session, mine, viewer.user.id, user)
    view = seen.explanation
    names = (
        dict(
            session.execute(
                select(Policy.id, Policy.name).where(Policy.org_id == viewer.org.id, Policy.id.in_(view.policy_ids))
            ).all()
        )
        if view.policy_ids
        else {}
    )
    preview = UserPreview(
        as_label=user.email,
        user_email=user.email,
        source_name=source.name,
        page=page_number,
        where=view.where_clause,
        effective=view.effective_access,
        reasons=linked(session, viewer, view.reasons),
        policy_names=[names.get(p, p) for p in view.policy_ids],
    )
    if permission_of(session, user, source) is None:
        preview.can_open = False
        preview.refused = (
            f"{user.email} cannot open this source at all: it is neither theirs nor shared with them "
            f"(nor with the organization). They see no rows; the filter below applies once it is shared."
        )
        return preview
    if seen.narrowed_by_viewer:
        preview.notes.append(RESTRICTED_VIEWER.replace("to the key", "to them"))
    if seen.access.version is not None:
        preview.rows, preview.total = engine.read_page(seen.access, page=page_number, page_size=PREVIEW_ROWS)
    preview.show_columns(seen.access, mine, view.row_filter.column_rules)
    return preview


def list_context(
    session, viewer: Viewer, *, user_id: str | None = None, source_id: str | None = None, page_number: int = 1
) -> dict:
    cat = catalog(session, viewer, with_values=False)
    rows = service.list_policies(session, viewer.org.id, limit=LIST_LIMIT)[:LIST_LIMIT]
    counts = service.policy_user_counts(session, [p.id for p in rows])
    groups = _group_names(session, viewer.org.id)
    items = []
    for policy in sorted(rows, key=lambda p: p.name.lower()):
        item = summary(policy, cat)
        item["user_count"] = counts.get(policy.id, 0)
        item["groups"] = [groups.get(g, g) for g in service.policy_group_ids(session, policy.id)]
        items.append(item)
    preview = None
    if user_id and source_id:
        preview = user_preview(session, viewer, user_id, source_id, page_number)
        preview_columns: list[str] = next((s["columns"] for s in cat.sources if s["id"] == source_id), [])
    else:
        preview_columns = []
    return {
        "title": "Access Policies",
        "policies": items,
        "can_write": viewer.can(WRITE),
        "users": _active_users(session, viewer.org.id),
        "sources": cat.sources,
        "preview": preview,
        "preview_columns": preview_columns,
        "preview_user": user_id or "",
        "preview_source": source_id or "",
    }


@router.get(BASE)
def policies_page(
    request: Request,
    notice: str | None = Query(None, max_length=40),
    user_id: str | None = Query(None, max_length=200),
    source_id: str | None = Query(None, max_length=100),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = list_context(session, viewer, user_id=user_id, source_id=source_id, page_number=page_number)
    return page(request, "policies.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


# -- one policy: the form, assignments ------------------------------------------------------


def policy_context(session, viewer: Viewer, policy: Policy | None, form: PolicyForm | None = None) -> dict:
    cat = catalog(session, viewer, with_values=True)
    form = form or (PolicyForm.of(policy) if policy else PolicyForm())
    context: dict[str, Any] = {
        "title": policy.name if policy else "New access policy",
        "policy": policy,
        "form": form,
        "rows": filter_rows(form, cat),
        "catalog": cat,
        "can_write": viewer.can(WRITE),
        "known_source_ids": {s["id"] for s in cat.sources},
    }
    if policy is not None:
        user_ids = service.policy_user_ids(session, policy.id)
        emails = _emails(session, viewer.org.id, user_ids)
        groups = _group_names(session, viewer.org.id)
        group_ids = service.policy_group_ids(session, policy.id)
        context.update(
            {
                "assigned": [{"id": u, "email": emails.get(u, u)} for u in user_ids],
                "candidates": [u for u in _active_users(session, viewer.org.id) if u.id not in set(user_ids)],
                "groups": [{"id": g, "name": groups.get(g, g)} for g in group_ids],
                "group_candidates": [{"id": g, "name": n} for g, n in groups.items() if g not in set(group_ids)],
            }
        )
    return context


def _policy(session, viewer: Viewer, policy_id: str) -> Policy:
    with as_page(viewer, "Access policy not found"):
        return service.get_policy(session, viewer.org.id, policy_id)


@router.get(BASE + "/new")
def new_policy_page(request: Request):
    with db(request) as session:
        viewer = signed_in(request, session, WRITE)
        context = policy_context(session, viewer, None)
    return page(request, "policy.html", context, viewer=viewer)


@router.post(BASE)
def create_policy(request: Request, form: FormData = LARGE_FORM):
    values = PolicyForm.read(form)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            policy = service.create_policy(
                session, viewer.principal, viewer.org.id, **values.changes(), context=request_context(request)
            )
            policy_id = policy.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, WRITE)
            context = policy_context(session, viewer, None, values)
        return page(
            request,
            "policy.html",
            {**context, "form_error": field_error(exc, FIELD_OF_CODE, PLAIN_WORDS)},
            viewer=viewer,
            status=exc.status,
            current=BASE + "/new",
        )
    return redirect(f"{BASE}/{policy_id}?notice=created")


@router.get(BASE + "/{policy_id}")
def policy_page(request: Request, policy_id: str = PolicyId(), notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = policy_context(session, viewer, _policy(session, viewer, policy_id))
    return page(request, "policy.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


def _policy_error(request: Request, policy_id: str, exc: TidegateError, form: PolicyForm | None = None, **extra):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = policy_context(session, viewer, _policy(session, viewer, policy_id), form)
    shown = {f"user-{u['id']}" for u in context["assigned"]} | {f"group-{g['id']}" for g in context["groups"]}
    row_error = extra.get("row_error")
    if row_error and row_error["row"] not in shown:  # that row is gone: say it above the page
        extra = {**extra, "row_error": None, "page_error": row_error["message"]}
    return page(
        request, "policy.html", {**context, **extra}, viewer=viewer, status=exc.status, current=f"{BASE}/{policy_id}"
    )


@router.post(BASE + "/{policy_id}")
def update_policy(request: Request, policy_id: str = PolicyId(), form: FormData = LARGE_FORM):
    values = PolicyForm.read(form)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            policy = _policy(session, viewer, policy_id)
            service.update_policy(
                session, viewer.principal, policy, **values.changes(), context=request_context(request)
            )
    except TidegateError as exc:
        return _policy_error(request, policy_id, exc, values, form_error=field_error(exc, FIELD_OF_CODE, PLAIN_WORDS))
    return redirect(f"{BASE}/{policy_id}?notice=saved")


@router.get(BASE + "/{policy_id}/delete")
def delete_policy_confirm(request: Request, policy_id: str = PolicyId()):
    with db(request) as session:
        viewer = signed_in(request, session, WRITE)
        policy = _policy(session, viewer, policy_id)
        context = {
            "title": "Delete access policy",
            "heading": f"Delete the access policy {policy.name}?",
            "message": "People and groups it is assigned to lose it at once; keys that name it fail closed "
            "(they see no rows).",
            "action": f"{BASE}/{policy.id}/delete",
            "button": "Delete policy",
            "back": f"{BASE}/{policy.id}",
        }
    return page(request, "confirm.html", context, viewer=viewer)


@router.post(BASE + "/{policy_id}/delete")
def delete_policy(request: Request, policy_id: str = PolicyId(), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, WRITE)
        policy = _policy(session, viewer, policy_id)
        service.delete_policy(
            session,
            viewer.principal,
            policy,
            keys_naming_it=keys_naming_policy(session, viewer.org.id, policy.id),
            context=request_context(request),
        )
    return redirect(f"{BASE}?notice=deleted")


# The assign forms (a person, a group): refusals about the one chosen, in plain words.
ASSIGN_CODES = ("missing_field", "invalid_user_ids", "user_not_found", "group_not_found", "invalid_group_ids")
ASSIGN_WORDS = {
    "invalid_user_ids": "That person is not an active member of the organization: choose someone from the list.",
    "user_not_found": "That person is not an active member of the organization: choose someone from the list.",
    "group_not_found": "That group no longer exists: choose one from the list.",
}


def _assignment(
    request: Request,
    policy_id: str,
    form: FormData,
    change,
    notice: str,
    anchor: str,
    field_name: str | None = None,
    row: str | None = None,
):
    """Run one assignment change on the policy; its page again, with a notice or the error (at
    the form's `field_name` when it is about the one chosen; next to the button of `row` for a
    removal)."""
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            policy = _policy(session, viewer, policy_id)
            change(session, viewer, policy, request_context(request))
    except TidegateError as exc:
        if field_name is not None and exc.code in ASSIGN_CODES:
            refusal = field_error(exc, dict.fromkeys(ASSIGN_CODES, field_name), ASSIGN_WORDS)
            return _policy_error(request, policy_id, exc, assign_error=refusal)
        if row is not None:
            return _policy_error(request, policy_id, exc, row_error={"row": row, "message": exc.message})
        return _policy_error(request, policy_id, exc, page_error=exc.message)
    return redirect(f"{BASE}/{policy_id}?notice={notice}#{anchor}")


@router.post(BASE + "/{policy_id}/users")
def assign_user(request: Request, policy_id: str = PolicyId(), form: FormData = FORM):
    def change(session, viewer, policy, context):
        user_id = required_text(form, "user_id", "Choose a person to assign the policy to.")
        service.assign_users(session, viewer.principal, policy, [user_id], context=context)

    return _assignment(request, policy_id, form, change, "user_assigned", "users", "user_id")


@router.post(BASE + "/{policy_id}/users/{user_id}/remove")
def remove_user(
    request: Request, policy_id: str = PolicyId(), user_id: str = Path(max_length=100), form: FormData = FORM
):
    def change(session, viewer, policy, context):
        service.remove_user(session, viewer.principal, policy, user_id, context=context)

    return _assignment(request, policy_id, form, change, "user_removed", "users", row=f"user-{user_id}")


@router.post(BASE + "/{policy_id}/groups")
def assign_group(request: Request, policy_id: str = PolicyId(), form: FormData = FORM):
    def change(session, viewer, policy, context):
        group_id = required_text(form, "group_id", "Choose a group to assign the policy to.")
        group = service.get_group(session, viewer.org.id, group_id)
        service.assign_group_policies(session, viewer.principal, group, [policy.id], context=context)

    return _assignment(request, policy_id, form, change, "group_assigned", "groups", "group_id")


@router.post(BASE + "/{policy_id}/groups/{group_id}/remove")
def remove_group(
    request: Request, policy_id: str = PolicyId(), group_id: str = Path(max_length=100), form: FormData = FORM
):
    def change(session, viewer, policy, context):
        group = service.get_group(session, viewer.org.id, group_id)
        service.remove_group_policy(session, viewer.principal, group, policy.id, context=context)

    return _assignment(request, policy_id, form, change, "group_removed", "groups", row=f"group-{group_id}")
