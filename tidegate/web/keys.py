"""Settings > API Keys: list, search, create (secret shown once), revoke, rotate.

Every change goes through tidegate.credentials.service, so it is checked and audited
exactly like its /api/v1 twin (with this request's IP and user agent, via "web").
Members see and manage their own keys; admins see every key of the organization.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData

from tidegate.access.sources import visible_sources_query
from tidegate.catalog.models import Source
from tidegate.core.scopes import (
    DATA_ACCESS_SCOPES,
    PRESET_DATA_ACCESS,
    PRESET_FULL_ACCESS,
    SCOPE_GROUPS,
    Scope,
    expand,
    preset_scopes,
)
from tidegate.credentials import service
from tidegate.credentials.hygiene import DEFAULT_UNUSED_KEY_DAYS, NEW_IP_WINDOW, retiring, unused_days
from tidegate.credentials.models import ApiKey, KeyAddress
from tidegate.credentials.reminders import EXPIRY_WINDOW, expiring_soon
from tidegate.db.base import utcnow
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import request_context
from tidegate.orgs.models import Organization, User
from tidegate.web.common import (
    FORM,
    PageError,
    db,
    field_error,
    router,
    settings_of,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer

MANAGE = Scope.KEYS_MANAGE
PAGE_SIZE = 50
PICKER_SOURCES = 500  # the source restriction offers at most this many (most recently updated)


def KeyId():
    return Path(max_length=100)


EXPIRATIONS = (
    ("30", "30 days"),
    ("60", "60 days"),
    ("90", "90 days"),
    ("date", "On a date…"),
    ("never", "No expiration"),
)
DEFAULT_EXPIRATION = "90"
STATUS_FILTERS = (("", "Any status"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked"))
SORT_LABELS = {"name": "Name", "created": "Created", "last_used": "Last used", "expires": "Expires"}

# What each permission lets a key do, in plain words (per resource, as SCOPE_GROUPS groups them).
SCOPE_WORDS: dict[str, str] = {
    Scope.PROJECTS_READ: "See projects and their results",
    Scope.PROJECTS_WRITE: "Create, change, run and delete projects",
    Scope.DASHBOARDS_READ: "See dashboards",
    Scope.DASHBOARDS_WRITE: "Create, change and delete dashboards and their links",
    Scope.DATA_READ: "Read rows from data sources",
    Scope.DATA_WRITE: "Write rows to data sources",
    Scope.SOURCES_READ: "List data sources and their columns",
    Scope.SOURCES_WRITE: "Create, change, share and delete data sources",
    Scope.FILES_READ: "List and download files",
    Scope.FILES_WRITE: "Change files",
    Scope.FILES_UPLOAD: "Upload files",
    Scope.FILES_DELETE: "Delete files",
    Scope.USERS_READ: "See the people in the organization",
    Scope.USERS_WRITE: "Add people, change their roles, deactivate them",
    Scope.KEYS_MANAGE: "Create, rotate and revoke API keys",
    Scope.POLICIES_READ: "See access policies and groups",
    Scope.POLICIES_WRITE: "Create, change and assign access policies and groups",
    Scope.PERMISSIONS_READ: "See who things are shared with",
    Scope.PERMISSIONS_WRITE: "Share and unshare projects, dashboards and sources",
    Scope.EMBED_SESSION_CREATE: "Start embed sessions on behalf of people",
    Scope.USAGE_READ: "See usage numbers",
    Scope.AUDIT_READ: "Read the audit log",
    Scope.ORG_READ: "See organization settings",
    Scope.ORG_WRITE: "Change organization settings",
}

# Which field of the create form a refusal is about, and what to say there in plain words
# (the API's messages name wire fields: rate_limit_per_minute, expires_in_days...).
FIELD_OF_CODE = {
    "invalid_name": "name",
    "invalid_preset": "access",
    "invalid_scopes": "access",
    "invalid_scope": "access",
    "invalid_expiry": "expiration",
    "invalid_rate_limit": "rate_limit",
    "invalid_source_scope": "sources",
}
PLAIN_WORDS = {
    "invalid_name": "Give the key a name of 1 to 200 characters.",
    "invalid_rate_limit": f"Enter a rate limit between 1 and {service.MAX_RATE_LIMIT:,} requests per minute.",
}
GRACE_PERIODS = (
    ("0", "Revoke the old key now"),
    ("3600", "Keep the old key working for 1 hour"),
    ("86400", "Keep the old key working for 24 hours"),
    ("604800", "Keep the old key working for 7 days"),
)
# The rotate form (the dialog, and its page without JavaScript): the grace period is a choice
# of GRACE_PERIODS, so a refusal of it is about a missing or forged choice.
ROTATE_FIELDS = {"invalid_grace_period": "grace_seconds"}
ROTATE_WORDS = {"invalid_grace_period": "Choose when the old key should stop working."}
NOTICES = {
    "revoked": "The key was revoked. Every request made with it is refused from now on.",
}


@dataclass
class CreateForm:
    """The create dialog's fields as typed, so that a refused form comes back filled in."""

    name: str = ""
    access: str = PRESET_DATA_ACCESS
    scopes: list[str] = field(default_factory=list)
    expiration: str = DEFAULT_EXPIRATION
    expiration_date: str = ""
    source_ids: list[str] = field(default_factory=list)
    rate_limit: str = str(service.DEFAULT_RATE_LIMIT)

    @classmethod
    def read(cls, form: FormData) -> CreateForm:
        raw = form.getlist("scopes")
        scopes = [s for s in raw if isinstance(s, str) and len(s) <= 100]
        if len(raw) > 100 or len(scopes) != len(raw):  # a file part or an overlong value
            raise PageError(400, "Bad request", "Too many or malformed scopes.")
        raw_sources = form.getlist("source_ids")
        source_ids = [s for s in raw_sources if isinstance(s, str) and len(s) <= 200]
        if len(raw_sources) > PICKER_SOURCES or len(source_ids) != len(raw_sources):
            raise PageError(400, "Bad request", "Too many or malformed sources.")
        return cls(
            name=text(form, "name", 300),
            access=text(form, "access", 40),
            scopes=scopes,
            expiration=text(form, "expiration", 40),
            expiration_date=text(form, "expiration_date", 40),
            source_ids=source_ids,
            rate_limit=text(form, "rate_limit", 20),
        )

    def key_request(self, session, viewer: Viewer) -> service.KeyRequest:
        if self.access in (PRESET_FULL_ACCESS, PRESET_DATA_ACCESS):
            scopes = preset_scopes(self.access, viewer.user.role)
        elif self.access == "custom":
            scopes = self.scopes
            if not scopes:
                raise InvalidRequest("invalid_scopes", "Pick at least one permission for a custom key.")
        else:
            raise InvalidRequest("invalid_preset", "Choose Full Access, Data Access or Custom.")
        return service.KeyRequest(
            name=self.name,
            scopes=scopes,
            expires_in_days=self.expires_in_days(),
            rate_limit_per_minute=self.rate_limit_per_minute(),
            source_scope=self.source_scope(session, viewer),
        )

    def expires_in_days(self) -> int | None:
        if self.expiration == "never":
            return None
        if self.expiration in ("30", "60", "90"):
            return int(self.expiration)
        if self.expiration == "date":
            try:
                day = date.fromisoformat(self.expiration_date)
            except ValueError:
                raise InvalidRequest(
                    "invalid_expiry", "That is not a date: pick the expiration date in the calendar."
                ) from None
            days = (day - utcnow().date()).days
            if not 1 <= days <= service.MAX_EXPIRY_DAYS:
                raise InvalidRequest(
                    "invalid_expiry", "Pick an expiration date between tomorrow and ten years from now."
                )
            return days
        raise InvalidRequest("invalid_expiry", "Choose an expiration.")

    def rate_limit_per_minute(self) -> int | None:
        if not self.rate_limit:
            return None
        if not re.fullmatch(r"\d{1,9}", self.rate_limit):
            raise InvalidRequest("invalid_rate_limit", PLAIN_WORDS["invalid_rate_limit"])
        return int(self.rate_limit)

    def source_scope(self, session, viewer: Viewer) -> dict | None:
        """Only sources the creator may open now: anything else is refused by name."""
        if not self.source_ids:
            return None
        wanted = set(self.source_ids)
        found = set(
            session.scalars(
                visible_sources_query(session, viewer.principal)
                .where(Source.id.in_(sorted(wanted)))
                .with_only_columns(Source.id)
            )
        )
        unknown = sorted(wanted - found)
        if unknown:
            raise InvalidRequest(
                "invalid_source_scope",
                f"You cannot restrict a key to {', '.join(unknown)}: no source you may open has that id.",
            )
        return {"mode": "selected", "source_ids": sorted(wanted)}


