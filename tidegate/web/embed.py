"""GET /embed: the page an organization's product shows in an iframe, with an embed session.

The page holds no data and no credential when served. It posts `ready` to its parent and
waits for `init {sessionToken, config}`; it then uses the token on /api/v1 like any client
(`X-Embed-Session`), naming the origin of the frame that sent it (`X-Embed-Origin`) and the
organization of its address (`X-Tenant-ID`), so the API's rules decide everything: a token
of another organization, or used from an origin the session or the organization does not
allow, is refused there (static/embed.js).

Who may frame it: the page is served before any token, so `?org=org_...` names the
organization and `frame-ancestors` lists that organization's embed origins. Without a
known organization, with embeds switched off, or with no origins listed, it is `'none'`:
an organization that wants the iframe lists the origins it runs on.
"""

from __future__ import annotations

import re

from fastapi import Query, Request
from starlette.responses import Response

from tidegate.orgs.models import Organization
from tidegate.web.common import db, router
from tidegate.web.render import page

ORG_ID = re.compile(r"^org_[A-Za-z0-9_-]{1,60}$")


def frame_ancestors(org: Organization | None) -> str:
    if org is None or not org.embeds_enabled or not org.embed_allowed_origins:
        return "'none'"
    return " ".join(org.embed_allowed_origins)


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
    organization = None
    if ORG_ID.match(org):
        with db(request) as session:
            organization = session.get(Organization, org)
    context = {"title": "Embedded data", "org_id": organization.id if organization else ""}
    return embed_headers(page(request, "embed.html", context, viewer=None), frame_ancestors(organization))
