"""/access/* over HTTP: contract shapes, admin-only, org isolation, audit."""

from __future__ import annotations

import pytest


def post_policy(client, org, **body):
    return client.post("/api/v1/access/policies", json=body, headers=org.headers())


def test_policy_crud_and_assignment_shapes(client, org):
    alice = org.add_user("alice@example.com")
    r = post_policy(
        client, org, name="us-only", description="US rows", row_filters=[{"column": "region", "values": ["US"]}]
    )
    assert r.status_code == 201, r.text
    policy = r.json()
    assert policy["id"].startswith("pol_") and policy["source_ids"] == [] and policy["user_count"] == 0
    assert policy["row_filters"] == [{"column": "region", "values": ["US"]}]

    r = client.post(f"/api/v1/access/policies/{policy['id']}/users", json={"user_ids": [alice]}, headers=org.headers())
    assert r.json()["policy_id"] == policy["id"] and r.json()["assigned_user_ids"] == [alice]
    again = client.post(
        f"/api/v1/access/policies/{policy['id']}/users", json={"user_ids": [alice]}, headers=org.headers()
    )
    assert again.json()["assigned_user_ids"] == []  # idempotent: nothing new
    detail = client.get(f"/api/v1/access/policies/{policy['id']}", headers=org.headers()).json()
    assert detail["user_ids"] == [alice] and detail["user_count"] == 1

    by_name = client.get("/api/v1/access/policies", params={"name": "us-only"}, headers=org.headers()).json()["data"]
    assert [p["id"] for p in by_name] == [policy["id"]]
    assert client.get("/api/v1/access/policies", params={"name": "us"}, headers=org.headers()).json()["data"] == []

    r = client.patch(
        f"/api/v1/access/policies/{policy['id']}",
        json={"row_filters": [{"column": "region", "values": ["US", "CA"]}]},
        headers=org.headers(),
    )
    assert r.json()["id"] == policy["id"] and r.json()["updated"] is True
    assert client.get(f"/api/v1/access/policies/{policy['id']}", headers=org.headers()).json()["row_filters"][0][
        "values"
    ] == ["US", "CA"]

    r = client.delete(f"/api/v1/access/policies/{policy['id']}/users/{alice}", headers=org.headers())
    assert r.json() == {"policy_id": policy["id"], "user_id": alice, "removed": True}

    r = client.put(f"/api/v1/access/users/{alice}/policies", json={"policy_ids": [policy["id"]]}, headers=org.headers())
    assert r.json() == {"user_id": alice, "policy_ids": [policy["id"]], "added": [policy["id"]], "removed": []}
    r = client.put(f"/api/v1/access/users/{alice}/policies", json={"policy_ids": []}, headers=org.headers())
    assert r.json()["removed"] == [policy["id"]] and r.json()["policy_ids"] == []

    r = client.delete(f"/api/v1/access/policies/{policy['id']}", headers=org.headers())
    assert r.json() == {"id": policy["id"], "deleted": True}
    assert client.get(f"/api/v1/access/policies/{policy['id']}", headers=org.headers()).status_code == 404


def test_duplicate_name_is_409_unless_the_definition_is_the_same(client, org):
    body = {"name": "p", "row_filters": [{"column": "region", "values": ["EU"]}]}
    first = post_policy(client, org, **body)
    assert first.status_code == 201
    again = post_policy(client, org, **body)  # the SDK's get-or-create, repeated: the same policy
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    r = post_policy(client, org, name="p", row_filters=[{"column": "region", "values": ["US"]}])
    assert r.status_code == 409 and r.json()["error"]["code"] == "policy_exists"
    r = post_policy(client, org, name="p")
    assert r.status_code == 409 and r.json()["error"]["code"] == "policy_exists"
    listed = client.get("/api/v1/access/policies", params={"name": "p"}, headers=org.headers()).json()["data"]
    assert [p["id"] for p in listed] == [first.json()["id"]]


