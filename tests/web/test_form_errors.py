"""Form refusals sit at their field, over plain HTTP (no browser): the field is marked
`aria-invalid="true"` and `aria-describedby` names the message next to it, the message is in
plain words (no API field names), what was typed is kept, and nothing changed (issue 16)."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import Org
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.web.sessions import SESSION_COOKIE, start_session

API_FIELD_NAMES = ("rate_limit_per_minute", "max_keys_per_user", "unused_key_days", "grace_period", "_id")


def sign_in(client, org: Org, user_id: str) -> None:
    with session_scope(org.settings.database_url) as session:
        user = orgs.get_user(session, org.id, user_id)
        token = start_session(session, org.settings.session_key, user, ip=None, user_agent=None)
    client.cookies.set(SESSION_COOKIE, token)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def field_tag(page: str, name: str) -> str:
    """The opening tag of the (first) input, select or textarea named `name`."""
    match = re.search(rf'<(?:input|select|textarea)\b[^>]*\bname="{re.escape(name)}"[^>]*>', page)
    assert match, f"no field named {name}"
    return match.group(0)


def error_at(page: str, name: str) -> str:
    """The refusal shown at field `name`: the field is invalid and described by a message
    element that exists and is announced; returns the message's text."""
    tags = re.findall(rf'<(?:input|select|textarea)\b[^>]*\bname="{re.escape(name)}"[^>]*>', page)
    invalid = [t for t in tags if 'aria-invalid="true"' in t]
    assert len(invalid) == 1, tags
    tag = invalid[0]
    described = re.search(r'aria-describedby="([^"]+)"', tag)
    assert described, tag
    message_id = described.group(1).split()[0]
    message = re.search(rf'<(\w+)[^>]*\bid="{re.escape(message_id)}"[^>]*>(.*?)</\1>', page, re.S)
    assert message, f"no element #{message_id}"
    assert 'role="alert"' in message.group(0)
    text = html.unescape(re.sub(r"<[^>]+>", "", message.group(2))).strip()
    assert text and not any(name in text for name in API_FIELD_NAMES), text
    return text


def no_other_field_invalid(page: str, name: str) -> None:
    others = [t for t in re.findall(r"<(?:input|select|textarea)\b[^>]*>", page) if 'aria-invalid="true"' in t]
    assert len(others) == 1 and f'name="{name}"' in others[0], others


@pytest.mark.parametrize(
    ("field", "typed", "words"),
    [
        ("user_rate_limit_per_minute", "0", "requests per minute between 1 and 100,000,000"),
        ("user_rate_limit_per_minute", "lots", "requests per minute between 1 and 100,000,000"),
        ("max_keys_per_user", "100001", "number of keys between 1 and 100,000"),
        ("unused_key_days", "4000", "number of days between 1 and 3,650"),
    ],
)
def test_admin_controls_refusals_sit_at_their_field(client, org, field, typed, words):
    sign_in(client, org, org.admin_id)
    form = {
        "csrf_token": csrf_of(client.get("/settings/security").text),
        "api_key_creation_enabled": "on",
        "max_keys_per_user": "7",
        "user_rate_limit_per_minute": "500",
        "unused_key_days": "30",
        field: typed,
    }
    refused = client.post("/settings/security/admin-controls", data=form)
    assert refused.status_code == 400
    assert words in error_at(refused.text, field)
    no_other_field_invalid(refused.text, field)
    assert 'class="error"' not in refused.text  # not (also) at the top
    assert f'value="{typed}"' in field_tag(refused.text, field)  # kept as typed
    assert 'value="7"' in field_tag(refused.text, "max_keys_per_user") or field == "max_keys_per_user"
    with session_scope(org.settings.database_url) as session:  # nothing saved
        saved = orgs.get_org(session, org.id)
        assert (saved.max_keys_per_user, saved.user_rate_limit_per_minute) != (7, 500)


