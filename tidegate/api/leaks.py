"""POST /keys/leaks: leaked-key reports from secret scanners (GitHub's partner format).

No credential (a scanner has none of ours): rate limited per client address, the body
bounded, and signed when providers' public keys are configured (TIDEGATE_LEAK_PUBLIC_KEYS_FILE).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tidegate.access import ratelimit
from tidegate.api.deps import in_session, settings_of
from tidegate.api.inputs import Text
from tidegate.api.responses import JSON
from tidegate.credentials import leaks
from tidegate.errors import InvalidRequest, RateLimited, TidegateError
from tidegate.http import client_ip, request_context
from tidegate.wire.webhooks import LeakLabel

router = APIRouter(tags=["keys"])

MAX_BODY_BYTES = 256 * 1024
MAX_TOKENS = 1000


class LeakReportIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # providers may add fields

    token: Text = Field(min_length=1, max_length=1000)
    type: Text | None = Field(None, max_length=200)
    url: Text | None = Field(None, max_length=4000)
    source: Text | None = Field(None, max_length=200)


_REPORTS = TypeAdapter(list[LeakReportIn])


class TooLarge(TidegateError):
    status = 413
    type = "invalid_request_error"


async def _body(request: Request) -> bytes:
    """The raw body (the signature covers its bytes), refused past MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLarge("request_too_large", f"A leak report may be at most {MAX_BODY_BYTES // 1024} KiB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge("request_too_large", f"A leak report may be at most {MAX_BODY_BYTES // 1024} KiB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _reports(body: bytes) -> list[leaks.LeakReport]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "invalid_leak_report", "The body must be a JSON array of {token, type, url, source}."
        ) from None
    if not isinstance(document, list) or not 1 <= len(document) <= MAX_TOKENS:
        raise InvalidRequest(
            "invalid_leak_report", f"The body must be a JSON array of 1 to {MAX_TOKENS} {{token, type, url, source}}."
        )
    try:
        items = _REPORTS.validate_python(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidRequest("invalid_leak_report", f"{where}: {first.get('msg')}") from None
    return [leaks.LeakReport(token=i.token, type=i.type, url=i.url, source=i.source) for i in items]


# The body is read raw (its signature covers its bytes): documented here by hand.
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TOKENS,
                "items": {
                    "type": "object",
                    "required": ["token"],
                    "properties": {
                        "token": {"type": "string", "minLength": 1, "maxLength": 1000},
                        "type": {"type": "string", "maxLength": 200},
                        "url": {"type": "string", "maxLength": 4000},
                        "source": {"type": "string", "maxLength": 200},
                    },
                },
            }
        }
    },
}


@router.post("/keys/leaks", response_model=list[LeakLabel], openapi_extra={"requestBody": REQUEST_BODY})
async def report_leaks(request: Request):
    """Each token labelled `true_positive` (one of our keys: revoked now if it was active,
    its organization notified) or `false_positive`; nothing else is revealed."""
    settings = settings_of(request)
    per_minute = settings.notify.leak_reports_per_minute
    try:
        await ratelimit.enforce_async(settings.redis_url, "leak-report:" + (client_ip(request) or "-"), per_minute)
    except RateLimited as exc:
        raise RateLimited(
            "rate_limit_exceeded",
            f"Leak reports are limited to {per_minute} requests per minute per address.",
            headers=exc.headers,
        ) from None
    body = await _body(request)
    if settings.notify.leak_public_keys:
        leaks.verify_signature(
            settings.notify.leak_public_keys,
            request.headers.get(leaks.KEY_ID_HEADER),
            request.headers.get(leaks.SIGNATURE_HEADER),
            body,
        )
    reports = _reports(body)
    labels = await in_session(request, leaks.report_leaks, settings.pepper, reports, request_context(request))
    return JSON([LeakLabel(token_raw=x.token_raw, token_type=x.token_type, label=x.label).model_dump() for x in labels])
