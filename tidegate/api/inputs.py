"""What the API accepts as input text, checked before any service sees it.

Two kinds of text are valid JSON or a valid URL and still break a server downstream:

- A lone surrogate escape ("\\ud800"): valid JSON syntax, but not Unicode, so no database
  driver or encoder can take the string. The API's JSON decoder (`InputRoute`, the route
  class of every API router) refuses it, and a body that is not UTF-8, the way malformed
  JSON is refused: 400 `invalid_parameters`.
- NUL: PostgreSQL refuses it in text, even as a query parameter, so a NUL that reaches a
  lookup or a row is a 500 there while SQLite takes it. URL parameters are checked for
  every API route (`deps.authenticated`, after authentication, so the refusal is audited);
  body fields that name, identify or describe something are typed `Text`. (Row values and
  SQL are not Text: rows go to Parquet, and the SQL sandbox refuses NUL itself.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import AfterValidator

from tidegate.errors import InvalidRequest


def _without_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_without_nul)]


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter, for the hot endpoint that parses its own (api.data's
    read_data, a plain Starlette route). A 400 names the parameter."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 12 and low <= int(raw) <= high:
        return int(raw)
    raise InvalidRequest("invalid_parameters", f"{name}: must be an integer from {low:,} to {high:,}.")


def query_choice(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.query_params.get(name, default)
    if raw in choices:
        return raw
    raise InvalidRequest("invalid_parameters", f"{name}: must be one of {', '.join(choices)}.")


class StrictJSONRequest(Request):
    """`json()` as FastAPI calls it for a JSON body: UTF-8 only (RFC 8259), strings valid Unicode."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8-sig")  # a leading BOM is tolerated, as before
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(
                    "the body is not UTF-8", body.decode("utf-8", "replace"), exc.start
                ) from None
            value = json.loads(text)
            if "\\u" in text:  # only an escape can produce a lone surrogate
                try:
                    json.dumps(value, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise json.JSONDecodeError(
                        "a string holds a lone surrogate escape, which is not Unicode", text, 0
                    ) from None
            self._json = value
        return self._json


class InputRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        if self.methods is not None and self.methods <= {"GET", "HEAD"}:
            return handler  # no body to read

        async def strict_json_handler(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_json_handler
