"""orjson-rendered JSON responses and the error envelope."""

from __future__ import annotations

import base64
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

from tidegate.errors import TidegateError


def _fallback(value: Any):
    """Types orjson does not know, as query results can hold them."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


class JSON(Response):
    """Rendered straight by orjson. Data endpoints return it themselves: skipping FastAPI's
    jsonable_encoder pass over every row is most of the cost of a page."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_fallback, option=orjson.OPT_NON_STR_KEYS)


def error_response(status: int, type_: str, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": {"type": type_, "code": code, "message": message}}, status_code=status, headers=headers)


def from_error(exc: TidegateError) -> JSON:
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers or None)
