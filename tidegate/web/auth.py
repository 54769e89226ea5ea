"""Signing in and out.

Email + password (argon2id). The same email may belong to users in several
organizations: when the password matches more than one of them, the person picks the
organization next (the choice is carried by a short-lived token signed with the server's
session key and bound to this browser's sign-in cookie). Failed attempts lock out per
(organization, email, client IP) and slow down per account and per IP (see throttle.py).
"""

from __future__ import annotations

import secrets
import time
from functools import lru_cache

from fastapi import Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import Response

from tidegate.audit.record import record
from tidegate.core.principal import Principal
from tidegate.http import client_ip, request_context
from tidegate.orgs.models import Organization, User
from tidegate.orgs.passwords import hash_password, verify_password
from tidegate.web import throttle
from tidegate.web.common import FORM, PageError, current_viewer, db, is_https, router, settings_of
from tidegate.web.render import page, redirect
from tidegate.web.sessions import (
    LOGIN_COOKIE,
    LOGIN_COOKIE_TTL,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    csrf_token,
    csrf_valid,
    end_session,
    login_cookie_valid,
    new_login_cookie,
    sign,
    start_session,
)

HOME = "/settings/api-keys"
CHOICE_TTL = 300  # seconds to pick an organization after the password matched
NOTICES = {"signed_out": "You have signed out."}
FAILED = "Email or password is incorrect."


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def safe_next(value: str | None) -> str:
    """Only a path on this site; anything else (//evil, https://, \\) goes home."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 33 for c in value)
        or value.startswith("/login")
        or len(value) > 2000
    ):
        return HOME
    return value


def _login_cookie(request: Request) -> str:
    """This browser's pre-sign-in cookie if this server issued it, else a new one (never the
    client's own value: a cookie planted by another site must not become valid)."""
    value = request.cookies.get(LOGIN_COOKIE)
    key = settings_of(request).session_key
    return value if value is not None and login_cookie_valid(key, value) else new_login_cookie(key)


def _set_login_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE, value, max_age=LOGIN_COOKIE_TTL, path="/", secure=is_https(request), httponly=True, samesite="lax"
    )


def _login_form(
    request: Request,
    *,
    status: int = 200,
    error: str | None = None,
    email: str = "",
    next_url: str = HOME,
    notice: str | None = None,
    headers: dict | None = None,
) -> Response:
    pre = _login_cookie(request)
    response = page(
        request,
        "login.html",
        {
            "title": "Sign in",
            "csrf": csrf_token(settings_of(request).session_key, pre, "login"),
            "error": error,
            "email": email,
            "next": next_url,
            "notice": notice,
        },
        viewer=None,
        status=status,
    )
    _set_login_cookie(response, request, pre)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def next_of(form: FormData) -> str | None:
    """The form's `next` field, if it is text (a file part is not)."""
    value = form.get("next")
    return value if isinstance(value, str) else None


def _check_login_csrf(request: Request, form: FormData) -> str:
    pre = request.cookies.get(LOGIN_COOKIE)
    key = settings_of(request).session_key
    if pre is None or not login_cookie_valid(key, pre) or not csrf_valid(key, pre, form.get("csrf_token"), "login"):
        raise PageError(
            403,
            "Sign-in form expired",
            "The sign-in form was missing its security token or it did not match this browser. "
            "Reload the sign-in page and try again.",
        )
    return pre


def _signed_in_response(request: Request, session, user: User, next_url: str) -> Response:
    settings = settings_of(request)
    # A fresh token at every sign-in (no fixation); an earlier session of this browser ends.
    end_session(session, settings.session_key, request.cookies.get(SESSION_COOKIE))
    token = start_session(
        session, settings.session_key, user, ip=client_ip(request), user_agent=request.headers.get("user-agent")
    )
    principal = Principal.for_user(user.org_id, user.id, user.role)
    record(
        session,
        principal,
        "user.signed_in",
        org_id=user.org_id,
        target_type="user",
        target_id=user.id,
        details={"via": "web"},
        context=request_context(request),
    )
    response = redirect(safe_next(next_url))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=is_https(request),
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


def _paused_form(request: Request, wait: int, email: str, next_url: str) -> Response:
    # The same words for an unknown email as for a real account: nothing to learn from it.
    return _login_form(
        request,
        status=429,
        email=email,
        next_url=next_url,
        headers={"Retry-After": str(wait)},
        error=f"Too many failed sign-in attempts for this account or from your network. "
        f"For your security, sign-in is paused: try again in {_wait_text(wait)}.",
    )


