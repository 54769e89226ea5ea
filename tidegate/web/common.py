"""What every page handler shares: the router, error pages, the signed-in viewer, CSRF.

Handlers are plain (sync) functions that open their own transaction with `db(request)`.
`WebRoute` turns what they raise into pages: `NeedLogin` into a redirect to /login,
`PageError` and service errors (`TidegateError`) into an HTML error page with the right
4xx status, and malformed query/path parameters into a 400 page. API routes are not
affected: they keep their JSON errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.responses import Response

from tidegate.config import Settings
from tidegate.core.scopes import Scope
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.outages import unavailable_error
from tidegate.web.render import error_page, redirect
from tidegate.web.sessions import SESSION_COOKIE, Viewer, csrf_valid, load_viewer

TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    429: "Too many requests",
    503: "Temporarily unavailable",
}


class NeedLogin(Exception):
    """No valid session: send the browser to the sign-in page."""


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str, viewer: Viewer | None = None):
        super().__init__(message)
        self.status, self.title, self.message, self.viewer = status, title, message, viewer


def login_url(request: Request) -> str:
    if request.method != "GET":
        return "/login"
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?next=" + quote(target, safe="")


class WebRoute(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except NeedLogin:
                return redirect(login_url(request))
            except PageError as exc:
                return error_page(request, exc.status, exc.title, exc.message, viewer=exc.viewer)
            except TidegateError as exc:
                return _with_headers(
                    error_page(request, exc.status, TITLES.get(exc.status, "Request refused"), exc.message), exc.headers
                )
            except RequestValidationError:
                return error_page(request, 400, "Bad request", "The address or form had a value this page cannot use.")
            except Exception as exc:
                down = unavailable_error(exc)  # the database, disk or Redis is down: 503, not 500
                if down is None:
                    raise
                return _with_headers(error_page(request, 503, TITLES[503], down.message), down.headers)

        return guarded


def _with_headers(response: Response, headers: dict[str, str]) -> Response:
    response.headers.update(headers)
    return response


router = APIRouter(route_class=WebRoute, include_in_schema=False)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


@contextmanager
def db(request: Request) -> Iterator[Session]:
    with session_scope(settings_of(request).database_url) as session:
        yield session


def current_viewer(request: Request, session: Session) -> Viewer | None:
    return load_viewer(session, settings_of(request).session_key, request.cookies.get(SESSION_COOKIE))


def signed_in(request: Request, session: Session, scope: Scope | None = None) -> Viewer:
    viewer = current_viewer(request, session)
    if viewer is None:
        raise NeedLogin()
    if scope is not None:
        require_scope(viewer, scope)
    return viewer


def signed_in_to_change(request: Request, session: Session, form: FormData, scope: Scope) -> Viewer:
    """The viewer posting `form`: signed in, the form's CSRF token valid, then holding `scope`
    (in that order: a forged form is refused as forged, whoever it names)."""
    viewer = signed_in(request, session)
    check_csrf(request, viewer, form)
    require_scope(viewer, scope)
    return viewer


def require_scope(viewer: Viewer, scope: Scope) -> None:
    if not viewer.can(scope):
        raise PageError(
            403,
            "Not allowed",
            "This page is for organization admins. Ask an admin of your organization if you need it.",
            viewer,
        )


def check_csrf(request: Request, viewer: Viewer, form: FormData) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if not csrf_valid(settings_of(request).session_key, token, form.get("csrf_token")):
        raise PageError(
            403,
            "Request refused",
            "This form was missing its security token or it did not match your session. Reload the page and try again.",
            viewer,
        )


async def _form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=300)
    except Exception:  # malformed body, too many fields, a file upload
        raise PageError(400, "Bad request", "The form could not be read.") from None


FORM = Depends(_form)


async def _large_form(request: Request) -> FormData:
    # Forms with many checkboxes (a policy's sources and suggested values).
    try:
        return await request.form(max_files=0, max_fields=5000)
    except Exception:
        raise PageError(400, "Bad request", "The form could not be read.") from None


LARGE_FORM = Depends(_large_form)


async def _upload_form(request: Request) -> FormData:
    # One file part and a few text fields (multipart/form-data).
    try:
        return await request.form(max_files=1, max_fields=20)
    except Exception:
        raise PageError(400, "Bad request", "The upload could not be read.") from None


UPLOAD_FORM = Depends(_upload_form)


@contextmanager
def as_page(viewer: Viewer, title: str | None = None) -> Iterator[None]:
    """Service errors raised inside become error pages that keep the signed-in navigation."""
    try:
        yield
    except TidegateError as exc:
        raise PageError(exc.status, title or TITLES.get(exc.status, "Request refused"), exc.message, viewer) from None


def text(form: FormData, name: str, max_length: int = 2000) -> str:
    """A single text field, stripped; a file or an over-long value is a 400 page."""
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_length:
        raise PageError(400, "Bad request", f"The field {name!r} is too long or not text.")
    if "\x00" in value:  # PostgreSQL refuses NUL in text, even as a query parameter
        raise PageError(400, "Bad request", f"The field {name!r} contains a NUL character.")
    return value.strip()


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def required_text(form: FormData, name: str, message: str) -> str:
    """A short form field that must be filled (an id chosen from a list)."""
    value = text(form, name, 200)
    if not value:
        raise InvalidRequest("missing_field", message)
    return value


@dataclass(frozen=True)
class CursorPage:
    """One page of a list paged by id both ways: its rows, and the cursors of the pages after
    (`next_after`) and before it (`previous_before`), None at either end."""

    rows: list[Any]
    next_after: str | None
    previous_before: str | None

    @classmethod
    def of(cls, fetched: Sequence[Any], size: int, *, after: str | None, before: str | None) -> CursorPage:
        """`fetched` as a list function returns it: up to size+1 rows, by id, after `after`
        or just before `before` (the extra row says there is more that way)."""
        more = len(fetched) > size
        if before and not after:
            rows = list(fetched[-size:]) if more else list(fetched)
            return cls(rows, rows[-1].id if rows else None, rows[0].id if more and rows else None)
        rows = list(fetched[:size])
        return cls(rows, rows[-1].id if more and rows else None, rows[0].id if after and rows else None)


class FieldRefusal(InvalidRequest):
    """A form's own refusal of one of its fields (`field`, as the form names it, e.g. the
    second row filter's "values_1"), already in plain words."""

    def __init__(self, field: str, code: str, message: str):
        super().__init__(code, message)
        self.field = field


def field_error(exc: TidegateError, fields: dict[str, str], plain: dict[str, str] | None = None) -> dict[str, str]:
    """A refusal as a form shows it: the field it is about (`fields`: code -> field name; ""
    above the form when none), in plain words where the API's message would name wire fields
    (`plain`: code -> message)."""
    if isinstance(exc, FieldRefusal):
        return {"field": exc.field, "message": exc.message}
    return {"field": fields.get(exc.code, ""), "message": (plain or {}).get(exc.code, exc.message)}