def test_a_refused_group_name_sits_at_the_name_field(client, org):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get("/settings/security/groups").text)
    made = client.post("/settings/security/groups", data={"csrf_token": token, "name": "EU sales"})
    assert made.status_code == 200  # (followed the redirect to the new group)
    taken = client.post(
        "/settings/security/groups", data={"csrf_token": token, "name": "EU sales", "description": "kept"}
    )
    assert taken.status_code == 409
    assert "A group with this name already exists" in error_at(taken.text, "name")
    no_other_field_invalid(taken.text, "name")
    assert 'value="kept"' in field_tag(taken.text, "description")
    blank = client.post("/settings/security/groups", data={"csrf_token": token, "name": "", "description": "x"})
    assert blank.status_code == 400 and "Give the group a name" in error_at(blank.text, "name")
    # Renaming to a taken name: refused at the field on the group's page, the typed name kept.
    other = client.post("/settings/security/groups", data={"csrf_token": token, "name": "US sales"})
    group_path = other.url.path
    renamed = client.post(group_path, data={"csrf_token": token, "name": "EU sales", "description": ""})
    assert renamed.status_code == 409
    assert "A group with this name already exists" in error_at(renamed.text, "name")
    assert 'value="EU sales"' in field_tag(renamed.text, "name")
    assert "<h1>US sales" in renamed.text or "US sales" in client.get(group_path).text  # unchanged
    assert client.get(group_path).text.count("EU sales") == 0


def test_embed_origin_and_ui_config_refusals_sit_at_their_field(client, org):
    sign_in(client, org, org.admin_id)
    page = "/settings/security/embeds"
    token = csrf_of(client.get(page).text)
    refused = client.post(page + "/origins", data={"csrf_token": token, "origin": "ftp://files.example.com"})
    assert refused.status_code == 400
    assert "That is not a web origin" in error_at(refused.text, "origin")
    assert 'value="ftp://files.example.com"' in field_tag(refused.text, "origin")
    assert 'aria-describedby="error-origin new-origin-help"' in field_tag(refused.text, "origin")
    typed = {"chrome": "", "theme": '{"primary": "#05f"}', "privacy": "[1]"}
    refused = client.post(page + "/ui-config", data={"csrf_token": token, **typed})
    assert refused.status_code == 400
    assert "Privacy must be a JSON object" in error_at(refused.text, "privacy")
    no_other_field_invalid(refused.text, "privacy")
    theme = re.search(r'<textarea[^>]*name="theme"[^>]*>(.*?)</textarea>', refused.text, re.S).group(1)
    assert html.unescape(theme) == '{"primary": "#05f"}'  # the other areas kept as typed
    deep = client.post(page + "/ui-config", data={"csrf_token": token, "theme": "[" * 3000 + "]" * 3000})
    assert deep.status_code == 400 and "Theme is nested too deeply" in error_at(deep.text, "theme")
    with session_scope(org.settings.database_url) as session:  # nothing saved
        saved = orgs.get_org(session, org.id)
        assert not saved.embed_allowed_origins and not saved.embed_ui_config


def test_a_rotation_without_a_grace_period_asks_for_it_at_the_choice(client, org):
    secret = org.key_for(org.admin_id, ["data:read"], name="to rotate")
    sign_in(client, org, org.admin_id)
    keys = client.get("/settings/api-keys").text
    key_id = re.search(r'<tr data-key-id="([^"]+)"', keys).group(1)
    for forged in ({}, {"grace_seconds": "99999999"}):
        refused = client.post(f"/settings/api-keys/{key_id}/rotate", data={"csrf_token": csrf_of(keys), **forged})
        assert refused.status_code == 400
        fieldset = re.search(r"<fieldset[^>]*>", refused.text).group(0)
        assert 'aria-invalid="true"' in fieldset and 'aria-describedby="error-grace_seconds"' in fieldset
        message = re.search(r'<small class="field-error" id="error-grace_seconds" role="alert">([^<]*)<', refused.text)
        assert message.group(1) == "Choose when the old key should stop working."
        choices = re.search(r"<fieldset.*?</fieldset>", refused.text, re.S).group(0)
        assert choices.count('name="grace_seconds"') == 4 and " checked" not in choices  # no choice made for them
    # Not rotated: the key still works and has no replacement.
    assert client.get("/api/v1/sources", headers=org.headers(secret)).status_code == 200
    assert "Replaced by" not in client.get("/settings/api-keys").text
    # Without a valid CSRF token, the same form is refused as forged (nothing about the key).
    forged = client.post(f"/settings/api-keys/{key_id}/rotate", data={"csrf_token": "x"})
    assert forged.status_code == 403