def _wait_text(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"


@router.get("/")
def home(request: Request):
    with db(request) as session:
        viewer = current_viewer(request, session)
    return redirect(HOME if viewer else "/login")


@router.get("/login")
def login_page(
    request: Request, next: str | None = Query(None, max_length=2000), notice: str | None = Query(None, max_length=40)
):
    with db(request) as session:
        viewer = current_viewer(request, session)
    if viewer is not None:
        return redirect(safe_next(next))
    return _login_form(request, next_url=safe_next(next), notice=NOTICES.get(notice or ""))


@router.post("/login")
def login(request: Request, form: FormData = FORM):
    settings = settings_of(request)
    pre = _check_login_csrf(request, form)
    raw_email = form.get("email")
    password = form.get("password")
    if (
        not isinstance(raw_email, str)
        or not isinstance(password, str)
        or len(raw_email) > 320
        or len(password) > 1000
        or "\x00" in raw_email
    ):  # no email holds NUL, and PostgreSQL cannot even look one up (500)
        return _login_form(request, status=400, error="Enter your email and password.")
    email = raw_email.strip().lower()
    next_url = safe_next(next_of(form))
    if not email or not password:
        return _login_form(request, status=400, error="Enter your email and password.", email=email, next_url=next_url)
    signin_throttle: throttle.SigninThrottle = request.app.state.signin_throttle
    with db(request) as session:
        users = list(
            session.scalars(
                select(User)
                .where(
                    User.email == email,
                    User.is_active.is_(True),
                    User.password_hash.is_not(None),
                )
                .order_by(User.id)
            )
        )
        # The organization is chosen after the password: the attempt counts against every
        # organization this email has a user in (see throttle.py).
        try:
            attempt = signin_throttle.begin([u.org_id for u in users], email, client_ip(request))
        except throttle.SignInPaused as paused:
            return _paused_form(request, paused.wait, email, next_url)
        except throttle.ThrottleUnavailable:
            return _login_form(
                request,
                status=503,
                email=email,
                next_url=next_url,
                headers={"Retry-After": "5"},
                error="Sign-in is temporarily unavailable. Try again shortly.",
            )
        candidates = [u for u in users if u.org_id in attempt.open_orgs]
        if not candidates:
            verify_password(_dummy_hash(), password)  # take as long as a real check
        matched = [u for u in candidates if verify_password(u.password_hash, password)]
        if matched:
            signin_throttle.succeeded(attempt, [u.org_id for u in matched])
        if len(matched) == 1:
            return _signed_in_response(request, session, matched[0], next_url)
        if matched:
            orgs = {
                o.id: o
                for o in session.scalars(select(Organization).where(Organization.id.in_([u.org_id for u in matched])))
            }
            choices = sorted(((u.id, orgs[u.org_id].name) for u in matched), key=lambda c: c[1].lower())
    if matched:
        payload = f"{'.'.join(u for u, _ in choices)}.{int(time.time()) + CHOICE_TTL}"
        choice_token = f"{payload}~{sign(settings.session_key, 'org-choice', pre + '|' + payload)}"
        return page(
            request,
            "choose_org.html",
            {
                "title": "Choose an organization",
                "choices": choices,
                "choice_token": choice_token,
                "csrf": csrf_token(settings.session_key, pre, "login"),
                "next": next_url,
                "email": email,
            },
            viewer=None,
        )
    if attempt.closed_wait:
        # The password may have been right for an organization paused for this attempt: say so.
        return _paused_form(request, attempt.closed_wait, email, next_url)
    return _login_form(request, status=401, error=FAILED, email=email, next_url=next_url)


@router.post("/login/organization")
def choose_organization(request: Request, form: FormData = FORM):
    settings = settings_of(request)
    pre = _check_login_csrf(request, form)
    token = form.get("choice_token")
    user_id = form.get("user_id")
    expired = PageError(400, "Sign-in expired", "Choosing the organization took too long. Sign in again.")
    if not isinstance(token, str) or "~" not in token or not isinstance(user_id, str):
        raise expired
    payload, _, signature = token.rpartition("~")
    if not secrets.compare_digest(sign(settings.session_key, "org-choice", pre + "|" + payload), signature):
        raise expired
    *user_ids, deadline = payload.split(".")
    if not deadline.isdigit() or int(deadline) < time.time() or user_id not in user_ids:
        raise expired
    next_url = safe_next(next_of(form))
    with db(request) as session:
        user = session.get(User, user_id)
        if user is None or not user.is_active:
            raise expired
        return _signed_in_response(request, session, user, next_url)


@router.post("/logout")
def logout(request: Request, form: FormData = FORM):
    settings = settings_of(request)
    with db(request) as session:
        viewer = current_viewer(request, session)
        if viewer is not None:
            if not csrf_valid(settings.session_key, request.cookies.get(SESSION_COOKIE), form.get("csrf_token")):
                raise PageError(
                    403,
                    "Request refused",
                    "The sign-out form was missing its security token. Reload the page and try again.",
                    viewer,
                )
            end_session(session, settings.session_key, request.cookies.get(SESSION_COOKIE))
            record(
                session,
                viewer.principal,
                "user.signed_out",
                org_id=viewer.org.id,
                target_type="user",
                target_id=viewer.user.id,
                details={"via": "web"},
                context=request_context(request),
            )
    response = redirect("/login?notice=signed_out")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
