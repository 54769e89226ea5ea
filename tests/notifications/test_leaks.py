"""POST /api/v1/keys/leaks: a leaked key is revoked at once, its organization told (audit
event, notification, signed webhook); anything else is a false positive and changes nothing;
the endpoint is rate limited per address, bounded, and signed when keys are configured."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.notifications.signatures import verify
from tidegate.api.app import create_app
from tidegate.audit.models import AuditEvent
from tidegate.credentials.keyformat import generate_key
from tidegate.db.engine import session_scope
from tidegate.notifications.delivery import Policy, run_once

LEAKS = "/api/v1/keys/leaks"
FOUND_AT = "https://github.com/octo/repo/blob/abc/settings.py"


def report(token: str, url: str = FOUND_AT) -> dict:
    return {"token": token, "type": "tidegate_api_key", "url": url, "source": "content"}


def leak_events(database_url: str, org_id: str) -> list[AuditEvent]:
    with session_scope(database_url) as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.action == "api_key.leak_reported")
            )
        )


def test_a_leaked_key_is_revoked_and_a_webhook_is_told(api, org, receiver, loopback_settings):
    member = org.add_user("dev@example.com")
    leaked = org.key_for(member, ["data:read"], name="ci key")
    created = api.post(
        "/api/v1/org/webhooks",
        headers=org.headers(),
        json={"url": receiver.url, "events": ["api_key.leak_reported"]},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert api.get("/api/v1/sources", headers=org.headers(leaked)).status_code == 200

    answer = api.post(LEAKS, json=[report(leaked), report("qk_not_a_key")])

    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {"token_raw": leaked, "token_type": "tidegate_api_key", "label": "true_positive"},
        {"token_raw": "qk_not_a_key", "token_type": "tidegate_api_key", "label": "false_positive"},
    ]
    refused = api.get("/api/v1/sources", headers=org.headers(leaked))
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "api_key_revoked")
    (event,) = leak_events(org.settings.database_url, org.id)
    assert event.details["url"] == FOUND_AT and event.details["source"] == "content"
    assert event.details["revoked"] is True and event.details["status_before"] == "active"
    with session_scope(org.settings.database_url) as session:  # the token is in no audit row
        rows = session.scalars(select(AuditEvent).where(AuditEvent.org_id == org.id)).all()
        assert not any(leaked in json.dumps(r.details or {}) + (r.path or "") for r in rows)
    # Done by tidegate on a report it received, not by an operator at the CLI.
    acted = [r for r in rows if r.action in ("api_key.revoked", "api_key.leak_reported")]
    assert len(acted) >= 2 and {(r.actor_type, r.actor_id) for r in acted} == {("system", "tidegate")}

    run_once(loopback_settings.database_url, loopback_settings.session_key, Policy(retry_base_seconds=1))

    (delivery,) = receiver.got
    assert verify(secret, delivery.headers["tidegate-signature"], delivery.body)
    assert not verify("whsec_wrong", delivery.headers["tidegate-signature"], delivery.body)
    body = delivery.json()
    assert body["type"] == "api_key.leak_reported" == delivery.headers["tidegate-event"]
    assert body["organization_id"] == org.id and body["data"]["details"]["url"] == FOUND_AT
    assert leaked not in delivery.body.decode()
    listed = api.get("/api/v1/org/notifications", headers=org.headers()).json()["data"]
    assert [n["type"] for n in listed if n["type"] == "api_key.leak_reported"] == ["api_key.leak_reported"]


def test_false_positives_change_nothing(api, org):
    key = org.key_for(org.admin_id, ["data:read"])
    look_alike = key[:-1] + ("A" if key[-1] != "A" else "B")  # the checksum no longer matches
    unknown = generate_key()  # well formed, checksum right, never issued
    answer = api.post(LEAKS, json=[report(look_alike), report(unknown), {"token": "hunter2"}])
    assert [x["label"] for x in answer.json()] == ["false_positive"] * 3
    assert all(set(x) == {"token_raw", "token_type", "label"} for x in answer.json())
    assert api.get("/api/v1/sources", headers=org.headers(key)).status_code == 200
    assert leak_events(org.settings.database_url, org.id) == []


def test_a_revoked_key_is_still_a_true_positive_and_nothing_more_is_said(api, org):
    key = org.key_for(org.admin_id, ["data:read"], name="secret project name")
    first = api.post(LEAKS, json=[report(key)])
    again = api.post(LEAKS, json=[report(key, url="https://gist.github.com/x")])
    assert first.json()[0]["label"] == again.json()[0]["label"] == "true_positive"
    text = again.text
    assert org.id not in text and "secret project name" not in text and org.name not in text
    events = sorted(leak_events(org.settings.database_url, org.id), key=lambda e: e.id)
    assert [e.details["status_before"] for e in events] == ["active", "revoked"]
    assert [e.details["revoked"] for e in events] == [True, False]


def test_a_leaked_parent_takes_its_children_with_it(api, org):
    parent = org.key_for(org.admin_id, ["admin:keys:manage", "data:read"])
    child = api.post("/api/v1/keys", headers=org.headers(parent), json={"name": "child", "scopes": ["data:read"]})
    assert child.status_code == 201, child.text
    api.post(LEAKS, json=[report(parent)])
    assert api.get("/api/v1/sources", headers=org.headers(child.json()["secret"])).status_code == 401


def test_secrets_in_the_reported_url_are_redacted(api, org):
    key = org.key_for(org.admin_id, ["data:read"])
    api.post(LEAKS, json=[report(key, url=f"https://example.com/paste?k={key}")])
    (event,) = leak_events(org.settings.database_url, org.id)
    assert key not in event.details["url"] and "qk_[redacted]" in event.details["url"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_leak_report"),
        (b'{"token": "qk_x"}', "invalid_leak_report"),
        (b"[]", "invalid_leak_report"),
        (b'[{"type": "x"}]', "invalid_leak_report"),
        (b'[{"token": 5}]', "invalid_leak_report"),
        (b'[{"token": "a\\u0000b"}]', "invalid_leak_report"),
    ],
)
def test_malformed_reports_are_400(api, body, code):
    answer = api.post(LEAKS, content=body, headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, code)


def test_a_report_larger_than_the_bound_is_413_and_changes_nothing(api, org):
    key = org.key_for(org.admin_id, ["data:read"])
    padding = [{"token": "x" * 900, "url": "y" * 3000}] * 80
    answer = api.post(LEAKS, content=orjson.dumps([report(key), *padding]))
    assert (answer.status_code, answer.json()["error"]["code"]) == (413, "request_too_large")
    assert api.get("/api/v1/sources", headers=org.headers(key)).status_code == 200


def other_ip() -> str:
    n = uuid.uuid4().int
    return f"127.{n % 250 + 1}.{(n >> 8) % 250 + 1}.{(n >> 16) % 250 + 1}"


def test_leak_reports_are_rate_limited_per_address(loopback_settings, org, client_ip):
    settings = dataclasses.replace(
        loopback_settings, notify=dataclasses.replace(loopback_settings.notify, leak_reports_per_minute=3)
    )
    app = create_app(settings)
    with TestClient(app, client=(client_ip, 1)) as one, TestClient(app, client=(other_ip(), 1)) as other:
        assert [one.post(LEAKS, json=[report("qk_x")]).status_code for _ in range(3)] == [200, 200, 200]
        refused = one.post(LEAKS, json=[report(org.key_for(org.admin_id, ["data:read"]))])
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1
        assert other.post(LEAKS, json=[report("qk_x")]).status_code == 200  # another address is not limited
    assert leak_events(org.settings.database_url, org.id) == []  # the refused report changed nothing


@pytest.fixture
def signing():
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(body: bytes, key=private) -> str:
        return base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    return "github-key-1", pem.decode(), sign


def test_with_a_public_key_configured_reports_must_be_signed_by_it(loopback_settings, org, signing, client_ip):
    identifier, pem, sign = signing
    settings = dataclasses.replace(
        loopback_settings, notify=dataclasses.replace(loopback_settings.notify, leak_public_keys=((identifier, pem),))
    )
    key = org.key_for(org.admin_id, ["data:read"])
    body = orjson.dumps([report(key)])
    other_key = ec.generate_private_key(ec.SECP256R1())
    with TestClient(create_app(settings), client=(client_ip, 1)) as client:

        def post(headers):
            return client.post(LEAKS, content=body, headers={"content-type": "application/json", **headers})

        cases = [
            ({}, "leak_signature_missing"),
            ({"Github-Public-Key-Identifier": identifier}, "leak_signature_missing"),
            (
                {"Github-Public-Key-Identifier": "other", "Github-Public-Key-Signature": sign(body)},
                "leak_signature_key_unknown",
            ),
            (
                {"Github-Public-Key-Identifier": identifier, "Github-Public-Key-Signature": sign(body + b" ")},
                "leak_signature_invalid",
            ),
            (
                {"Github-Public-Key-Identifier": identifier, "Github-Public-Key-Signature": sign(body, other_key)},
                "leak_signature_invalid",
            ),
            (
                {"Github-Public-Key-Identifier": identifier, "Github-Public-Key-Signature": "not base64!"},
                "leak_signature_invalid",
            ),
        ]
        for headers, code in cases:
            refused = post(headers)
            assert (refused.status_code, refused.json()["error"]["code"]) == (401, code), headers
        assert client.get("/api/v1/sources", headers=org.headers(key)).status_code == 200  # nothing changed
        accepted = post({"Github-Public-Key-Identifier": identifier, "Github-Public-Key-Signature": sign(body)})
        assert accepted.status_code == 200 and accepted.json()[0]["label"] == "true_positive"
        assert client.get("/api/v1/sources", headers=org.headers(key)).status_code == 401


def test_without_public_keys_unsigned_reports_are_accepted(api, org):
    key = org.key_for(org.admin_id, ["data:read"])
    assert api.post(LEAKS, json=[report(key)]).json()[0]["label"] == "true_positive"