def test_a_refused_share_sits_at_its_field_with_the_choices_kept(client, org):
    made = client.post(
        "/api/v1/sources", headers=org.headers(), json={"name": "Inventory", "rows": [{"sku": "A1", "qty": 3}]}
    )
    assert made.status_code in (200, 201), made.text
    source_id = made.json()["id"]
    colleague = org.add_user("colleague@example.test")
    sign_in(client, org, org.admin_id)
    path = f"/sources/{source_id}"
    token = csrf_of(client.get(path).text)
    refused = client.post(path + "/shares", data={"csrf_token": token, "user_id": colleague, "permission": "owner"})
    assert refused.status_code == 400
    assert error_at(refused.text, "permission") == "Choose View or Edit."
    no_other_field_invalid(refused.text, "permission")
    assert "aria-invalid" not in field_tag(refused.text, "permission")  # not the organization form's
    assert f'<option value="{colleague}" selected>' in refused.text  # the person chosen is kept
    gone = client.post(path + "/shares", data={"csrf_token": token, "user_id": "usr_nobody", "permission": "edit"})
    assert gone.status_code == 404
    assert "not an active member" in error_at(gone.text, "user_id")
    assert '<option value="edit" selected>' in gone.text
    refused = client.post(path + "/org-share", data={"csrf_token": token, "enabled": "on", "permission": "all"})
    assert refused.status_code == 400
    assert error_at(refused.text, "permission") == "Choose View or Edit."
    no_other_field_invalid(refused.text, "permission")
    assert 'aria-invalid="true"' in field_tag(refused.text, "permission")  # the organization form's (first)
    shares = client.get(f"/api/v1/sources/{source_id}/shares", headers=org.headers())
    assert shares.status_code == 200 and shares.json()["data"] == []  # nothing shared
    assert client.get("/api/v1/sources/" + source_id, headers=org.headers()).json()["org_shared"] is False


POLICIES = "/settings/security/access-policies"


@pytest.mark.parametrize(
    ("typed", "field", "words"),
    [
        ({"name": ""}, "name", "Give the policy a name of 1 to 200 characters."),
        ({"column_0": "region"}, "values_0", "Choose or type at least one allowed value."),
        (
            {"column_0": "region", "values_0": "EU", "values_1": "US"},
            "column_1",
            "Choose the column this filter is on.",
        ),
        (
            {"column_0": "region", "values_0": "EU", "column_1": "REGION", "values_1": "US"},
            "column_1",
            "Row filter 1 is already on region",
        ),
        ({"column_0": "region", "values_0": "x" * 1001}, "values_0", "Each value is at most 1,000 characters."),
        ({"hidden_columns": "amount", "masked_columns": "Amount"}, "masked_columns", "Amount is also hidden"),
        ({"hidden_columns": "amount\nAMOUNT"}, "hidden_columns", "AMOUNT is listed twice"),
        ({"binding": "explicit"}, "source_ids", "Choose at least one source"),
    ],
)
def test_policy_form_refusals_sit_at_their_field(client, org, typed, field, words):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    form = {"csrf_token": token, "name": "EU only", "description": "kept as typed", "binding": "auto", **typed}
    refused = client.post(POLICIES, data=form)
    assert refused.status_code == 400
    if field == "source_ids":  # a group of checkboxes: the fieldset is marked and described
        tag = re.search(r'<fieldset class="source-choices"[^>]*>', refused.text).group(0)
        assert 'aria-invalid="true"' in tag and 'aria-describedby="error-source_ids"' in tag
        assert words in re.search(r'id="error-source_ids" role="alert">([^<]*)<', refused.text).group(1)
    else:
        assert words in error_at(refused.text, field)
        no_other_field_invalid(refused.text, field)
    assert "kept as typed</textarea>" in refused.text
    assert "row_filters" not in refused.text and "column_rules[" not in refused.text
    assert client.get("/api/v1/access/policies", headers=org.headers()).json()["data"] == []  # nothing made


