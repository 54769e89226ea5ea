"""Settings > Security > Groups (admins): create, rename, delete; members; policies.

A group's members inherit every policy assigned to it. Every change goes through
`tidegate.access.policies`, audited like its /api/v1/access/groups twin.
"""

from __future__ import annotations

from fastapi import Path, Query, Request
from sqlalchemy import select
from starlette.datastructures import FormData

from tidegate.access import policies as service
from tidegate.access.models import Group, Policy
from tidegate.access.policies.validation import MAX_DESCRIPTION, MAX_NAME
from tidegate.errors import TidegateError
from tidegate.http import request_context
from tidegate.orgs.models import User
from tidegate.web.common import (
    FORM,
    as_page,
    db,
    field_error,
    required_text,
    router,
    signed_in,
    signed_in_to_change,
    text,
)
from tidegate.web.policies import BASE as POLICIES
from tidegate.web.policies import READ, WRITE
from tidegate.web.render import page, redirect
from tidegate.web.sessions import Viewer

BASE = "/settings/security/groups"
LIST_LIMIT = 200

# The name and description form (new group, rename): which field a refusal is about, and
# plain words for the API's.
FIELD_OF_CODE = {"invalid_name": "name", "group_exists": "name", "invalid_description": "description"}
PLAIN_WORDS = {
    "invalid_name": f"Give the group a name of 1 to {MAX_NAME} characters (letters, digits, spaces, punctuation).",
    "group_exists": "A group with this name already exists: choose a different name.",
    "invalid_description": f"Keep the description to at most {MAX_DESCRIPTION:,} characters.",
}
NOTICES = {
    "created": "The group was created. Add its members and policies below.",
    "saved": "The group was saved.",
    "deleted": "The group was deleted: its members lost the policies they had only through it.",
    "member_added": "The person was added. The group's policies apply to them from their next request.",
    "member_removed": "The person was removed from the group.",
    "policy_assigned": "The policy was assigned to the group.",
    "policy_removed": "The policy was removed from the group.",
}


def GroupId():
    return Path(max_length=100)


def _group(session, viewer: Viewer, group_id: str) -> Group:
    with as_page(viewer, "Group not found"):
        return service.get_group(session, viewer.org.id, group_id)


def _policy_names(session, org_id: str) -> dict[str, str]:
    return dict(
        session.execute(select(Policy.id, Policy.name).where(Policy.org_id == org_id).order_by(Policy.name)).all()
    )


def groups_context(session, viewer: Viewer, new_group: dict | None = None) -> dict:
    rows = service.list_groups(session, viewer.org.id, limit=LIST_LIMIT)[:LIST_LIMIT]
    names = _policy_names(session, viewer.org.id)
    items = [
        {
            "id": g.id,
            "name": g.name,
            "description": g.description,
            "members": len(service.group_member_ids(session, g.id)),
            "policies": [names.get(p, p) for p in service.group_policy_ids(session, g.id)],
        }
        for g in sorted(rows, key=lambda g: g.name.lower())
    ]
    return {
        "title": "Groups",
        "groups": items,
        "can_write": viewer.can(WRITE),
        "new_group": new_group or {"name": "", "description": ""},
    }


