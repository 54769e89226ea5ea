"""Request body limits, enforced before anything parses a body or authenticates a caller.

A declared Content-Length over the limit is refused at once, without reading a byte of the
body; a chunked body is counted as the application reads it and refused the moment it
passes the limit. Either way the answer is 413 `request_too_large` naming the limit, and
the application never sees more than the limit (it gets `http.disconnect` instead).

Limits (tidegate.limits): uploads (their own, larger limit; Starlette spools the file part
to disk), forms of the web UI, and everything else (JSON). A pure ASGI middleware: a
request without a body (every GET of the data pages) costs one scan of its header names.
"""

from __future__ import annotations

from tidegate.api.responses import error_response
from tidegate.limits import MULTIPART_OVERHEAD, Limits, describe_bytes, get_limits

# Endpoints that take a file (multipart part `file`): their body may be an upload's size.
UPLOAD_PATHS = frozenset({"/api/v1/files/upload", "/sources/upload"})
FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")


class BodyLimitMiddleware:
    def __init__(self, app, limits: Limits | None = None):
        self.app = app
        self.limits = limits or get_limits()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        for name, _ in headers:
            if name == b"content-length" or name == b"transfer-encoding":
                break
        else:  # neither: HTTP/1.1 says there is no body (every GET of the data pages)
            return await self.app(scope, receive, send)
        declared = content_type = None
        for name, value in headers:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value
        limit, message = self._limit_for(scope["path"], content_type)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(message, scope, receive, send)
        await self.app(scope, *_counting(limit, message, scope, receive, send))

    def _limit_for(self, path: str, content_type: bytes | None) -> tuple[int, str]:
        """(bytes allowed, the refusal's message)."""
        if path in UPLOAD_PATHS:
            size = self.limits.max_upload_bytes
            return size + MULTIPART_OVERHEAD, f"An uploaded file may be at most {_amount(size)}."
        if content_type and content_type.lower().lstrip().startswith(FORM_TYPES):
            size = self.limits.max_form_bytes
            return size, f"A form may be at most {_amount(size)}."
        size = self.limits.max_json_bytes
        return size, f"A request body may be at most {_amount(size)}."


def _amount(size: int) -> str:
    described = describe_bytes(size)
    return described if described.endswith("bytes") else f"{described} ({size:,} bytes)"


def _counting(limit: int, refusal: str, scope, receive, send):
    """(receive, send) for the application: receive refuses past `limit`, and once refused,
    whatever the application still sends is dropped (the 413 has been answered)."""
    received = 0
    refused = False
    response_started = False

    async def counted_receive():
        nonlocal received, refused
        if refused:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                refused = True
                if not response_started:
                    await _refuse(refusal, scope, receive, send)
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(message):
        nonlocal response_started
        if refused:
            return
        if message["type"] == "http.response.start":
            response_started = True
        await send(message)

    return counted_receive, guarded_send


async def _refuse(message: str, scope, receive, send) -> None:
    response = error_response(413, "invalid_request_error", "request_too_large", message)
    await response(scope, receive, send)