def test_renaming_a_policy_to_a_taken_name_is_refused_at_the_name(client, org):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    client.post(POLICIES, data={"csrf_token": token, "name": "Taken", "binding": "auto"})
    mine = client.post(POLICIES, data={"csrf_token": token, "name": "Mine", "binding": "auto"})
    refused = client.post(mine.url.path, data={"csrf_token": token, "name": "Taken", "binding": "auto"})
    assert refused.status_code == 409
    assert "already exists" in error_at(refused.text, "name")
    assert 'value="Taken"' in field_tag(refused.text, "name")
    names = sorted(p["name"] for p in client.get("/api/v1/access/policies", headers=org.headers()).json()["data"])
    assert names == ["Mine", "Taken"]


def test_project_forms_put_refusals_at_their_field(client, org):
    source = client.post("/api/v1/sources", headers=org.headers(), json={"name": "Sales", "rows": [{"amount": 1}]})
    assert source.status_code in (200, 201), source.text
    source_id = source.json()["id"]
    project = client.post("/api/v1/projects", headers=org.headers(), json={"name": "Revenue", "user_id": org.admin_id})
    assert project.status_code == 201, project.text
    path = "/projects/" + project.json()["id"]
    colleague = org.add_user("colleague@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(path).text)
    bad_name = client.post(path + "/sources", data={"csrf_token": token, "source_id": source_id, "name": "9 lives"})
    assert bad_name.status_code == 400
    assert "A table name starts with a letter" in error_at(bad_name.text, "name")
    assert f'<option value="{source_id}" selected>' in bad_name.text and 'value="9 lives"' in bad_name.text
    attached = client.post(path + "/sources", data={"csrf_token": token, "source_id": source_id, "name": "sales"})
    assert attached.status_code == 200
    step = {"csrf_token": token, "name": "sales", "sql": "SELECT * FROM sales"}
    taken = client.post(path + "/steps", data=step)
    assert taken.status_code == 409 and "already has a source or step named" in error_at(taken.text, "name")
    unknown = client.post(path + "/steps", data={**step, "name": "totals", "sql": "SELECT * FROM nowhere"})
    assert unknown.status_code == 400 and "nowhere" in error_at(unknown.text, "sql")
    step_name = re.search(r'<input id="step-name"[^>]*>', unknown.text).group(0)
    assert 'value="totals"' in step_name and "SELECT * FROM nowhere</textarea>" in unknown.text
    shared = client.post(path + "/shares", data={"csrf_token": token, "user_id": colleague, "permission": "own"})
    assert shared.status_code == 400 and error_at(shared.text, "permission") == "Choose View or Edit."
    assert f'<option value="{colleague}" selected>' in shared.text
    steps = client.get(f"/api/v1{path}", headers=org.headers()).json()
    assert [s["name"] for s in steps["steps"]] == ["load_sales"]  # (attaching made it) no refused step added


def test_assigning_a_policy_to_nobody_is_refused_at_the_choice(client, org):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    made = client.post(POLICIES, data={"csrf_token": token, "name": "EU only", "binding": "auto"})
    client.post("/settings/security/groups", data={"csrf_token": token, "name": "Sales"})
    path = made.url.path
    for user_id, status, words in (("", 400, "Choose a person"), ("usr_nobody", 400, "not an active member")):
        refused = client.post(path + "/users", data={"csrf_token": token, "user_id": user_id})
        assert refused.status_code == status and words in error_at(refused.text, "user_id")
        no_other_field_invalid(refused.text, "user_id")
    refused = client.post(path + "/groups", data={"csrf_token": token, "group_id": "grp_nope"})
    assert refused.status_code == 404 and "That group no longer exists" in error_at(refused.text, "group_id")
    after = client.get(path).text
    assert "Nobody directly." in after and "No group." in after  # nothing assigned


def test_adding_a_member_or_policy_to_a_group_is_refused_at_the_choice(client, org):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    client.post(POLICIES, data={"csrf_token": token, "name": "EU only", "binding": "auto"})
    path = client.post("/settings/security/groups", data={"csrf_token": token, "name": "Sales"}).url.path
    for user_id, words in (("", "Choose a person to add."), ("usr_nobody", "not an active member")):
        refused = client.post(path + "/members", data={"csrf_token": token, "user_id": user_id})
        assert refused.status_code == 400 and words in error_at(refused.text, "user_id")
        no_other_field_invalid(refused.text, "user_id")
    refused = client.post(path + "/policies", data={"csrf_token": token, "policy_id": "pol_nope"})
    assert refused.status_code == 400
    assert "That access policy no longer exists" in error_at(refused.text, "policy_id")
    after = client.get(path).text
    assert "No policies yet." in after and "No members yet." in after  # nothing changed


def row_of(page: str, user_id: str) -> str:
    return re.search(rf'<tr data-user-id="{re.escape(user_id)}">.*?</tr>', page, re.S).group(0)


def alert_in(row: str, message_id: str) -> str:
    message = re.search(rf'<small class="field-error" id="{re.escape(message_id)}" role="alert">([^<]*)<', row)
    assert message, row
    return html.unescape(message.group(1))


def test_a_refused_role_change_sits_at_that_persons_role(client, org):
    colleague = org.add_user("colleague@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get("/settings/people").text)
    refused = client.post(f"/settings/people/{colleague}/role", data={"csrf_token": token, "role": "owner"})
    assert refused.status_code == 400
    assert error_at(refused.text, "role") == "Choose Admin or Member."
    no_other_field_invalid(refused.text, "role")
    row = row_of(refused.text, colleague)
    assert f'aria-describedby="error-role-{colleague}"' in row and f'id="error-role-{colleague}"' in row
    assert 'class="error"' not in refused.text  # not (also) at the top
    with session_scope(org.settings.database_url) as session:  # nothing changed
        assert orgs.get_user(session, org.id, colleague).role == "member"


def test_refusals_about_a_persons_row_are_told_in_that_row(client, org):
    gone = org.add_user("gone@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get("/settings/people").text)
    assert client.post(f"/settings/people/{gone}/deactivate", data={"csrf_token": token}).status_code == 200
    # The only admin demoting themselves (a forged form: their row has no role choice).
    demoted = client.post(f"/settings/people/{org.admin_id}/role", data={"csrf_token": token, "role": "member"})
    assert demoted.status_code == 409
    words = alert_in(row_of(demoted.text, org.admin_id), f"error-role-{org.admin_id}")
    assert words == "This is the only active admin: make someone else an admin first."
    # Deactivating yourself (also forged: your row has no Deactivate link).
    self_off = client.post(f"/settings/people/{org.admin_id}/deactivate", data={"csrf_token": token})
    assert self_off.status_code == 400
    words = alert_in(row_of(self_off.text, org.admin_id), f"error-deactivate-{org.admin_id}")
    assert words == "You cannot deactivate yourself: ask another admin."
    # A deactivated person's role.
    inactive = client.post(f"/settings/people/{gone}/role", data={"csrf_token": token, "role": "admin"})
    assert inactive.status_code == 400
    words = alert_in(row_of(inactive.text, gone), f"error-role-{gone}")
    assert words == "This person is deactivated: their role cannot change."
    for refused in (demoted, self_off, inactive):
        assert 'class="error"' not in refused.text and "aria-invalid" not in refused.text
    with session_scope(org.settings.database_url) as session:  # nothing changed
        me = orgs.get_user(session, org.id, org.admin_id)
        assert (me.role, me.is_active) == ("admin", True)
        assert orgs.get_user(session, org.id, gone, include_inactive=True).role == "member"
    # The next visit of the page shows no stale refusal.
    page = client.get("/settings/people").text
    assert "field-error" not in page


def test_dashboard_forms_put_refusals_at_their_field_with_what_was_typed(client, org):
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get("/dashboards").text)
    blank = client.post("/dashboards", data={"csrf_token": token, "name": "", "description": "kept as typed"})
    assert blank.status_code == 400
    assert error_at(blank.text, "name") == "Give the dashboard a name of 1 to 200 characters."
    no_other_field_invalid(blank.text, "name")
    assert 'value="kept as typed"' in field_tag(blank.text, "description")
    assert "No dashboards" in blank.text or "<details open>" in blank.text
    made = client.post("/dashboards", data={"csrf_token": token, "name": "Revenue"})
    assert made.status_code == 200
    path = made.url.path
    # A step to draw: attaching a source to a project makes one.
    source = client.post("/api/v1/sources", headers=org.headers(), json={"name": "Sales", "rows": [{"amount": 1}]})
    project = client.post("/api/v1/projects", headers=org.headers(), json={"name": "P", "user_id": org.admin_id})
    project_path = "/projects/" + project.json()["id"]
    attach = {"csrf_token": token, "source_id": source.json()["id"], "name": "sales"}
    assert client.post(project_path + "/sources", data=attach).status_code == 200
    step = re.search(r'<option value="([^"]+)">P / load_sales<', client.get(path).text).group(1)
    widget = {"csrf_token": token, "title": "", "step": step, "kind": "number", "x": "", "y": "amount"}
    untitled = client.post(path + "/widgets", data=widget)
    assert untitled.status_code == 400
    assert error_at(untitled.text, "title") == "Give the widget a title of 1 to 200 characters."
    no_other_field_invalid(untitled.text, "title")
    assert f'<option value="{step}" selected>' in untitled.text and 'value="amount"' in field_tag(untitled.text, "y")
    gone = client.post(path + "/widgets", data={**widget, "title": "Total", "step": "prj_x/stp_gone"})
    assert gone.status_code == 404 and "That step no longer exists" in error_at(gone.text, "step")
    assert 'value="Total"' in field_tag(gone.text, "title")
    kind = client.post(path + "/widgets", data={**widget, "title": "Total", "kind": "pie"})
    assert kind.status_code == 400 and error_at(kind.text, "kind") == "Choose a kind from the list."
    # Filters: the line in plain words, the text kept.
    bad = client.post(path + "/filters", data={"csrf_token": token, "filters": "region = EU\nregion"})
    assert bad.status_code == 400 and error_at(bad.text, "filters") == "Line 2: write column = value, value."
    assert "region = EU\nregion</textarea>" in bad.text
    twice = client.post(path + "/filters", data={"csrf_token": token, "filters": "a = 1\na = 2"})
    assert twice.status_code == 400 and "each column once" in error_at(twice.text, "filters")
    assert 'aria-describedby="error-filters filters-help"' in field_tag(twice.text, "filters")
    # A share link: the expiry at its field, as typed.
    for days in ("999", "soon"):
        refused = client.post(path + "/links", data={"csrf_token": token, "expires_in_days": days})
        assert refused.status_code == 400
        assert error_at(refused.text, "expires_in_days") == "Choose a number of days from 1 to 365."
        assert f'value="{days}"' in field_tag(refused.text, "expires_in_days")
    forged = client.post(path + "/links", data={"csrf_token": token, "policy_ids": "pol_x"})
    assert forged.status_code == 400
    assert 'id="error-policy_ids" role="alert">Policies apply to public links only' in forged.text
    for refused in (untitled, gone, kind, bad, twice, forged):
        assert 'class="error"' not in refused.text  # not (also) at the top
    # Nothing changed: no widget, no filter, no link.
    shown = client.get(path).text
    assert "data-active-filters" not in shown and "links-table" not in shown and "manage-widgets-title" not in shown


def test_a_refused_removal_is_told_next_to_that_rows_button(client, org, monkeypatch):
    from tidegate.errors import Forbidden
    from tidegate.web import groups

    member = org.add_user("member@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    client.post(POLICIES, data={"csrf_token": token, "name": "EU only", "binding": "auto"})
    path = client.post("/settings/security/groups", data={"csrf_token": token, "name": "Sales"}).url.path
    assert client.post(path + "/members", data={"csrf_token": token, "user_id": member}).status_code == 200

    def refuse(*args, **kwargs):  # a refusal while the row is still there (e.g. a rule added later)
        raise Forbidden("refused", "This member cannot be removed right now.")

    monkeypatch.setattr(groups.service, "remove_group_member", refuse)
    refused = client.post(f"{path}/members/{member}/remove", data={"csrf_token": token})
    assert refused.status_code == 403
    row = re.search(rf'<tr data-user-id="{member}">.*?</tr>', refused.text, re.S).group(0)
    button = re.search(r"<button[^>]*>Remove</button>", row).group(0)
    assert f'aria-describedby="error-row-member-{member}"' in button
    assert alert_in(row, f"error-row-member-{member}") == "This member cannot be removed right now."
    assert 'class="error"' not in refused.text and "aria-invalid" not in refused.text
    monkeypatch.undo()
    # A row that is not there (someone not in the group, a forged form): said above the page.
    gone = client.post(f"{path}/members/usr_nobody/remove", data={"csrf_token": token})
    assert gone.status_code == 404
    assert re.search(r'<p class="error" role="alert" id="page-error">[^<]+</p>', gone.text)
    assert "error-row-" not in gone.text
    assert f'<tr data-user-id="{member}">' in client.get(path).text  # still a member


def test_a_refused_policy_assignment_removal_is_told_next_to_its_button(client, org, monkeypatch):
    from tidegate.errors import Forbidden
    from tidegate.web import policies

    member = org.add_user("member@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(POLICIES + "/new").text)
    path = client.post(POLICIES, data={"csrf_token": token, "name": "EU only", "binding": "auto"}).url.path
    assert client.post(path + "/users", data={"csrf_token": token, "user_id": member}).status_code == 200

    def refuse(*args, **kwargs):
        raise Forbidden("refused", "This assignment cannot be removed right now.")

    monkeypatch.setattr(policies.service, "remove_user", refuse)
    refused = client.post(f"{path}/users/{member}/remove", data={"csrf_token": token})
    assert refused.status_code == 403
    row = re.search(rf'<tr data-user-id="{member}">.*?</tr>', refused.text, re.S).group(0)
    assert f'aria-describedby="error-row-user-{member}"' in re.search(r"<button[^>]*>Remove</button>", row).group(0)
    assert alert_in(row, f"error-row-user-{member}") == "This assignment cannot be removed right now."
    assert 'class="error"' not in refused.text
    monkeypatch.undo()
    gone = client.post(f"{path}/groups/grp_nope/remove", data={"csrf_token": token})
    assert gone.status_code == 404 and 'id="page-error"' in gone.text and "error-row-" not in gone.text
    assert f'<tr data-user-id="{member}">' in client.get(path).text  # still assigned


def test_a_refused_share_removal_is_told_next_to_its_button(client, org, monkeypatch):
    from tidegate.errors import Forbidden
    from tidegate.web import sources

    made = client.post("/api/v1/sources", headers=org.headers(), json={"name": "Stock", "rows": [{"sku": "A1"}]})
    path = "/sources/" + made.json()["id"]
    colleague = org.add_user("colleague@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(path).text)
    shared = client.post(path + "/shares", data={"csrf_token": token, "user_id": colleague, "permission": "view"})
    assert shared.status_code == 200

    def refuse(*args, **kwargs):
        raise Forbidden("refused", "This share cannot be removed right now.")

    monkeypatch.setattr(sources.data_service, "unshare_source", refuse)
    refused = client.post(f"{path}/shares/{colleague}/remove", data={"csrf_token": token})
    assert refused.status_code == 403
    row = re.search(rf'<tr data-share-user="{colleague}">.*?</tr>', refused.text, re.S).group(0)
    button = re.search(r"<button[^>]*>Remove</button>", row).group(0)
    assert f'aria-describedby="error-row-share-{colleague}"' in button
    assert alert_in(row, f"error-row-share-{colleague}") == "This share cannot be removed right now."
    assert 'class="error"' not in refused.text
    monkeypatch.undo()
    gone = client.post(f"{path}/shares/usr_nobody/remove", data={"csrf_token": token})
    assert gone.status_code == 404 and 'id="page-error"' in gone.text and "error-row-" not in gone.text
    assert f'<tr data-share-user="{colleague}">' in client.get(path).text  # still shared


def test_a_refused_project_share_removal_is_told_next_to_its_button(client, org, monkeypatch):
    from tidegate.errors import Forbidden
    from tidegate.web import projects

    project = client.post("/api/v1/projects", headers=org.headers(), json={"name": "Plan", "user_id": org.admin_id})
    path = "/projects/" + project.json()["id"]
    colleague = org.add_user("colleague@example.test")
    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get(path).text)
    shared = client.post(path + "/shares", data={"csrf_token": token, "user_id": colleague, "permission": "view"})
    assert shared.status_code == 200

    def refuse(*args, **kwargs):
        raise Forbidden("refused", "This share cannot be removed right now.")

    monkeypatch.setattr(projects.sharing, "unshare", refuse)
    refused = client.post(f"{path}/shares/{colleague}/remove", data={"csrf_token": token})
    assert refused.status_code == 403
    row = re.search(rf'<tr data-share-user="{colleague}">.*?</tr>', refused.text, re.S).group(0)
    button = re.search(r"<button[^>]*>Remove</button>", row).group(0)
    assert f'aria-describedby="error-row-share-{colleague}"' in button
    assert alert_in(row, f"error-row-share-{colleague}") == "This share cannot be removed right now."
    assert 'class="error"' not in refused.text
    monkeypatch.undo()
    gone = client.post(f"{path}/shares/usr_nobody/remove", data={"csrf_token": token})
    assert gone.status_code == 404 and 'id="page-error"' in gone.text and "error-row-" not in gone.text
    assert f'<tr data-share-user="{colleague}">' in client.get(path).text  # still shared


def test_a_refused_widget_removal_is_told_next_to_its_button(client, org, monkeypatch):
    from tidegate.errors import Forbidden
    from tidegate.web import dashboards

    sign_in(client, org, org.admin_id)
    token = csrf_of(client.get("/dashboards").text)
    path = client.post("/dashboards", data={"csrf_token": token, "name": "Revenue"}).url.path
    source = client.post("/api/v1/sources", headers=org.headers(), json={"name": "Sales", "rows": [{"amount": 1}]})
    project = client.post("/api/v1/projects", headers=org.headers(), json={"name": "P", "user_id": org.admin_id})
    attach = {"csrf_token": token, "source_id": source.json()["id"], "name": "sales"}
    assert client.post("/projects/" + project.json()["id"] + "/sources", data=attach).status_code == 200
    step = re.search(r'<option value="([^"]+)">P / load_sales<', client.get(path).text).group(1)
    widget = {"csrf_token": token, "title": "Total", "step": step, "kind": "number", "y": "amount"}
    added = client.post(path + "/widgets", data=widget)
    assert added.status_code == 200
    widget_id = re.search(r'<tr data-widget-row="([^"]+)">', added.text).group(1)

    def refuse(*args, **kwargs):
        raise Forbidden("refused", "This widget cannot be removed right now.")

    monkeypatch.setattr(dashboards.dashboards, "delete_widget", refuse)
    refused = client.post(f"{path}/widgets/{widget_id}/delete", data={"csrf_token": token})
    assert refused.status_code == 403
    row = re.search(rf'<tr data-widget-row="{widget_id}">.*?</tr>', refused.text, re.S).group(0)
    button = re.search(r"<button[^>]*>Remove</button>", row).group(0)
    assert f'aria-describedby="error-row-widget-{widget_id}"' in button
    assert alert_in(row, f"error-row-widget-{widget_id}") == "This widget cannot be removed right now."
    assert 'class="error"' not in refused.text
    monkeypatch.undo()
    gone = client.post(f"{path}/widgets/wdg_nope/delete", data={"csrf_token": token})
    assert gone.status_code == 404 and 'class="error"' in gone.text and "error-row-" not in gone.text
    assert f'<tr data-widget-row="{widget_id}">' in client.get(path).text  # still there
