"""A signed POST to a checked URL: what webhook deliveries and the audit stream send.

The URL's host is resolved once and checked against the egress policy at every send; the
request goes to that checked address (the host name kept for `Host` and TLS SNI), without
redirects or proxies. The body is signed with `Tidegate-Signature` (webhooks.sign).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from tidegate.errors import TidegateError
from tidegate.notifications.webhooks import SIGNATURE_HEADER, destination, sign


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None
    error: str | None


def post_signed(url: str, secret: str, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST `body` to `url`, signed, to the address the egress policy checked now (no redirects)."""
    try:
        checked = destination(url)
    except TidegateError as exc:
        return Outcome(False, None, exc.message[:500])
    parts = urlsplit(url)
    address = f"[{checked.address}]" if ":" in checked.address else checked.address
    netloc = f"{address}:{checked.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rpartition("@")[2]
    headers = {"Host": host_header, **headers, SIGNATURE_HEADER: sign(secret, int(time.time()), body)}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.post(target, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return Outcome(False, None, f"{type(exc).__name__}: could not deliver"[:500])
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code, None)
    return Outcome(False, response.status_code, f"HTTP {response.status_code}")