@router.get(BASE)
def groups_page(request: Request, notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = groups_context(session, viewer)
    return page(request, "groups.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


@router.post(BASE)
def create_group(request: Request, form: FormData = FORM):
    values = {"name": text(form, "name", 300), "description": text(form, "description", 5000)}
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            group = service.create_group(
                session,
                viewer.principal,
                viewer.org.id,
                name=values["name"],
                description=values["description"] or None,
                context=request_context(request),
            )
            group_id = group.id
    except TidegateError as exc:
        with db(request) as session:
            viewer = signed_in(request, session, READ)
            context = groups_context(session, viewer, values)
        return page(
            request,
            "groups.html",
            {**context, "create_error": field_error(exc, FIELD_OF_CODE, PLAIN_WORDS)},
            viewer=viewer,
            status=exc.status,
            current=BASE,
        )
    return redirect(f"{BASE}/{group_id}?notice=created")


def group_context(session, viewer: Viewer, group: Group, form: dict | None = None) -> dict:
    member_ids = service.group_member_ids(session, group.id)
    users = list(
        session.scalars(select(User).where(User.org_id == viewer.org.id, User.is_active.is_(True)).order_by(User.email))
    )
    emails = {u.id: u.email for u in users}
    policy_ids = service.group_policy_ids(session, group.id)
    names = _policy_names(session, viewer.org.id)
    return {
        "title": group.name,
        "group": group,
        "can_write": viewer.can(WRITE),
        "form": form or {"name": group.name, "description": group.description or ""},
        "members": sorted(({"id": u, "email": emails.get(u, u)} for u in member_ids), key=lambda m: m["email"]),
        "candidates": [u for u in users if u.id not in set(member_ids)],
        "policies": sorted(({"id": p, "name": names.get(p, p)} for p in policy_ids), key=lambda p: p["name"].lower()),
        "policy_candidates": [{"id": p, "name": n} for p, n in names.items() if p not in set(policy_ids)],
        "policies_base": POLICIES,
    }


@router.get(BASE + "/{group_id}")
def group_page(request: Request, group_id: str = GroupId(), notice: str | None = Query(None, max_length=40)):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = group_context(session, viewer, _group(session, viewer, group_id))
    return page(request, "group.html", {**context, "notice": NOTICES.get(notice or "")}, viewer=viewer)


def _group_error(request: Request, group_id: str, exc: TidegateError, form: dict | None = None, **extra):
    with db(request) as session:
        viewer = signed_in(request, session, READ)
        context = group_context(session, viewer, _group(session, viewer, group_id), form)
    shown = {f"member-{m['id']}" for m in context["members"]} | {f"policy-{p['id']}" for p in context["policies"]}
    row_error = extra.get("row_error")
    if row_error and row_error["row"] not in shown:  # that row is gone: say it above the page
        extra = {**extra, "row_error": None, "page_error": row_error["message"]}
    return page(
        request, "group.html", {**context, **extra}, viewer=viewer, status=exc.status, current=f"{BASE}/{group_id}"
    )


@router.post(BASE + "/{group_id}")
def rename_group(request: Request, group_id: str = GroupId(), form: FormData = FORM):
    values = {"name": text(form, "name", 300), "description": text(form, "description", 5000)}
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            group = _group(session, viewer, group_id)
            service.update_group(
                session,
                viewer.principal,
                group,
                name=values["name"],
                description=values["description"] or None,
                context=request_context(request),
            )
    except TidegateError as exc:
        return _group_error(request, group_id, exc, values, form_error=field_error(exc, FIELD_OF_CODE, PLAIN_WORDS))
    return redirect(f"{BASE}/{group_id}?notice=saved")


@router.get(BASE + "/{group_id}/delete")
def delete_group_confirm(request: Request, group_id: str = GroupId()):
    with db(request) as session:
        viewer = signed_in(request, session, WRITE)
        group = _group(session, viewer, group_id)
        context = {
            "title": "Delete group",
            "heading": f"Delete the group {group.name}?",
            "message": "Its members lose the policies they had only through this group, from their next request.",
            "action": f"{BASE}/{group.id}/delete",
            "button": "Delete group",
            "back": f"{BASE}/{group.id}",
        }
    return page(request, "confirm.html", context, viewer=viewer)


@router.post(BASE + "/{group_id}/delete")
def delete_group(request: Request, group_id: str = GroupId(), form: FormData = FORM):
    with db(request) as session:
        viewer = signed_in_to_change(request, session, form, WRITE)
        group = _group(session, viewer, group_id)
        service.delete_group(session, viewer.principal, group, context=request_context(request))
    return redirect(f"{BASE}?notice=deleted")


# The add-member and assign-policy forms: refusals about the one chosen, in plain words.
CHOICE_CODES = ("missing_field", "invalid_user_ids", "user_not_found", "invalid_policy_ids", "policy_not_found")
CHOICE_WORDS = {
    "invalid_user_ids": "That person is not an active member of the organization: choose someone from the list.",
    "user_not_found": "That person is not an active member of the organization: choose someone from the list.",
    "invalid_policy_ids": "That access policy no longer exists: choose one from the list.",
    "policy_not_found": "That access policy no longer exists: choose one from the list.",
}


def _change(
    request: Request,
    group_id: str,
    form: FormData,
    change,
    notice: str,
    anchor: str,
    field_name: str | None = None,
    row: str | None = None,
):
    """Run one change of the group; its page again, with a notice or the error (at the form's
    `field_name` when it is about the one chosen; next to the button of `row` for a removal)."""
    try:
        with db(request) as session:
            viewer = signed_in_to_change(request, session, form, WRITE)
            group = _group(session, viewer, group_id)
            change(session, viewer, group, request_context(request))
    except TidegateError as exc:
        if field_name is not None and exc.code in CHOICE_CODES:
            refusal = field_error(exc, dict.fromkeys(CHOICE_CODES, field_name), CHOICE_WORDS)
            return _group_error(request, group_id, exc, choice_error=refusal)
        if row is not None:
            return _group_error(request, group_id, exc, row_error={"row": row, "message": exc.message})
        return _group_error(request, group_id, exc, page_error=exc.message)
    return redirect(f"{BASE}/{group_id}?notice={notice}#{anchor}")


@router.post(BASE + "/{group_id}/members")
def add_member(request: Request, group_id: str = GroupId(), form: FormData = FORM):
    def change(session, viewer, group, context):
        user_id = required_text(form, "user_id", "Choose a person to add.")
        service.add_group_members(session, viewer.principal, group, [user_id], context=context)

    return _change(request, group_id, form, change, "member_added", "members", "user_id")


@router.post(BASE + "/{group_id}/members/{user_id}/remove")
def remove_member(
    request: Request, group_id: str = GroupId(), user_id: str = Path(max_length=100), form: FormData = FORM
):
    def change(session, viewer, group, context):
        service.remove_group_member(session, viewer.principal, group, user_id, context=context)

    return _change(request, group_id, form, change, "member_removed", "members", row=f"member-{user_id}")


@router.post(BASE + "/{group_id}/policies")
def assign_policy(request: Request, group_id: str = GroupId(), form: FormData = FORM):
    def change(session, viewer, group, context):
        policy_id = required_text(form, "policy_id", "Choose a policy to assign.")
        service.assign_group_policies(session, viewer.principal, group, [policy_id], context=context)

    return _change(request, group_id, form, change, "policy_assigned", "policies", "policy_id")


@router.post(BASE + "/{group_id}/policies/{policy_id}/remove")
def remove_policy(
    request: Request, group_id: str = GroupId(), policy_id: str = Path(max_length=100), form: FormData = FORM
):
    def change(session, viewer, group, context):
        service.remove_group_policy(session, viewer.principal, group, policy_id, context=context)

    return _change(request, group_id, form, change, "policy_removed", "policies", row=f"policy-{policy_id}")
