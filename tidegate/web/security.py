"""Settings > Security (admins). Admin Controls: switch API key creation on or off,
deny-by-default for access policies, public dashboard links, and what one person can hold
(active keys, and the request rate all their keys share).

Access policies and groups have their own sub-pages (tidegate.web.policies).
"""

from __future__ import annotations

import re

from fastapi import Query, Request
from starlette.datastructures import FormData

from tidegate.access import policies
from tidegate.core.scopes import Scope
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import request_context
from tidegate.notifications import audit_stream
from tidegate.orgs import service
from tidegate.web.common import FORM, db, field_error, router, signed_in, signed_in_to_change, text
from tidegate.web.render import page, redirect
from tidegate.wire.orgs import AuditStreamOut

READ = Scope.ORG_READ
WRITE = Scope.ORG_WRITE
NOTICES = {"saved": "Admin controls saved."}

# The admin controls form: which field a refusal is about, and plain words for the API's
# (which name wire fields such as user_rate_limit_per_minute).
FIELD_OF_CODE = {
    "invalid_max_keys_per_user": "max_keys_per_user",
    "invalid_user_rate_limit": "user_rate_limit_per_minute",
    "invalid_unused_key_days": "unused_key_days",
}
PLAIN_WORDS = {
    "invalid_max_keys_per_user": f"Enter a whole number of keys between 1 and {service.MAX_KEYS_PER_USER:,}.",
    "invalid_user_rate_limit": (
        f"Enter a whole number of requests per minute between 1 and {service.MAX_USER_RATE_LIMIT:,}."
    ),
    "invalid_unused_key_days": f"Enter a whole number of days between 1 and {service.MAX_UNUSED_KEY_DAYS:,}.",
}


def _stream_status(session, org_id: str) -> dict:
    """The audit stream's state, as GET /org/audit-stream shows it (set through the API or CLI)."""
    stream = audit_stream.get_stream(session, org_id)
    return AuditStreamOut.of(stream, audit_stream.pending_events(session, org_id, stream)).model_dump()


def _context(org, viewer, notice: str | None = None, error: dict | None = None, typed: dict | None = None) -> dict:
    return {
        "title": "Admin Controls",
        "creation_enabled": org.api_key_creation_enabled,
        "deny_by_default": bool(org.deny_by_default),
        "public_share_links_enabled": bool(org.public_share_links_enabled),
        "max_keys_per_user": (typed or {}).get("max_keys_per_user", org.max_keys_per_user),
        "user_rate_limit_per_minute": (typed or {}).get("user_rate_limit_per_minute", org.user_rate_limit_per_minute),
        "unused_key_days": (typed or {}).get("unused_key_days", org.unused_key_days),
        "can_write": viewer.can(WRITE),
        "notice": NOTICES.get(notice or ""),
        "form_error": error,
    }


@router.get("/settings/security")
def security_page(request: Request, notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        org = service.get_org(session, viewer.org.id)
        context = _context(org, viewer, notice)
        context["audit_stream"] = _stream_status(session, org.id)
    return page(request, "security.html", context, viewer=viewer)


def _whole_number(form: FormData, name: str, invalid_code: str) -> int | None:
    """A whole number field; empty (or absent) leaves the setting as it is."""
    value = text(form, name, 20).replace(",", "").replace("_", "")
    if not value:
        return None
    if not re.fullmatch(r"\d{1,12}", value):
        raise InvalidRequest(invalid_code, PLAIN_WORDS.get(invalid_code, "Enter a whole number."))
    return int(value)


@router.post("/settings/security/admin-controls")
def save_admin_controls(request: Request, form: FormData = FORM):
    typed = {
        "max_keys_per_user": text(form, "max_keys_per_user", 20),
        "user_rate_limit_per_minute": text(form, "user_rate_limit_per_minute", 20),
        "unused_key_days": text(form, "unused_key_days", 20),
    }
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            org = service.get_org(session, viewer.org.id)
            context = request_context(request)
            service.update_settings(
                session,
                viewer.principal,
                org,
                api_key_creation_enabled=form.get("api_key_creation_enabled") == "on",
                max_keys_per_user=_whole_number(form, "max_keys_per_user", "invalid_max_keys_per_user"),
                user_rate_limit_per_minute=_whole_number(form, "user_rate_limit_per_minute", "invalid_user_rate_limit"),
                public_share_links_enabled=form.get("public_share_links_enabled") == "on",
                unused_key_days=_whole_number(form, "unused_key_days", "invalid_unused_key_days"),
                context=context,
            )
            policies.set_deny_by_default(
                session, viewer.principal, org, form.get("deny_by_default") == "on", context=context
            )
    except TidegateError as exc:
        # Nothing was saved (the transaction rolled back): show the form as typed, and why.
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            org = service.get_org(session, viewer.org.id)
            page_context = _context(org, viewer, error=field_error(exc, FIELD_OF_CODE, PLAIN_WORDS), typed=typed)
            page_context["audit_stream"] = _stream_status(session, org.id)
        return page(request, "security.html", page_context, viewer=viewer, status=exc.status)
    return redirect("/settings/security?notice=saved")