def source_choices(session, viewer: Viewer) -> list[tuple[str, str]]:
    """The sources a key of this viewer may be restricted to: those the viewer may open."""
    if not viewer.can(Scope.SOURCES_READ):
        return []
    query = (
        visible_sources_query(session, viewer.principal)
        .with_only_columns(Source.id, Source.name)
        .order_by(Source.updated_at.desc(), Source.id)
        .limit(PICKER_SOURCES)
    )
    return [(id_, name) for id_, name in session.execute(query).all()]


def offered_groups(viewer: Viewer) -> list[tuple[str, list[Scope]]]:
    """SCOPE_GROUPS, less every scope the viewer does not hold (those are not offered)."""
    groups = []
    for group, scopes in SCOPE_GROUPS.items():
        held = [s for s in scopes if viewer.can(s)]
        if held:
            groups.append((group, held))
    return groups


def _creators(session, keys: list[ApiKey]) -> dict[str, str]:
    ids = {k.created_by for k in keys}
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.email).where(User.id.in_(ids))).all())


def remaining(delta: timedelta) -> str:
    """A short time left: "59 min" and "23 h" rounded down (never later than it is), then
    whole days to the nearest ("5 days" for a key made to expire in 5 days, a moment ago)."""
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{round(minutes / (24 * 60))} days"


def _new_addresses(session, keys: list[ApiKey], now: datetime) -> dict[str, list[str]]:
    """Per key, the addresses new to it (not its first) seen for the first time this week."""
    ids = [k.id for k in keys]
    if not ids:
        return {}
    found: dict[str, list[str]] = {}
    rows = session.execute(
        select(KeyAddress.key_id, KeyAddress.ip)
        .where(
            KeyAddress.key_id.in_(ids), KeyAddress.new_for_key.is_(True), KeyAddress.first_seen >= now - NEW_IP_WINDOW
        )
        .order_by(KeyAddress.first_seen.desc())
    )
    for key_id, ip in rows:
        found.setdefault(key_id, []).append(ip)
    return found


def _replaced_prefixes(session, keys: list[ApiKey]) -> dict[str, str]:
    ids = {k.rotated_from_key_id for k in keys if k.rotated_from_key_id}
    if not ids:
        return {}
    return dict(session.execute(select(ApiKey.id, ApiKey.key_prefix).where(ApiKey.id.in_(ids))).all())


def key_flags(key: ApiKey, now: datetime, unused_key_days: int, new_ips: list[str], replaced: str | None) -> list[dict]:
    """The badges of a key's row: what needs its owner's attention, and rotation links."""
    flags = []
    if retiring(key, now):
        assert key.expires_at is not None
        flags.append(
            {
                "kind": "rotating",
                "text": f"Rotating — expires in {remaining(key.expires_at - now)}",
                "title": f"Replaced by {key.rotated_to_prefix}…; it stops working at its expiry.",
            }
        )
    elif expiring_soon(key, now):
        assert key.expires_at is not None
        flags.append(
            {
                "kind": "expiring",
                "text": f"Expires in {remaining(key.expires_at - now)}",
                "title": "Rotate it before then, or the integration using it stops.",
            }
        )
    idle = unused_days(key, unused_key_days, now)
    if idle is not None:
        flags.append(
            {
                "kind": "unused",
                "text": f"Unused {idle} days",
                "title": ("Never used" if key.last_used_at is None else "Not used")
                + f" for {idle} days (this organization flags {unused_key_days}+); revoke it if nothing needs it.",
            }
        )
    if new_ips:
        flags.append(
            {
                "kind": "new-ip",
                "text": f"New IP {new_ips[0]}" + (f" (+{len(new_ips) - 1})" if len(new_ips) > 1 else ""),
                "title": "First used from " + ", ".join(new_ips) + " this week.",
            }
        )
    if replaced:
        flags.append({"kind": "replacement", "text": f"Replaces {replaced}…", "title": "Made by rotating that key."})
    return flags


def unused_key_days(session, viewer: Viewer) -> int:
    org = session.get(Organization, viewer.org.id)
    return org.unused_key_days if org is not None else DEFAULT_UNUSED_KEY_DAYS


def _restricted_to(key: ApiKey) -> list[str]:
    scope = key.source_scope or {}
    return list(scope.get("source_ids") or []) if scope.get("mode") == "selected" else []


def _source_names(session, org_id: str, keys: list[ApiKey]) -> dict[str, str]:
    ids = {s for k in keys for s in _restricted_to(k)}
    if not ids:
        return {}
    query = select(Source.id, Source.name).where(Source.org_id == org_id, Source.id.in_(sorted(ids)))
    return dict(session.execute(query).all())


