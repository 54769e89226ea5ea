"""GET /embed: the page an organization's product shows in an iframe, with an embed session.

The page holds no data and no credential when served. It posts `ready` to its parent and
waits for `init {sessionToken, config}`; it then uses the token on /api/v1 like any client
(`X-Embed-Session`), naming the origin of the frame that sent it (`X-Embed-Origin`) and the
organization of its address (`X-Tenant-ID`), so the API's rules decide everything: a token
of another organization, or used from an origin the session or the organization does not
allow, is refused there (static/embed.js).

Who may frame it (`frame-ancestors`), decided before any token is seen:
- `?org=org_...` names the organization: its embed origins; `'none'` when it is unknown,
  has embeds switched off or lists no origins (to use the iframe, list the origins).
- Without `?org` (the Querri SDK's token modes frame `{server}/embed` bare, with
  `referrerpolicy=strict-origin`): the origin of the `Referer` the browser sent for the
  frame, when an organization with embeds on lists it; `'none'` otherwise. So nobody
  learns another organization's list; only whether one origin is listed somewhere.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi import Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from tidegate.errors import InvalidRequest
from tidegate.orgs.embeds import normalize_origin
from tidegate.orgs.models import Organization
from tidegate.web.common import db, router
from tidegate.web.render import page

ORG_ID = re.compile(r"^org_[A-Za-z0-9_-]{1,60}$")


def frame_ancestors(org: Organization | None) -> str:
    if org is None or not org.embeds_enabled or not org.embed_allowed_origins:
        return "'none'"
    return " ".join(org.embed_allowed_origins)


def referring_origin(request: Request) -> str | None:
    referer = request.headers.get("referer")
    if not referer:
        return None
    parts = urlsplit(referer)
    try:
        return normalize_origin(f"{parts.scheme}://{parts.netloc}")
    except (InvalidRequest, ValueError):
        return None


def listed_somewhere(session: Session, origin: str) -> bool:
    """Whether an organization with embeds on lists `origin` (a JSON list: compared here)."""
    lists = session.scalars(select(Organization.embed_allowed_origins).where(Organization.embeds_enabled.is_(True)))
    return any(origin in (origins or []) for origins in lists)


def embed_headers(response: Response, ancestors: str) -> Response:
    # As the other pages (render.SECURITY_HEADERS) but framable by the listed origins, and
    # with the referrer kept on same-origin requests so a POST carries our own Origin.
    for name in ("X-Frame-Options", "Cross-Origin-Opener-Policy"):
        del response.headers[name]
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@router.get("/embed")
def embed_page(request: Request, org: str = Query("", max_length=200)):
    organization, ancestors = None, "'none'"
    parent = referring_origin(request)
    with db(request) as session:
        if ORG_ID.match(org):
            organization = session.get(Organization, org)
            ancestors = frame_ancestors(organization)
        elif not org and parent is not None and listed_somewhere(session, parent):
            ancestors = parent
    context = {"title": "Embedded data", "org_id": organization.id if organization else ""}
    return embed_headers(page(request, "embed.html", context, viewer=None), ancestors)
