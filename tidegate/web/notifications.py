"""The notifications panel (org admins): security events of the organization, newest first,
and its webhooks with their recent deliveries (the delivery log); admins with
admin:org:write add and delete webhooks here too, through the same service as
`/api/v1/org/webhooks` (same checks, same audit events; the secret is shown once).

Visiting the panel marks what it shows as seen in this browser (a cookie), which the
navigation's count follows."""

from __future__ import annotations

from datetime import datetime

from fastapi import Path, Query, Request
from starlette.datastructures import FormData

from tidegate.core.scopes import Scope
from tidegate.errors import TidegateError
from tidegate.http import request_context
from tidegate.notifications import reads, webhooks
from tidegate.notifications.events import EVENT_TYPES, summary
from tidegate.web.common import FORM, PageError, db, is_https, router, settings_of, signed_in, signed_in_to_change, text
from tidegate.web.render import SEEN_COOKIE, page, redirect
from tidegate.web.sessions import Viewer

BASE = "/notifications"
PAGE_SIZE = 50
DELIVERIES_SHOWN = 20
NOTICES = {"deleted": "The webhook was deleted: it gets no more deliveries."}


def _context(session, viewer: Viewer, after: str | None = None, **extra: object) -> dict[str, object]:
    rows = reads.list_notifications(session, viewer.org.id, limit=PAGE_SIZE, after=after)
    hooks = [
        {
            "webhook": w,
            "deliveries": reads.list_deliveries(session, viewer.org.id, webhook_id=w.id, limit=DELIVERIES_SHOWN)[
                :DELIVERIES_SHOWN
            ],
        }
        for w in webhooks.list_webhooks(session, viewer.org.id)
    ]
    return {
        "title": "Notifications",
        "items": [
            {
                "row": n,
                "summary": summary(n.event_type, n.details, n.ip_address),
                "label": EVENT_TYPES.get(n.event_type),
            }
            for n in rows[:PAGE_SIZE]
        ],
        "newest": rows[0].occurred_at if rows and after is None else None,
        "next_after": rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None,
        "hooks": hooks,
        "event_types": EVENT_TYPES,
        "can_write": viewer.can(Scope.ORG_WRITE),
        "typed": {"url": "", "description": "", "events": []},
        **extra,
    }


@router.get(BASE)
def notifications_page(
    request: Request,
    after: str | None = Query(None, max_length=100),
    notice: str | None = Query(None, max_length=40),
):
    with db(request) as session:
        viewer = signed_in(request, session, Scope.ORG_READ)
        context = _context(session, viewer, after, notice=NOTICES.get(notice or ""))
    newest = context["newest"]
    if isinstance(newest, datetime):
        context["notification_count"] = 0  # all seen as of this page
    response = page(request, "notifications.html", context, viewer=viewer)
    if isinstance(newest, datetime):
        response.set_cookie(
            SEEN_COOKIE,
            str(newest.timestamp()),
            max_age=30 * 86400,
            httponly=True,
            samesite="lax",
            secure=is_https(request),
        )
    return response


@router.post(BASE + "/webhooks")
def add_webhook(request: Request, form: FormData = FORM):
    url = text(form, "url", webhooks.MAX_URL_LENGTH + 100)
    description = text(form, "description", 300)
    events = [e for e in form.getlist("events") if isinstance(e, str)][: len(EVENT_TYPES) + 5]
    typed = {"url": url, "description": description, "events": events}
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, Scope.ORG_WRITE)
            created = webhooks.create_webhook(
                session,
                viewer.principal,
                url=url,
                events=events,
                description=description or None,
                session_key=settings_of(request).session_key,
                context=request_context(request),
            )
            secret, hook_id = created.secret, created.webhook.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, Scope.ORG_READ)
            context = _context(session, viewer, webhook_error=exc.message, typed=typed)
        return page(request, "notifications.html", context, viewer=viewer, status=exc.status, current=BASE)
    with db(request) as session:
        viewer = signed_in(request, session, Scope.ORG_READ)
        context = _context(session, viewer, created_secret=secret, created_id=hook_id)
    # The one page that shows the secret (never cached: every page is no-store).
    return page(request, "notifications.html", context, viewer=viewer, status=201, current=BASE)


@router.post(BASE + "/webhooks/{webhook_id}/delete")
def delete_webhook(request: Request, webhook_id: str = Path(max_length=40), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, Scope.ORG_WRITE)
        try:
            hook = webhooks.get_webhook(session, viewer.org.id, webhook_id)
        except TidegateError:
            raise PageError(404, "Not found", "No such webhook in this organization.", viewer) from None
        webhooks.delete_webhook(session, viewer.principal, hook, context=request_context(request))
    return redirect(BASE + "?notice=deleted")
