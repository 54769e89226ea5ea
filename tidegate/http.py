"""What the API and the web pages both read off a request: the client's address (behind
trusted proxies) and the context an audit event records. Neutral ground: `tidegate.api`
and `tidegate.web` both import it, and neither imports the other for it."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

from tidegate.audit.record import RequestContext


def client_ip(request: Request) -> str | None:
    peer = request.client.host if request.client else None
    trusted = request.app.state.settings.trusted_proxies
    if not peer or not trusted or not _in_any(peer, trusted):
        return peer
    # Walk X-Forwarded-For from the nearest hop; the first untrusted address is the client.
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in_any(hop, trusted):
            return hop
    return peer


def _in_any(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def request_context(request: Request) -> RequestContext:
    return RequestContext(
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        request_id=request.scope.get("state", {}).get("request_id"),
    )
