"""Settings > People (admins): the organization's users and roles.

Adding a user (with an initial password), changing a role and deactivating go through
tidegate.orgs.service, with the same rules and audit events as /api/v1/users. A role
change or a deactivation applies to that person's next page and next API request.
"""

from __future__ import annotations

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData

from tidegate.core.scopes import ROLES, Scope
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import request_context
from tidegate.orgs import service
from tidegate.orgs.models import User
from tidegate.web.common import FORM, PageError, db, field_error, router, signed_in, signed_in_to_change, text
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer

READ = Scope.USERS_READ
WRITE = Scope.USERS_WRITE


def UserId():
    return Path(max_length=100)


NOTICES = {
    "added": "The user was added. Give them their initial password through a channel you trust.",
    "role_changed": "The role was changed. It applies from their next request.",
    "deactivated": "The user was deactivated: they are signed out and every key they created stops working.",
}


def people_context(session, viewer: Viewer) -> dict:
    users = list(
        session.scalars(select(User).where(User.org_id == viewer.org.id).order_by(User.is_active.desc(), User.email))
    )
    return {
        "title": "People",
        "users": users,
        "roles": ROLES,
        "can_write": viewer.can(WRITE),
        "new_user": {"email": "", "role": "member", "first_name": "", "last_name": ""},
    }


def _people_error(request: Request, exc: TidegateError, **extra) -> object:
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = people_context(session, viewer)
    return page(
        request, "people.html", {**context, **extra}, viewer=viewer, status=exc.status, current="/settings/people"
    )


def _user(session, viewer: Viewer, user_id: str) -> User:
    try:
        return service.get_user(session, viewer.org.id, user_id, include_inactive=True)
    except TidegateError as exc:
        raise PageError(exc.status, "User not found", exc.message, viewer) from None


@router.get("/settings/people")
def people_page(request: Request, notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = people_context(session, viewer)
    return page(request, "people.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


# The add-user form: which field a refusal is about, and plain words for the API's.
ADD_USER_FIELDS = {
    "invalid_email": "email",
    "missing_field": "email",
    "user_exists": "email",
    "weak_password": "password",
    "invalid_role": "role",
}
ADD_USER_WORDS = {
    "missing_field": "Enter their email address.",
    "invalid_email": "That is not an email address: check it and try again.",
    "user_exists": "Someone with this email address is already in the organization.",
    "invalid_role": "Choose Admin or Member.",
}


@router.post("/settings/people")
def add_person(request: Request, form: FormData = FORM):
    values = {
        "email": text(form, "email", 320),
        "role": text(form, "role", 20),
        "first_name": text(form, "first_name", 200),
        "last_name": text(form, "last_name", 200),
    }
    password = form.get("password")
    if not isinstance(password, str) or len(password) > 1000:
        raise PageError(400, "Bad request", "The password field is missing or too long.")
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            if not password:
                raise InvalidRequest("weak_password", "Give the new user an initial password.")
            service.create_user(
                session,
                viewer.principal,
                viewer.org.id,
                email=values["email"],
                role=values["role"],
                first_name=values["first_name"] or None,
                last_name=values["last_name"] or None,
                password=password,
                context=request_context(request),
            )
    except TidegateError as exc:
        return _people_error(request, exc, add_error=field_error(exc, ADD_USER_FIELDS, ADD_USER_WORDS), new_user=values)
    return redirect("/settings/people?notice=added")


# A person's row controls (role, deactivate): refusals in plain words, shown in that row.
ROW_WORDS = {
    "invalid_role": "Choose Admin or Member.",
    "last_admin": "This is the only active admin: make someone else an admin first.",
    "user_inactive": "This person is deactivated: their role cannot change.",
    "cannot_deactivate_self": "You cannot deactivate yourself: ask another admin.",
}


def _row_error(request: Request, exc: TidegateError, user_id: str, control: str, value: str = ""):
    """The people page again, the refusal at `control` ("role" or "deactivate") in the row of
    `user_id` (above the table when that person is not in it), with the `value` chosen kept."""
    message = ROW_WORDS.get(exc.code, exc.message)
    return _people_error(
        request, exc, row_error={"user_id": user_id, "field": control, "message": message, "value": value}
    )


@router.post("/settings/people/{user_id}/role")
def change_role(request: Request, user_id: str = UserId(), form: FormData = FORM):
    role = text(form, "role", 20)
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            user = _user(session, viewer, user_id)
            if not user.is_active:
                raise InvalidRequest("user_inactive", f"{user.email} is deactivated.")
            service.update_user(session, viewer.principal, user, role=role, context=request_context(request))
    except TidegateError as exc:
        return _row_error(request, exc, user_id, "role", role)
    return redirect("/settings/people?notice=role_changed")


@router.get("/settings/people/{user_id}/deactivate")
def deactivate_confirm(request: Request, user_id: str = UserId()):
    with db(request) as session:
        viewer = signed_in(request, session, WRITE)
        user = _user(session, viewer, user_id)
    return page(
        request,
        "person_deactivate.html",
        {"title": "Deactivate user", "person": user},
        viewer=viewer,
        current="/settings/people",
    )


@router.post("/settings/people/{user_id}/deactivate")
def deactivate(request: Request, user_id: str = UserId(), form: FormData = FORM):
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            user = _user(session, viewer, user_id)
            if user.id == viewer.user.id:
                raise InvalidRequest("cannot_deactivate_self", "You cannot deactivate yourself; ask another admin.")
            service.deactivate_user(session, viewer.principal, user, context=request_context(request))
    except TidegateError as exc:
        return _row_error(request, exc, user_id, "deactivate")
    return redirect("/settings/people?notice=deactivated")
