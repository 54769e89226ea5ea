"""orjson-rendered JSON responses and the error envelope."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from tidegate.errors import TidegateError


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_response(status: int, type_: str, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": {"type": type_, "code": code, "message": message}}, status_code=status, headers=headers)


def from_error(exc: TidegateError) -> JSON:
    return JSON(exc.body(), status_code=exc.status, headers=exc.headers or None)
