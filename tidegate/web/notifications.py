"""The notifications panel (org admins): security events of the organization, newest first,
and each webhook with its recent deliveries (the delivery log). Visiting it marks what it
shows as seen in this browser (a cookie), which the navigation's count follows."""

from __future__ import annotations

from fastapi import Query, Request

from tidegate.core.scopes import Scope
from tidegate.notifications import reads, webhooks
from tidegate.notifications.events import EVENT_TYPES, summary
from tidegate.web.common import db, is_https, router, signed_in
from tidegate.web.render import SEEN_COOKIE, page

PAGE_SIZE = 50
DELIVERIES_SHOWN = 20


@router.get("/notifications")
def notifications_page(request: Request, after: str | None = Query(None, max_length=100)):
    with db(request) as session:
        viewer = signed_in(request, session, Scope.ORG_READ)
        rows = reads.list_notifications(session, viewer.org.id, limit=PAGE_SIZE, after=after)
        items = [
            {
                "row": n,
                "summary": summary(n.event_type, n.details, n.ip_address),
                "label": EVENT_TYPES.get(n.event_type),
            }
            for n in rows[:PAGE_SIZE]
        ]
        hooks = [
            {
                "webhook": w,
                "deliveries": reads.list_deliveries(session, viewer.org.id, webhook_id=w.id, limit=DELIVERIES_SHOWN)[
                    :DELIVERIES_SHOWN
                ],
            }
            for w in webhooks.list_webhooks(session, viewer.org.id)
        ]
    newest = rows[0].occurred_at if rows and after is None else None
    context: dict[str, object] = {
        "title": "Notifications",
        "items": items,
        "next_after": rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None,
        "hooks": hooks,
        "event_types": EVENT_TYPES,
    }
    if newest is not None:
        context["notification_count"] = 0  # all seen as of this page
    response = page(request, "notifications.html", context, viewer=viewer)
    if newest is not None:
        response.set_cookie(
            SEEN_COOKIE,
            str(newest.timestamp()),
            max_age=30 * 86400,
            httponly=True,
            samesite="lax",
            secure=is_https(request),
        )
    return response
