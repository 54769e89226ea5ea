"""The hand-off between the detectors and the webhooks, end to end: a key served from a second
address is shipped by the audit journal as `api_key.used_from_new_ip` (credentials.usage), and
that event reaches a subscribed webhook on loopback, signed, naming the key by prefix only."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

from fastapi.testclient import TestClient

from tidegate.api.app import create_app
from tidegate.db.engine import session_scope
from tidegate.notifications import source
from tidegate.notifications.delivery import Policy, run_once


def test_a_key_used_from_a_new_address_notifies_a_webhook(loopback_settings, org, receiver):
    settings = dataclasses.replace(loopback_settings, trusted_proxies=("127.0.0.1/32",))
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as api:
        made = api.post(
            "/api/v1/org/webhooks",
            headers=org.headers(),
            json={"url": receiver.url, "events": ["api_key.used_from_new_ip"]},
        )
        assert made.status_code == 201, made.text
        signing_secret = made.json()["secret"]
        secret = org.key_for(org.admin_id, ["data:read"], name="handoff")
        for ip in ("192.0.2.10", "192.0.2.10", "192.0.2.11"):
            served = api.get("/api/v1/sources", headers={**org.headers(secret), "X-Forwarded-For": ip})
            assert served.status_code == 200, served.text
        # An audit query ships the journal first: the new-address event is in the database.
        listed = api.get(
            "/api/v1/audit/events", headers=org.headers(), params={"action": "api_key.used_from_new_ip"}
        ).json()["data"]
        assert [e["details"]["ip"] for e in listed] == ["192.0.2.11"]
    with session_scope(settings.database_url) as session:
        source.scan(session)
    run_once(settings.database_url, settings.session_key, Policy())
    (got,) = receiver.got
    body = got.json()
    assert body["type"] == "api_key.used_from_new_ip" and "192.0.2.11" in str(body)
    assert secret not in got.body.decode() and secret[:12] in got.body.decode()
    stamp, signature = (part.split("=", 1)[1] for part in got.headers["tidegate-signature"].split(","))
    expected = hmac.new(signing_secret.encode(), f"{stamp}.".encode() + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