def _key_rows(session, viewer: Viewer, keys: list[ApiKey]) -> list[dict]:
    emails = _creators(session, keys)
    names = _source_names(session, viewer.org.id, keys)
    now = utcnow()
    new_ips = _new_addresses(session, keys, now)
    replaced = _replaced_prefixes(session, keys)
    threshold = unused_key_days(session, viewer)
    return [
        {
            "id": k.id,
            "name": k.name,
            "prefix": k.key_prefix,
            "scopes": sorted(expand(k.scopes)),
            "raw_scopes": list(k.scopes),
            "created_by": emails.get(k.created_by, k.created_by),
            "created_at": k.created_at,
            "last_used_at": k.last_used_at,
            "last_used_ip": k.last_used_ip,
            "expires_at": k.expires_at,
            "status": k.status_at(now),
            "source_scope": k.source_scope,
            # (id, name or None when the source is gone): shown as links by name
            "sources": [(s, names.get(s)) for s in _restricted_to(k)],
            "rate_limit": k.rate_limit_per_minute,
            "own": k.created_by == viewer.user.id,
            "retiring": k.rotated_to_key_id is not None,  # (rotated once: its replacement rotates next)
            "flags": key_flags(k, now, threshold, new_ips.get(k.id, []), replaced.get(k.rotated_from_key_id or "")),
        }
        for k in keys
    ]


def attention(session, viewer: Viewer) -> dict[str, list[dict]]:
    """Across every key the viewer sees (not only this page's): those expiring within the
    week (not retiring by rotation) and those first used from a new address this week."""
    now = utcnow()
    visible = service.visible_keys(viewer.principal).where(ApiKey.revoked_at.is_(None))
    soon = session.scalars(
        visible.where(
            ApiKey.rotated_to_key_id.is_(None), ApiKey.expires_at > now, ApiKey.expires_at <= now + EXPIRY_WINDOW
        )
        .order_by(ApiKey.expires_at)
        .limit(20)
    ).all()
    fresh = session.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.key_prefix, KeyAddress.ip, KeyAddress.first_seen)
        .join(KeyAddress, KeyAddress.key_id == ApiKey.id)
        .where(
            ApiKey.id.in_(visible.with_only_columns(ApiKey.id).scalar_subquery()),
            KeyAddress.org_id == viewer.org.id,
            KeyAddress.new_for_key.is_(True),
            KeyAddress.first_seen >= now - NEW_IP_WINDOW,
        )
        .order_by(KeyAddress.first_seen.desc())
        .limit(20)
    ).all()
    return {
        "expiring": [
            {"id": k.id, "name": k.name, "prefix": k.key_prefix, "left": remaining(k.expires_at - now)}
            for k in soon
            if k.expires_at is not None
        ],
        "new_ips": [
            {"id": r.id, "name": r.name, "prefix": r.key_prefix, "ip": r.ip, "first_seen": r.first_seen} for r in fresh
        ],
    }


@dataclass(frozen=True)
class ListView:
    """How the key list is searched, filtered, sorted and paged: the page's query string."""

    q: str = ""
    status: str = ""
    sort: str = "created"
    order: str = "desc"
    page: int = 1

    def query(self, **changes: object) -> dict[str, str]:
        """The query string of this view with `changes`, leaving out defaults."""
        values = {**vars(self), **changes}
        defaults = vars(ListView())
        return {k: str(v) for k, v in values.items() if v != defaults[k]}

    def sort_link(self, column: str) -> dict[str, str]:
        """Sorting by `column`: flips the order when it is the current sort (newest first otherwise)."""
        if column == self.sort:
            return self.query(order="asc" if self.order == "desc" else "desc", page=1)
        return self.query(sort=column, order="asc" if column == "name" else "desc", page=1)

    def aria_sort(self, column: str) -> str:
        if column != self.sort:
            return "none"
        return "descending" if self.order == "desc" else "ascending"


def list_view(q: str | None, status: str | None, sort: str | None, order: str | None, page_: int) -> ListView:
    if status and status not in {s for s, _ in STATUS_FILTERS}:
        raise InvalidRequest("invalid_status", "Filter by Active, Expired or Revoked.")
    if sort and sort not in SORT_LABELS:
        raise InvalidRequest("invalid_sort", f"Sort by {', '.join(SORT_LABELS.values())}.")
    if order and order not in ("asc", "desc"):
        raise InvalidRequest("invalid_order", "Order is asc or desc.")
    return ListView(q=q or "", status=status or "", sort=sort or "created", order=order or "desc", page=page_)


def keys_context(session, viewer: Viewer, view: ListView | None = None) -> dict:
    view = view or ListView()
    rows, total = service.page_of_keys(
        session,
        viewer.principal,
        sort=view.sort,
        descending=view.order == "desc",
        offset=(view.page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
        search=view.q or None,
        status=view.status or None,
    )
    pages = max(1, -(-total // PAGE_SIZE))
    return {
        "title": "API Keys",
        "keys": _key_rows(session, viewer, rows),
        "attention": attention(session, viewer),
        "view": view,
        "total": total,
        "pages": pages,
        "sort_labels": SORT_LABELS,
        "status_filters": STATUS_FILTERS,
        "q": view.q,
        "creation_enabled": viewer.org.api_key_creation_enabled,
        "groups": offered_groups(viewer),
        "scope_words": SCOPE_WORDS,
        "source_choices": source_choices(session, viewer),
        "offer_data_access": DATA_ACCESS_SCOPES <= viewer.principal.scopes,
        "expirations": EXPIRATIONS,
        "grace_periods": GRACE_PERIODS,
        "max_date": (utcnow().date() + timedelta(days=service.MAX_EXPIRY_DAYS)).isoformat(),
        "min_date": (utcnow().date() + timedelta(days=1)).isoformat(),
        "form": CreateForm(),
        "form_error": None,
        "is_admin_view": viewer.principal.is_admin,
    }


def _curl(request: Request, secret: str, org_id: str, scopes: list[str]) -> str:
    base = str(request.base_url).rstrip("/")
    path = "/api/v1/keys" if MANAGE in expand(scopes) else "/api/v1/sources"
    return f'curl -H "Authorization: Bearer {secret}" \\\n     -H "X-Tenant-ID: {org_id}" \\\n     {base}{path}'


def _new_key(request: Request, viewer: Viewer, created: service.CreatedKey, rotated_from: str | None = None) -> dict:
    return {
        "id": created.key.id,
        "name": created.key.name,
        "prefix": created.key.key_prefix,
        "secret": created.secret,
        "org_id": viewer.org.id,
        "rotated_from": rotated_from,
        "curl": _curl(request, created.secret, viewer.org.id, created.key.scopes),
    }


@router.get("/settings")
def settings_home(request: Request):
    return redirect("/settings/api-keys")


@router.get("/settings/api-keys")
def keys_page(
    request: Request,
    q: str | None = Query(None, max_length=200),
    status: str | None = Query(None, max_length=20),
    sort: str | None = Query(None, max_length=20),
    order: str | None = Query(None, max_length=4),
    page_: int = Query(1, alias="page", ge=1, le=100_000),
    notice: str | None = Query(None, max_length=40),
):
    with db(request) as session:
        viewer = signed_in(request, session, MANAGE)
        try:
            view = list_view(q, status, sort, order, page_)
        except TidegateError as exc:
            raise PageError(exc.status, "Bad request", exc.message, viewer) from None
        context = keys_context(session, viewer, view)
    return page(request, "keys.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


@router.post("/settings/api-keys")
def create_key(request: Request, form: FormData = FORM):
    values = CreateForm.read(form)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, MANAGE)
            created = service.create_key(
                session,
                viewer.principal,
                values.key_request(session, viewer),
                pepper=settings_of(request).pepper,
                context=request_context(request),
                via="web",
            )
            new_key = _new_key(request, viewer, created)
            context = keys_context(session, viewer)
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, MANAGE)
            context = keys_context(session, viewer)
        return page(
            request,
            "keys.html",
            {**context, "form": values, "form_error": field_error(exc, FIELD_OF_CODE, PLAIN_WORDS)},
            viewer=viewer,
            status=exc.status,
        )
    # The only response that ever carries the secret (Cache-Control: no-store, like every page).
    return page(request, "keys.html", {**context, "new_key": new_key}, viewer=viewer, current="/settings/api-keys")


def _get_key(session, viewer: Viewer, key_id: str) -> ApiKey:
    try:
        return service.get_key(session, viewer.principal, key_id)
    except TidegateError as exc:
        raise PageError(exc.status, "Key not found", exc.message, viewer) from None


@router.get("/settings/api-keys/{key_id}/revoke")
def revoke_confirm(request: Request, key_id: str = KeyId()):
    with db(request) as session:
        viewer = signed_in(request, session, MANAGE)
        stored = _get_key(session, viewer, key_id)
        key = _key_rows(session, viewer, [stored])[0]
        now = utcnow()
        minted = sum(1 for k in service.descendants(session, stored) if k.status_at(now) == "active")
    return page(
        request,
        "key_action.html",
        {"title": "Revoke API key", "action": "revoke", "key": key, "minted": minted, "grace_periods": GRACE_PERIODS},
        viewer=viewer,
        current="/settings/api-keys",
    )


@router.post("/settings/api-keys/{key_id}/revoke")
def revoke(request: Request, key_id: str = KeyId(), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, MANAGE)
        key = _get_key(session, viewer, key_id)
        service.revoke_key(session, viewer.principal, key, context=request_context(request), via="web")
    return redirect("/settings/api-keys?notice=revoked")


@router.get("/settings/api-keys/{key_id}/rotate")
def rotate_confirm(request: Request, key_id: str = KeyId()):
    with db(request) as session:
        viewer = signed_in(request, session, MANAGE)
        key = _key_rows(session, viewer, [_get_key(session, viewer, key_id)])[0]
    return page(
        request,
        "key_action.html",
        {"title": "Rotate API key", "action": "rotate", "key": key, "grace_periods": GRACE_PERIODS},
        viewer=viewer,
        current="/settings/api-keys",
    )


@router.post("/settings/api-keys/{key_id}/rotate")
def rotate(request: Request, key_id: str = KeyId(), form: FormData = FORM):
    grace = text(form, "grace_seconds", 20)
    if grace not in {g for g, _ in GRACE_PERIODS}:
        # No choice (or a forged one): the rotate page again, the reason at the choice.
        refusal = InvalidRequest("invalid_grace_period", "grace_seconds must be one of the offered periods.")
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, MANAGE)
            key = _key_rows(session, viewer, [_get_key(session, viewer, key_id)])[0]
        return page(
            request,
            "key_action.html",
            {
                "title": "Rotate API key",
                "action": "rotate",
                "key": key,
                "grace_periods": GRACE_PERIODS,
                "form_error": field_error(refusal, ROTATE_FIELDS, ROTATE_WORDS),
            },
            viewer=viewer,
            status=refusal.status,
            current="/settings/api-keys",
        )
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, MANAGE)
            old = _get_key(session, viewer, key_id)
            created = service.rotate_key(
                session,
                viewer.principal,
                old,
                grace=timedelta(seconds=int(grace)),
                pepper=settings_of(request).pepper,
                context=request_context(request),
                via="web",
            )
            new_key = _new_key(request, viewer, created, rotated_from=old.key_prefix)
            context = keys_context(session, viewer)
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, MANAGE)
            context = keys_context(session, viewer)
        return page(
            request,
            "keys.html",
            {**context, "page_error": exc.message},
            viewer=viewer,
            status=exc.status,
            current="/settings/api-keys",
        )
    return page(request, "keys.html", {**context, "new_key": new_key}, viewer=viewer, current="/settings/api-keys")


