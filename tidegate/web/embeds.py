"""Settings > Security > Embeds (admins): the embed sessions switch, the allowed origins,
the embed UI config, and the live embed sessions with revoke.

Every change goes through the same services as `PATCH /org/settings` and
`DELETE /embed/sessions/{id}`, so it is validated with the same messages and audited alike
(`org.settings_updated`, `embed_session.revoked`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData

from tidegate.core.scopes import Scope
from tidegate.credentials import embed_sessions
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.http import request_context
from tidegate.orgs import embeds, service
from tidegate.orgs.models import User
from tidegate.web.common import (
    FORM,
    PageError,
    as_page,
    db,
    field_error,
    router,
    settings_of,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer

BASE = "/settings/security/embeds"
READ = Scope.ORG_READ
WRITE = Scope.ORG_WRITE
SESSIONS_SHOWN = 200
UI_CONFIG_FIELD_LENGTH = embeds.MAX_UI_CONFIG_BYTES + 1000  # room for whitespace; the service checks the size
NOTICES = {
    "switched_on": "Embed sessions are on.",
    "switched_off": "Embed sessions are off: creating or using one is refused from now on.",
    "origin_added": "The origin was added. New embed sessions must name one of the allowed origins.",
    "origin_present": "That origin was already allowed.",
    "origin_removed": "The origin was removed. Sessions bound to it keep working until they expire or are revoked.",
    "ui_config_saved": "The embed UI config was saved.",
    "revoked": "The embed session was revoked: its token is refused from now on.",
}


# The origin and UI config forms: which field a refusal is about, and plain words where the
# API's message names wire fields (embed_ui_config.theme). A UI config group's own refusals
# are worded here (`_ui_config`) under the code `invalid_<group>`.
FIELD_OF_CODE = {
    "invalid_origin": "origin",
    "too_many_origins": "origin",
    **{f"invalid_{group}": group for group in embeds.UI_CONFIG_GROUPS},
}
PLAIN_WORDS = {
    "invalid_origin": "That is not a web origin: enter scheme://host[:port] without a path, e.g. https://app.example.com.",
    "invalid_ui_config": (
        f"The three settings together are limited to {embeds.MAX_UI_CONFIG_BYTES // 1024} KB: shorten them."
    ),
}


def SessionId():
    return Path(max_length=40)


def _live_sessions(session, org_id: str) -> tuple[list[dict[str, Any]], bool]:
    rows, has_more = embed_sessions.list_sessions(session, org_id, limit=SESSIONS_SHOWN)
    user_ids = {r.user_id for r in rows}
    emails = dict(session.execute(select(User.id, User.email).where(User.id.in_(user_ids))).all()) if rows else {}
    # The token's listed prefix only: the secret is never stored, let alone shown.
    items = [
        {
            "id": r.id,
            "prefix": r.token_prefix,
            "user": emails.get(r.user_id, r.user_id),
            "origin": r.origin,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
        }
        for r in rows
    ]
    return items, has_more


def _context(session, viewer: Viewer, *, typed: dict | None = None, **errors: dict | None) -> dict:
    org = service.get_org(session, viewer.org.id)
    config = embeds.ui_config_of(org)
    typed = typed or {}
    sessions, more = _live_sessions(session, org.id)
    return {
        "title": "Embeds",
        "base": BASE,
        "embeds_enabled": bool(org.embeds_enabled),
        "origins": list(org.embed_allowed_origins or []),
        "new_origin": typed.get("origin", ""),
        "ui_config": {
            group: typed.get(group, json.dumps(config[group], indent=2, sort_keys=True))
            for group in embeds.UI_CONFIG_GROUPS
        },
        "sessions": sessions,
        "more_sessions": more,
        "can_write": viewer.can(WRITE),
        **errors,
    }


@router.get(BASE)
def embeds_page(request: Request, notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = _context(session, viewer)
    return page(request, "embeds.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


def _change(request: Request, form: FormData, change, *, error_field: str, typed: dict | None = None):
    """Run `change(session, viewer, org, context)` as an admin; a refused change saves nothing
    and shows the page again, as typed, with why next to the field (or the form), with its status."""
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            service.lock_organization(session, viewer.org.id)  # read-modify-write of the origin list
            org = service.get_org(session, viewer.org.id)
            session.refresh(org)
            notice = change(session, viewer, org, request_context(request))
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            refusal = field_error(exc, FIELD_OF_CODE, PLAIN_WORDS)
            context = _context(session, viewer, typed=typed, **{error_field: refusal})
        return page(request, "embeds.html", context, viewer=viewer, status=exc.status, current=BASE)
    return redirect(f"{BASE}?notice={notice}")


@router.post(BASE + "/switch")
def save_switch(request: Request, form: FormData = FORM):
    enabled = form.get("embeds_enabled") == "on"

    def change(session, viewer, org, context):
        service.update_settings(
            session, viewer.principal, org, api_key_creation_enabled=None, embeds_enabled=enabled, context=context
        )
        return "switched_on" if enabled else "switched_off"

    return _change(request, form, change, error_field="switch_error")


@router.post(BASE + "/origins")
def add_origin(request: Request, form: FormData = FORM):
    typed = text(form, "origin", embeds.MAX_ORIGIN_LENGTH + 100)

    def change(session, viewer, org, context):
        current = list(org.embed_allowed_origins or [])
        if embeds.normalize_origin(typed) in current:
            return "origin_present"
        if len(current) >= embeds.MAX_ALLOWED_ORIGINS:
            raise InvalidRequest(
                "too_many_origins",
                f"The list already holds {embeds.MAX_ALLOWED_ORIGINS} origins: remove one before adding another.",
            )
        service.update_settings(
            session,
            viewer.principal,
            org,
            api_key_creation_enabled=None,
            embed_allowed_origins=[*current, typed],
            context=context,
        )
        return "origin_added"

    return _change(request, form, change, error_field="origin_error", typed={"origin": typed})


@router.post(BASE + "/origins/remove")
def remove_origin(request: Request, form: FormData = FORM):
    origin = text(form, "origin", embeds.MAX_ORIGIN_LENGTH + 100)

    def change(session, viewer, org, context):
        current = list(org.embed_allowed_origins or [])
        if origin not in current:
            raise PageError(404, "Not found", "That origin is not in the allowed list.", viewer)
        remaining = [o for o in current if o != origin]
        service.update_settings(
            session,
            viewer.principal,
            org,
            api_key_creation_enabled=None,
            embed_allowed_origins=remaining,
            context=context,
        )
        return "origin_removed"

    return _change(request, form, change, error_field="origin_error")


def _ui_config(typed: dict[str, str]) -> dict[str, Any]:
    """The three text areas as JSON (an empty one is `{}`), each checked on its own so that a
    refusal names its text area; the service checks them together (their size) again."""
    config: dict[str, Any] = {}
    for group, value in typed.items():
        code, label = f"invalid_{group}", group.capitalize()
        too_deep = f"{label} is nested too deeply: at most {embeds.MAX_UI_CONFIG_DEPTH} levels."
        try:
            parsed = json.loads(value) if value else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                code, f"{label} is not valid JSON ({exc.msg}, line {exc.lineno}). Leave it empty for none."
            ) from None
        except RecursionError:  # thousands of brackets: refused before the depth check can run
            raise InvalidRequest(code, too_deep) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(code, f'{label} must be a JSON object in braces, e.g. {{"key": "value"}}.')
        if len(json.dumps(parsed, separators=(",", ":"))) <= embeds.MAX_UI_CONFIG_BYTES:
            try:
                embeds.check_ui_config({group: parsed})
            except InvalidRequest:  # an object of allowed size refused on its own: too deep
                raise InvalidRequest(code, too_deep) from None
        config[group] = parsed
    return config


@router.post(BASE + "/ui-config")
def save_ui_config(request: Request, form: FormData = FORM):
    typed = {group: text(form, group, UI_CONFIG_FIELD_LENGTH) for group in embeds.UI_CONFIG_GROUPS}

    def change(session, viewer, org, context):
        service.update_settings(
            session,
            viewer.principal,
            org,
            api_key_creation_enabled=None,
            embed_ui_config=_ui_config(typed),
            context=context,
        )
        return "ui_config_saved"

    return _change(request, form, change, error_field="ui_config_error", typed=typed)


def _session(request: Request, session, viewer: Viewer, session_id: str):
    with as_page(viewer, "Embed session not found"):
        if not session_id.startswith("ses_"):  # only ids here, never a token in an address
            raise PageError(404, "Embed session not found", "No such embed session.", viewer)
        return embed_sessions.find_session(session, settings_of(request).pepper, viewer.org.id, session_id)


@router.get(BASE + "/sessions/{session_id}/revoke")
def revoke_confirm(request: Request, session_id: str = SessionId()):
    with db(request) as session:
        viewer = signed_in(request, session, WRITE)
        row = _session(request, session, viewer, session_id)
        user = session.get(User, row.user_id)
        context = {
            "title": "Revoke embed session",
            "heading": f"Revoke the embed session {row.token_prefix}… of {user.email if user else row.user_id}?",
            "message": "Its token is refused from the next request. This cannot be undone.",
            "action": f"{BASE}/sessions/{row.id}/revoke",
            "button": "Revoke session",
            "back": BASE,
        }
    return page(request, "confirm.html", context, viewer=viewer, current=BASE)


@router.post(BASE + "/sessions/{session_id}/revoke")
def revoke(request: Request, session_id: str = SessionId(), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, WRITE)
        row = _session(request, session, viewer, session_id)
        embed_sessions.revoke_session(session, viewer.principal, row, context=request_context(request))
    return redirect(f"{BASE}?notice=revoked")
