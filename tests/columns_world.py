"""A source of people and the helpers the column security tests share (issue 14 §1)."""

from __future__ import annotations

PEOPLE = [
    {"name": "Ann", "email": "ann@example.com", "salary": 150000, "region": "EU", "hired": "2020-01-05"},
    {"name": "Amy", "email": "amy@example.org", "salary": 90000, "region": "US", "hired": "2021-03-01"},
    {"name": "Bob", "email": "bob@example.net", "salary": 120000, "region": "EU", "hired": "2019-07-12"},
]
SECRETS = ["ann@example.com", "amy@example.org", "bob@example.net", "150000", "90000", "120000"]


def api(path: str) -> str:
    return f"/api/v1{path}"


def create_source(client, org, rows=PEOPLE, name="people") -> str:
    r = client.post(api("/sources"), json={"name": name, "rows": rows}, headers=org.headers())
    assert r.status_code == 201, r.text
    source = r.json()["id"]
    shared = client.post(api(f"/sources/{source}/org-share"), json={"permission": "edit"}, headers=org.headers())
    assert shared.status_code == 200, shared.text
    return source


def create_policy(client, org, **body) -> str:
    body.setdefault("name", f"policy-{len(body)}-{sorted(body)}")
    r = client.post(api("/access/policies"), json=body, headers=org.headers())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def assign(client, org, policy: str, user: str) -> None:
    r = client.post(api(f"/access/policies/{policy}/users"), json={"user_ids": [user]}, headers=org.headers())
    assert r.status_code == 200, r.text


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret
