"""/users per the contract, admin-only, org-isolated, with the last-admin guard."""

from __future__ import annotations

import pytest


def test_create_get_list_update_delete(client, org):
    r = client.post(
        "/api/v1/users", json={"email": "Ann@Example.com", "role": "member", "first_name": "Ann"}, headers=org.headers()
    )
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == "ann@example.com" and user["role"] == "member" and user["id"].startswith("user_")
    assert client.get(f"/api/v1/users/{user['id']}", headers=org.headers()).json()["first_name"] == "Ann"
    r = client.patch(f"/api/v1/users/{user['id']}", json={"role": "admin", "last_name": "Lee"}, headers=org.headers())
    assert r.json()["role"] == "admin" and r.json()["last_name"] == "Lee"
    assert client.patch(f"/api/v1/users/{user['id']}", json={}, headers=org.headers()).status_code == 200
    listed = client.get("/api/v1/users", headers=org.headers()).json()
    assert user["id"] in [u["id"] for u in listed["data"]]
    r = client.delete(f"/api/v1/users/{user['id']}", headers=org.headers())
    assert r.json() == {"id": user["id"], "deleted": True}
    assert client.get(f"/api/v1/users/{user['id']}", headers=org.headers()).status_code == 404
    assert user["id"] not in [u["id"] for u in client.get("/api/v1/users", headers=org.headers()).json()["data"]]


def test_pagination(client, org):
    for i in range(4):
        client.post("/api/v1/users", json={"email": f"p{i}@example.com"}, headers=org.headers())
    ids, after = [], None
    while True:
        page = client.get(
            "/api/v1/users", params={"limit": 2} | ({"after": after} if after else {}), headers=org.headers()
        ).json()
        ids += [u["id"] for u in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert len(ids) == len(set(ids)) == 5  # 4 + the admin


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"email": "not-an-email"}, 400, "invalid_email"),
        ({"email": "x@example.com", "role": "owner"}, 400, "invalid_role"),
        ({"role": "member"}, 400, "invalid_parameters"),
        ({"email": "x@example.com", "extra": True}, 400, "invalid_parameters"),
    ],
)
def test_bad_user_input(client, org, body, status, code):
    before = len(client.get("/api/v1/users", headers=org.headers()).json()["data"])
    r = client.post("/api/v1/users", json=body, headers=org.headers())
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert len(client.get("/api/v1/users", headers=org.headers()).json()["data"]) == before


def test_duplicate_email_is_409(client, org):
    client.post("/api/v1/users", json={"email": "dup@example.com"}, headers=org.headers())
    r = client.post("/api/v1/users", json={"email": "DUP@example.com"}, headers=org.headers())
    assert r.status_code == 409 and r.json()["error"]["code"] == "user_exists"


def test_external_id_get_or_create(client, org):
    r = client.put(
        "/api/v1/users/external/crm-42", json={"email": "ext@example.com", "role": "member"}, headers=org.headers()
    )
    assert r.status_code == 200 and r.json()["created"] is True
    user_id = r.json()["id"]
    again = client.put(
        "/api/v1/users/external/crm-42", json={"email": "changed@example.com", "role": "admin"}, headers=org.headers()
    )
    assert again.json()["created"] is False and again.json()["id"] == user_id
    assert again.json()["email"] == "ext@example.com" and again.json()["role"] == "member"  # unchanged
    assert client.get("/api/v1/users/crm-42", headers=org.headers()).json()["id"] == user_id
    found = client.get("/api/v1/users", params={"external_id": "crm-42"}, headers=org.headers()).json()["data"]
    assert [u["id"] for u in found] == [user_id]
    r = client.put("/api/v1/users/external/new-one", json={"role": "member"}, headers=org.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_field"
    r = client.delete("/api/v1/users/external/crm-42", headers=org.headers())
    assert r.json() == {"external_id": "crm-42", "user_id": user_id, "deleted": True}
    assert client.get("/api/v1/users", params={"external_id": "crm-42"}, headers=org.headers()).json()["data"] == []
    assert client.get(f"/api/v1/users/{user_id}", headers=org.headers()).status_code == 200  # user kept


def test_last_admin_cannot_be_demoted_or_deactivated(client, org):
    r = client.patch(f"/api/v1/users/{org.admin_id}", json={"role": "member"}, headers=org.headers())
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    r = client.delete(f"/api/v1/users/{org.admin_id}", headers=org.headers())
    assert r.status_code == 409
    assert client.get(f"/api/v1/users/{org.admin_id}", headers=org.headers()).json()["role"] == "admin"


def test_members_cannot_manage_users(client, org):
    member = org.add_user("m@example.com")
    key = org.key_for(member)
    assert client.get("/api/v1/users", headers=org.headers(key)).status_code == 403
    r = client.post("/api/v1/users", json={"email": "evil@example.com", "role": "admin"}, headers=org.headers(key))
    assert r.status_code == 403
    r = client.patch(f"/api/v1/users/{member}", json={"role": "admin"}, headers=org.headers(key))
    assert r.status_code == 403
    assert client.get(f"/api/v1/users/{member}", headers=org.headers()).json()["role"] == "member"


def test_users_of_other_orgs_are_invisible(client, make_org):
    a, b = make_org(), make_org()
    a_user = a.add_user("a-user@example.com")
    for method, path in [("get", f"/api/v1/users/{a_user}"), ("delete", f"/api/v1/users/{a_user}")]:
        assert getattr(client, method)(path, headers=b.headers()).status_code == 404
    r = client.patch(f"/api/v1/users/{a_user}", json={"role": "admin"}, headers=b.headers())
    assert r.status_code == 404
    assert client.get(f"/api/v1/users/{a_user}", headers=a.headers()).json()["role"] == "member"
    # The same email can exist in two organizations.
    assert client.post("/api/v1/users", json={"email": "a-user@example.com"}, headers=b.headers()).status_code == 201
