"""Sources: the sources the signed-in user may open, file upload, a data preview "as a
key would see it", and sharing (owners and admins).

Every read goes through `access.sources.open_source` (so a source the viewer may not open
is a 404 page, exactly as through the API) and `data.engine` with the SourceAccess it gives.
Every change goes through `tidegate.data.service`, audited like its /api/v1 twin.

The preview for a key computes the key's Principal with `credentials.authenticate.
principal_for_key`, the API's own rules (the key's scopes against its creator's CURRENT
role), refuses revoked and expired keys and keys whose creator is deactivated, then opens
the source with that Principal: the rows, count and WHERE clause shown are those the API would apply to
the key's next request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData, UploadFile

from tidegate.access import sources
from tidegate.access.authorize import allowed
from tidegate.access.sources import SourceAccess, open_source
from tidegate.catalog.models import SHARE_PERMISSIONS
from tidegate.core.columnrules import ColumnRules
from tidegate.core.principal import Principal
from tidegate.core.scopes import Scope
from tidegate.credentials import service as keys_service
from tidegate.credentials.authenticate import principal_for_key
from tidegate.credentials.models import ApiKey
from tidegate.data import engine
from tidegate.data import service as data_service
from tidegate.db.base import utcnow
from tidegate.errors import InvalidRequest, NotFound, TidegateError, Unauthenticated
from tidegate.http import request_context
from tidegate.limits import get_limits
from tidegate.orgs.models import User
from tidegate.web.common import (
    FORM,
    UPLOAD_FORM,
    CursorPage,
    as_page,
    db,
    field_error,
    router,
    settings_of,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.names import linked
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer

READ = Scope.SOURCES_READ
SHARE_READ = Scope.PERMISSIONS_READ
SHARE_WRITE = Scope.PERMISSIONS_WRITE
PAGE_SIZE = 100
PREVIEW_ROWS = 50
MAX_KEYS_OFFERED = 500
ME = "me"
RESTRICTED_VIEWER = (
    "You may not see every row of this source yourself (your access policies, or deny by default "
    "with no policy for you): the rows and count below are also limited to the rows you may see. "
    "The WHERE clause is the one the API applies to the key."
)
NOTICES = {
    "uploaded": "The file was uploaded and the source created.",
    "shared": "Sharing saved.",
    "unshared": "The share was removed.",
    "org_shared": "Organization sharing saved.",
}


def SourceId():
    return Path(max_length=100)


def _emails(session, user_ids) -> dict[str, str]:
    ids = set(user_ids)
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.email).where(User.id.in_(ids))).all())


def can_upload(viewer: Viewer) -> bool:
    return (viewer.can(Scope.FILES_WRITE) or viewer.can(Scope.FILES_UPLOAD)) and (
        viewer.can(Scope.DATA_WRITE) or viewer.can(Scope.SOURCES_WRITE)
    )


# -- the list ------------------------------------------------------------------------------


def sources_context(session, viewer: Viewer, *, after: str | None = None, before: str | None = None) -> dict:
    before = None if after else before
    fetched = data_service.list_sources(session, viewer.principal, limit=PAGE_SIZE, after=after, before=before)
    paged = CursorPage.of(fetched, PAGE_SIZE, after=after, before=before)
    rows = paged.rows
    owners = _emails(session, [s.created_by for s in rows])
    items = []
    for source in rows:
        access = open_source(session, viewer.principal, source.id)
        items.append(
            {
                "id": source.id,
                "name": source.name,
                "description": source.description,
                "rows": (engine.count_if_reachable(access) or 0) if access.version else 0,
                "columns": access.columns,
                "owner": owners.get(source.created_by, source.created_by),
                "updated_at": source.updated_at,
                "filtered": not access.row_filter.is_unrestricted,
                "permission": access.permission,
            }
        )
    return {
        "title": "Sources",
        "sources": items,
        "next_after": paged.next_after,
        "previous_before": paged.previous_before,
        "can_upload": can_upload(viewer),
        "max_upload_mb": get_limits().max_upload_bytes // (1024 * 1024),
        "upload_name": "",
    }


@router.get("/sources")
def sources_page(
    request: Request,
    after: str | None = Query(None, max_length=100),
    before: str | None = Query(None, max_length=100),
    notice: str | None = Query(None, max_length=40),
):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = sources_context(session, viewer, after=after, before=before)
    return page(request, "sources.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


@router.post("/sources/upload")
def upload(request: Request, form: FormData = UPLOAD_FORM):
    name = text(form, "name", 300)
    upload_ = form.get("file")
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, READ)
            if not isinstance(upload_, UploadFile) or not upload_.filename:
                raise InvalidRequest("missing_file", "Choose a file to upload.")
            audit_context = request_context(request)
            stored = data_service.upload_file(
                session,
                viewer.principal,
                name=upload_.filename,
                content=upload_.file,
                content_type=upload_.content_type,
                context=audit_context,
            )
            if stored.columns is None:
                raise InvalidRequest(
                    "not_tabular",
                    f"{stored.name} is not a table: upload a CSV, TSV, JSON, NDJSON, Parquet or XLSX file.",
                )
            source = data_service.create_source(
                session,
                viewer.principal,
                settings_of(request),
                name=name or PurePath(stored.name).stem or stored.name,
                file_id=stored.id,
                context=audit_context,
            )
            source_id = source.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            context = sources_context(session, viewer)
        return page(
            request,
            "sources.html",
            {**context, "upload_error": exc.message, "upload_name": name},
            viewer=viewer,
            status=exc.status,
            current="/sources",
        )
    return redirect(f"/sources/{source_id}?notice=uploaded")


# -- one source: details and preview -------------------------------------------------------


@dataclass
class Preview:
    """What a chosen principal (the viewer, or one of the keys they may see) would read."""

    as_label: str
    refused: str | None = None
    rows: list[dict] = field(default_factory=list)
    total: int = 0
    page: int = 1
    where: str = ""
    effective: str = ""
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The columns the subject reads (None: the page's own list), and those its column rules
    # hide (absent from `columns`) or mask (values shown masked).
    columns: list[str] | None = None
    hidden: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)

    def show_columns(self, seen: SourceAccess, viewer: SourceAccess, rules: ColumnRules) -> None:
        """Columns as the subject reads them (`seen`), naming the columns its own rules
        (`rules`) hide or mask, among those the viewer may see themselves."""
        self.columns = seen.columns
        self.hidden = sorted(rules.hidden & set(viewer.columns))
        self.masked = sorted(seen.masked_columns & set(viewer.columns))

    @property
    def first(self) -> int:
        return (self.page - 1) * PREVIEW_ROWS + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return (self.page - 1) * PREVIEW_ROWS + len(self.rows)

    @property
    def has_next(self) -> bool:
        return self.last < self.total


def key_label(key: ApiKey, creator: str | None = None) -> str:
    return f"{key.name} ({key.key_prefix}…)" + (f" — {creator}" if creator else "")


KEY_REFUSALS = {
    "api_key_revoked": "This key has been revoked: the API refuses every request made with it (401).",
    "api_key_expired": "This key has expired: the API refuses every request made with it (401).",
    "api_key_owner_inactive": (
        "The user who created this key is deactivated: the API refuses every request made with it (401)."
    ),
}


def key_principal(session, key: ApiKey) -> tuple[Principal | None, str | None]:
    """The Principal the API would build for `key` now, or why the API refuses it."""
    try:
        return principal_for_key(session, key), None
    except Unauthenticated as refused:
        return None, KEY_REFUSALS.get(refused.code, refused.message)


def _read(access: SourceAccess, page_number: int) -> tuple[list[dict], int]:
    if access.version is None:
        return [], 0
    return engine.read_page(access, page=page_number, page_size=PREVIEW_ROWS)


def preview_as_viewer(session, viewer: Viewer, mine: SourceAccess, page_number: int) -> Preview:
    seen = sources.preview_as(session, mine, viewer.user.id, viewer.principal)
    rows, total = _read(seen.access, page_number)
    preview = Preview(
        as_label=f"you ({viewer.user.email})",
        rows=rows,
        total=total,
        page=page_number,
        where=seen.explanation.where_clause,
        effective=seen.explanation.effective_access,
        reasons=linked(session, viewer, seen.explanation.reasons),
    )
    preview.show_columns(seen.access, mine, seen.explanation.row_filter.column_rules)
    return preview


def preview_as_key(session, viewer: Viewer, mine: SourceAccess, key_id: str, page_number: int) -> Preview:
    with as_page(viewer, "Key not found"):
        key = keys_service.get_key(session, viewer.principal, key_id)  # 404 for a key the viewer may not see
    creator = _emails(session, [key.created_by]).get(key.created_by)
    preview = Preview(as_label="key " + key_label(key, creator), page=page_number)
    principal, refusal = key_principal(session, key)
    if principal is None:
        preview.refused = refusal
        return preview
    if not allowed(principal, Scope.DATA_READ):
        preview.refused = (
            "This key cannot read data: it lacks the data:read scope (or its creator no longer "
            "holds it), so the API refuses its reads (403)."
        )
        return preview
    try:
        seen = sources.preview_as(session, mine, viewer.user.id, principal)
    except NotFound:
        preview.refused = "This key cannot open this source: the API answers 404 for it."
        return preview
    if seen.narrowed_by_viewer:
        preview.notes.append(RESTRICTED_VIEWER)  # never rows the viewer may not read themselves
    networks = principal.restrictions.ip_allowlist.networks if principal.restrictions is not None else ()
    if networks:
        preview.notes.append("The API accepts this key only from: " + ", ".join(networks) + ".")
    preview.rows, preview.total = _read(seen.access, page_number)
    preview.show_columns(seen.access, mine, seen.explanation.row_filter.column_rules)
    preview.where = seen.explanation.where_clause
    preview.effective = seen.explanation.effective_access
    preview.reasons = linked(session, viewer, seen.explanation.reasons)
    return preview


def key_choices(session, viewer: Viewer) -> list[dict]:
    keys = keys_service.list_keys(session, viewer.principal, limit=MAX_KEYS_OFFERED, after=None)[:MAX_KEYS_OFFERED]
    creators = _emails(session, [k.created_by for k in keys])
    now = utcnow()
    choices = []
    for key in sorted(keys, key=lambda k: (k.name.lower(), k.id)):
        status = key.status_at(now)
        creator = None if key.created_by == viewer.user.id else creators.get(key.created_by, key.created_by)
        label = key_label(key, creator) + ("" if status == "active" else f" [{status}]")
        choices.append({"id": key.id, "label": label})
    return choices


def sharing_context(session, viewer: Viewer, access: SourceAccess) -> dict | None:
    if access.permission != "owner" or not viewer.can(SHARE_READ):
        return None
    source = access.opened_source
    shares = data_service.list_shares(session, viewer.principal, source.id)
    users = list(
        session.scalars(select(User).where(User.org_id == viewer.org.id, User.is_active.is_(True)).order_by(User.email))
    )
    emails = {u.id: u.email for u in users} | _emails(session, [s.user_id for s in shares])
    shared_ids = {s.user_id for s in shares}
    return {
        "shares": [
            {"user_id": s.user_id, "email": emails.get(s.user_id, s.user_id), "permission": s.permission}
            for s in shares
        ],
        "candidates": [
            {"id": u.id, "email": u.email} for u in users if u.id != source.created_by and u.id not in shared_ids
        ],
        "org_permission": source.org_share_permission,
        "permissions": SHARE_PERMISSIONS,
        "can_write": viewer.can(SHARE_WRITE),
    }


def source_context(
    session, viewer: Viewer, access: SourceAccess, *, view_as: str | None = None, page_number: int = 1
) -> dict:
    source, version = access.opened_source, access.version
    owner = _emails(session, [source.created_by]).get(source.created_by, source.created_by)
    choice = view_as or ME
    if choice == ME:
        preview = preview_as_viewer(session, viewer, access, page_number)
    else:
        preview = preview_as_key(session, viewer, access, choice, page_number)
    return {
        "title": source.name,
        "source": source,
        "owner": owner,
        "permission": access.permission,
        "columns": access.visible_columns,  # without the columns hidden from the viewer
        "row_count": (engine.count_if_reachable(access) or 0) if version else 0,
        "filtered": not access.row_filter.is_unrestricted,
        "keys": key_choices(session, viewer),
        "view_as": choice,
        "preview": preview,
        "preview_columns": access.columns,
        "sharing": sharing_context(session, viewer, access),
    }


def _open(session, viewer: Viewer, source_id: str) -> SourceAccess:
    with as_page(viewer, "Source not found"):
        return open_source(session, viewer.principal, source_id)


@router.get("/sources/{source_id}")
def source_page(
    request: Request,
    source_id: str = SourceId(),
    view_as: str | None = Query(None, max_length=100),
    page_number: int = Query(1, alias="page", ge=1, le=1_000_000),
    notice: str | None = Query(None, max_length=40),
):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        access = _open(session, viewer, source_id)
        context = source_context(session, viewer, access, view_as=view_as, page_number=page_number)
    said = NOTICES.get(notice or "")
    if notice == "uploaded":
        rows = context["row_count"]
        said = f"The file was uploaded and the source created: {rows:,} row{'s' if rows != 1 else ''}."
    return page(request, "source.html", {**context, "notice": said}, viewer=viewer, current="/sources")


def _source_error(
    request: Request,
    source_id: str,
    exc: TidegateError,
    form: str | None = None,
    share_row: str | None = None,
    **typed: Any,
):
    """The source page again with why a change was refused: at the field of form `form` (its
    context key: `<form>_error`, and what was typed) when the refusal is about one, next to the
    Remove button of the share of `share_row` (a user id) while that row is shown, above the
    page otherwise."""
    refusal = field_error(exc, SHARE_FIELDS, SHARE_WORDS)
    shown = {f"{form}_error": refusal, **typed} if form and refusal["field"] else {"page_error": exc.message}
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        access = _open(session, viewer, source_id)
        context = source_context(session, viewer, access)
    rows = {s["user_id"] for s in (context.get("sharing") or {}).get("shares", [])}
    if share_row is not None and share_row in rows:
        shown = {"row_error": {"row": f"share-{share_row}", "message": exc.message}}
    return page(
        request,
        "source.html",
        {**context, **shown},
        viewer=viewer,
        status=exc.status,
        current="/sources",
    )


# -- sharing -------------------------------------------------------------------------------

# The share forms: which field a refusal is about, and plain words for the API's.
SHARE_FIELDS = {"invalid_user": "user_id", "user_not_found": "user_id", "invalid_permission": "permission"}
SHARE_WORDS = {
    "user_not_found": "That person is not an active member of the organization: choose someone from the list.",
    "invalid_permission": "Choose View or Edit.",
}


def _permission(form: FormData) -> str:
    permission = text(form, "permission", 20)
    if permission not in SHARE_PERMISSIONS:
        raise InvalidRequest("invalid_permission", "Choose view or edit.")
    return permission


@router.post("/sources/{source_id}/shares")
def share(request: Request, source_id: str = SourceId(), form: FormData = FORM):
    user_id = text(form, "user_id", 200)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, SHARE_WRITE)
            if not user_id:
                raise InvalidRequest("invalid_user", "Choose a person to share with.")
            data_service.share_source(
                session, viewer.principal, source_id, user_id, _permission(form), context=request_context(request)
            )
    except TidegateError as exc:
        typed = {"user_id": user_id, "permission": text(form, "permission", 20)}
        return _source_error(request, source_id, exc, "share", share_form=typed)
    return redirect(f"/sources/{source_id}?notice=shared#sharing")


@router.post("/sources/{source_id}/shares/{user_id}/remove")
def unshare(request: Request, source_id: str = SourceId(), user_id: str = Path(max_length=100), form: FormData = FORM):
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, SHARE_WRITE)
            data_service.unshare_source(session, viewer.principal, source_id, user_id, context=request_context(request))
    except TidegateError as exc:
        return _source_error(request, source_id, exc, share_row=user_id)
    return redirect(f"/sources/{source_id}?notice=unshared#sharing")


@router.post("/sources/{source_id}/org-share")
def org_share(request: Request, source_id: str = SourceId(), form: FormData = FORM):
    enabled = form.get("enabled") == "on"
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, SHARE_WRITE)
            data_service.org_share(
                session,
                viewer.principal,
                source_id,
                enabled=enabled,
                permission=_permission(form),
                context=request_context(request),
            )
    except TidegateError as exc:
        return _source_error(request, source_id, exc, "org_share")
    return redirect(f"/sources/{source_id}?notice=org_shared#sharing")
