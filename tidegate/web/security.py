"""Settings > Security (admins). Admin Controls: switch API key creation on or off, and
deny-by-default for access policies.

Access policies and groups have their own sub-pages (tidegate.web.policies).
"""

from __future__ import annotations

from fastapi import Query, Request
from starlette.datastructures import FormData

from tidegate.access import policies
from tidegate.api.deps import request_context
from tidegate.orgs import service
from tidegate.web.common import FORM, db, router, signed_in, signed_in_to_change
from tidegate.web.render import page, redirect

READ = "admin:org:read"
WRITE = "admin:org:write"
NOTICES = {"saved": "Admin controls saved."}


@router.get("/settings/security")
def security_page(request: Request, notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        org = service.get_org(session, viewer.org.id)
        context = {"title": "Admin Controls", "creation_enabled": org.api_key_creation_enabled,
                   "deny_by_default": bool(org.deny_by_default),
                   "can_write": viewer.can(WRITE), "notice": NOTICES.get(notice or "")}
    return page(request, "security.html", context, viewer=viewer)


@router.post("/settings/security/admin-controls")
def save_admin_controls(request: Request, form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, WRITE)
        org = service.get_org(session, viewer.org.id)
        context = request_context(request)
        service.update_settings(session, viewer.principal, org,
                                api_key_creation_enabled=form.get("api_key_creation_enabled") == "on",
                                context=context)
        policies.set_deny_by_default(session, viewer.principal, org, form.get("deny_by_default") == "on",
                                     context=context)
    return redirect("/settings/security?notice=saved")