@router.post("/settings/api-keys/{key_id}/apply-suggestion")
def apply_suggestion(request: Request, key_id: str = KeyId(), form: FormData = FORM):
    """Narrow the key to the scopes and sources its activity page suggested (sent with the
    form, so that what is applied is what was shown); narrowing only, as PATCH /keys/{id}:
    anything the key does not hold is refused (403 scope_widening_not_allowed,
    source_scope_widening_not_allowed) and changes nothing."""
    scopes, source_ids = _names(form, "scopes"), _names(form, "source_ids")
    if not scopes and not source_ids:
        raise PageError(400, "Bad request", "The suggestion names nothing to apply.")
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, MANAGE)
        key = _get_key(session, viewer, key_id)
        context = request_context(request)
        if scopes:
            service.narrow_scopes(session, viewer.principal, key, scopes, context=context)
        if source_ids:
            source_scope = {"mode": "selected", "source_ids": source_ids}
            service.narrow_source_scope(session, viewer.principal, key, source_scope, context=context)
    return redirect(f"/audit/keys/{key_id}?notice=narrowed")


def _names(form: FormData, field: str) -> list[str]:
    raw = form.getlist(field)
    names = [s for s in raw if isinstance(s, str) and 0 < len(s) <= 200]
    if len(raw) > 1000 or len(names) != len(raw):  # a file part, an empty or overlong value
        raise PageError(400, "Bad request", f"Too many or malformed {field}.")
    return names