@pytest.mark.parametrize(
    "body,code",
    [
        ({"name": "x", "row_filters": [{"column": "region", "values": [1]}]}, "invalid_row_filters"),
        ({"name": "x", "row_filters": [{"column": "", "values": ["a"]}]}, "invalid_row_filters"),
        ({"name": "x", "row_filters": [{"values": ["a"]}]}, "invalid_row_filters"),
        ({"name": ""}, "invalid_name"),
        ({"name": "x", "unknown": 1}, "invalid_parameters"),
    ],
)
def test_bad_policy_input(client, org, body, code):
    r = post_policy(client, org, **body)
    assert r.status_code == 400 and r.json()["error"]["code"] == code
    assert client.get("/api/v1/access/policies", headers=org.headers()).json()["data"] == []


def test_replace_is_atomic(client, org):
    alice = org.add_user("alice@example.com")
    good = post_policy(client, org, name="good").json()["id"]
    client.put(f"/api/v1/access/users/{alice}/policies", json={"policy_ids": [good]}, headers=org.headers())
    r = client.put(
        f"/api/v1/access/users/{alice}/policies", json={"policy_ids": ["pol_missing"]}, headers=org.headers()
    )
    assert r.status_code == 400
    assert client.get(f"/api/v1/access/policies/{good}", headers=org.headers()).json()["user_ids"] == [alice]


def test_groups(client, org):
    alice = org.add_user("alice@example.com")
    policy = post_policy(client, org, name="eu", row_filters=[{"column": "region", "values": ["EU"]}]).json()["id"]
    group = client.post("/api/v1/access/groups", json={"name": "Sales"}, headers=org.headers())
    assert group.status_code == 201
    gid = group.json()["id"]
    client.post(f"/api/v1/access/groups/{gid}/users", json={"user_ids": [alice]}, headers=org.headers())
    r = client.post(f"/api/v1/access/groups/{gid}/policies", json={"policy_ids": [policy]}, headers=org.headers())
    assert r.json()["user_ids"] == [alice] and r.json()["policy_ids"] == [policy]
    r = client.delete(f"/api/v1/access/groups/{gid}/users/{alice}", headers=org.headers())
    assert r.json()["removed"] is True
    assert client.delete(f"/api/v1/access/groups/{gid}", headers=org.headers()).json() == {"id": gid, "deleted": True}


def test_policies_are_admin_only_and_org_isolated(client, make_org):
    a, b = make_org(), make_org()
    member_key = a.key_for(a.add_user("m@example.com"))
    assert client.get("/api/v1/access/policies", headers=a.headers(member_key)).status_code == 403
    r = client.post("/api/v1/access/policies", json={"name": "x"}, headers=a.headers(member_key))
    assert r.status_code == 403
    pid = post_policy(client, a, name="a-only").json()["id"]
    assert client.get(f"/api/v1/access/policies/{pid}", headers=b.headers()).status_code == 404
    assert client.delete(f"/api/v1/access/policies/{pid}", headers=b.headers()).status_code == 404
    b_user = b.add_user("b@example.com")
    r = client.post(f"/api/v1/access/policies/{pid}/users", json={"user_ids": [b_user]}, headers=a.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_user_ids"


def test_policy_changes_are_audited(client, org):
    pid = post_policy(client, org, name="audited").json()["id"]
    client.patch(f"/api/v1/access/policies/{pid}", json={"name": "audited-2"}, headers=org.headers())
    actions = {
        e["action"]
        for e in client.get("/api/v1/audit/events", params={"target_id": pid}, headers=org.headers()).json()["data"]
    }
    assert {"policy.created", "policy.updated"} <= actions


def test_deny_by_default_setting(client, org):
    r = client.patch("/api/v1/org/settings", json={"deny_by_default": True}, headers=org.headers())
    assert r.status_code == 200 and r.json()["deny_by_default"] is True
    assert client.get("/api/v1/org/settings", headers=org.headers()).json()["deny_by_default"] is True
