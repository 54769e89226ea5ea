"""Webhooks: org-admin CRUD with checked URLs (egress policy) and events, a secret shown once;
the events that notify; signed deliveries retried with exponential backoff, each attempt
sent by one process only; the delivery log; the notifications panel."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Org
from tests.notifications.signatures import verify
from tidegate.api.app import create_app
from tidegate.audit.models import AuditEvent
from tidegate.credentials.keyformat import generate_key
from tidegate.data import egress
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.notifications import source
from tidegate.notifications.delivery import Policy, deliver_due, run_once
from tidegate.notifications.models import Notification, Webhook
from tidegate.orgs import service as orgs

HOOKS = "/api/v1/org/webhooks"


def create(api, org, url, events=("api_key.leak_reported",), **extra):
    return api.post(HOOKS, headers=org.headers(), json={"url": url, "events": list(events), **extra})


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_webhook_crud_shows_the_secret_once_and_stores_it_encrypted(api, org, receiver):
    created = create(api, org, receiver.url, description="pager")
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    body = created.json()
    secret, hook_id = body["secret"], body["id"]
    assert secret.startswith("whsec_") and body["secret_prefix"] == secret[:10]
    for listed in (
        api.get(HOOKS, headers=org.headers()).json()["data"][0],
        api.get(f"{HOOKS}/{hook_id}", headers=org.headers()).json(),
    ):
        assert "secret" not in listed and listed["url"] == receiver.url
    with session_scope(org.settings.database_url) as session:
        stored = session.get(Webhook, hook_id)
        assert secret not in stored.secret_encrypted
        events = session.scalars(select(AuditEvent).where(AuditEvent.target_id == hook_id)).all()
        assert [e.action for e in events] == ["webhook.created"] and secret not in str(events[0].details)

    changed = api.patch(
        f"{HOOKS}/{hook_id}", headers=org.headers(), json={"events": ["api_key.created", "api_key.auth_failure_burst"]}
    )
    assert changed.status_code == 200 and changed.json()["events"] == ["api_key.auth_failure_burst", "api_key.created"]
    assert error(api.patch(f"{HOOKS}/{hook_id}", headers=org.headers(), json={"events": ["nope"]})) == (
        400,
        "unknown_event",
    )
    assert api.delete(f"{HOOKS}/{hook_id}", headers=org.headers()).json() == {"id": hook_id, "deleted": True}
    assert error(api.get(f"{HOOKS}/{hook_id}", headers=org.headers())) == (404, "webhook_not_found")


def test_bad_urls_and_events_are_refused_and_change_nothing(api, org, receiver):
    cases = [
        ("ftp://127.0.0.1/x", "invalid_webhook_url"),
        ("not a url", "invalid_webhook_url"),
        ("http:///nohost", "invalid_webhook_url"),
        ("http://user:pw@127.0.0.1:8080/x", "invalid_webhook_url"),
        ("http://127.0.0.1:99999/x", "invalid_webhook_url"),
        ("http://10.1.2.3/hook", "webhook_url_not_allowed"),  # private, not in the allowlist
        ("http://169.254.169.254/latest/meta-data", "webhook_url_not_allowed"),  # cloud metadata
        ("http://[::1]:8080/hook", "webhook_url_not_allowed"),  # only 127.0.0.1 is allowed here
        ("https://does-not-exist.invalid/hook", "webhook_url_unresolvable"),
    ]
    for url, code in cases:
        assert error(create(api, org, url)) == (400, code), url
    assert error(create(api, org, receiver.url, events=["api_key.deleted_everything"])) == (400, "unknown_event")
    assert error(create(api, org, receiver.url, events=[])) == (400, "invalid_parameters")
    assert api.get(HOOKS, headers=org.headers()).json()["data"] == []


def test_loopback_is_refused_unless_the_operator_allows_it(settings, org, client_ip):
    with TestClient(create_app(settings), client=(client_ip, 1)) as client:  # default policy: public only
        refused = create(client, org, "http://127.0.0.1:8080/hook")
    assert error(refused) == (400, "webhook_url_not_allowed")


def test_only_org_admins_manage_or_read_webhooks(api, org, receiver):
    member = org.add_user("m@example.com")
    member_key = org.key_for(member)  # a member's Full Access
    headers = org.headers(member_key)
    assert error(api.post(HOOKS, headers=headers, json={"url": receiver.url, "events": ["api_key.created"]}))[0] == 403
    assert api.get(HOOKS, headers=headers).status_code == 403
    assert api.get("/api/v1/org/notifications", headers=headers).status_code == 403


def notifications_of(database_url: str, org_id: str) -> list[Notification]:
    with session_scope(database_url) as session:
        return list(
            session.scalars(select(Notification).where(Notification.org_id == org_id).order_by(Notification.id))
        )


def test_the_events_that_notify(api, org, loopback_settings):
    """Full Access keys (not narrower ones), key creation switched off/on (not other
    settings), and a burst of failed authentications against a key prefix, once a window."""
    url = loopback_settings.database_url
    narrow = api.post("/api/v1/keys", headers=org.headers(), json={"name": "narrow", "scopes": ["data:read"]}).json()
    full = api.post("/api/v1/keys", headers=org.headers(), json={"name": "all of it", "preset": "full_access"}).json()
    api.patch("/api/v1/org/settings", headers=org.headers(), json={"max_keys_per_user": 30})
    api.patch("/api/v1/org/settings", headers=org.headers(), json={"api_key_creation_enabled": False})
    api.patch("/api/v1/org/settings", headers=org.headers(), json={"api_key_creation_enabled": True})
    with session_scope(url) as session:
        source.scan(session)
    got = notifications_of(url, org.id)[1:]  # (the first: the org's own Full Access admin key)
    assert [n.event_type for n in got] == ["api_key.created", "org.settings_updated", "org.settings_updated"]
    assert got[0].target_id == full["id"] and narrow["id"] not in {n.target_id for n in got}
    listed = api.get("/api/v1/org/notifications", headers=org.headers()).json()["data"]
    assert [n["summary"] for n in listed[:2]] == [
        "API key creation was switched on.",
        "API key creation was switched off.",
    ]
    assert listed[2]["summary"] == f"Key “all of it” {full['key_prefix']} was created with Full Access."


def test_a_burst_of_failed_authentications_against_a_prefix_is_recorded_once_a_window(
    loopback_settings, org, client_ip
):
    settings = dataclasses.replace(
        loopback_settings, notify=dataclasses.replace(loopback_settings.notify, auth_failure_burst=3)
    )
    key = org.key_for(org.admin_id, ["data:read"])
    wrong = key[:12] + "x" * (len(key) - 12)  # the prefix of a real key, not the key
    with TestClient(create_app(settings), client=(client_ip, 1)) as client:
        for _ in range(8):
            assert client.get("/api/v1/sources", headers=org.headers(wrong)).status_code == 401
        other_org = client.get(
            "/api/v1/sources", headers={"Authorization": f"Bearer {generate_key()}", "X-Tenant-ID": org.id}
        )
        assert other_org.status_code == 401
    with session_scope(settings.database_url) as session:
        bursts = session.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.action == "api_key.auth_failure_burst")
        ).all()
    assert len(bursts) == 1
    assert bursts[0].details["key_prefix"] == key[:12] and bursts[0].details["failures"] == 3
    assert wrong not in str(bursts[0].details)


def leak(api, org) -> None:
    key = org.key_for(org.admin_id, ["data:read"])
    assert api.post("/api/v1/keys/leaks", json=[{"token": key, "url": "https://x.test/a"}]).status_code == 200


def test_failed_deliveries_are_retried_with_exponential_backoff(api, org, receiver, loopback_settings):
    receiver.statuses = [500, 503]  # fails twice, then answers 200
    hook = create(api, org, receiver.url).json()
    leak(api, org)
    policy = Policy(retry_base_seconds=10, max_attempts=5)
    db, key = loopback_settings.database_url, loopback_settings.session_key
    t0 = utcnow()

    # (The database is shared with other tests: count what this receiver got, not rounds.)
    sent = []
    for seconds in (0, 9, 10, 29, 30, 86400):
        run_once(db, key, policy, t0 + timedelta(seconds=seconds))
        sent.append(len(receiver.got))
    # attempt 1 at 0 s (500); none before 10 s; attempt 2 at 10 s (503); none before 10 + 20 s;
    # attempt 3 at 30 s (200); then nothing more.
    assert sent == [1, 1, 2, 2, 3, 3]
    assert len(receiver.got) == 3
    assert len({r.headers["tidegate-delivery"] for r in receiver.got}) == 1  # the same delivery each time
    assert all(verify(hook["secret"], r.headers["tidegate-signature"], r.body) for r in receiver.got)
    (logged,) = api.get(f"{HOOKS}/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    assert (logged["status"], logged["attempts"], logged["last_status_code"]) == ("succeeded", 3, 200)
    assert logged["delivered_at"] is not None and logged["next_attempt_at"] is None


def test_a_delivery_gives_up_after_the_last_attempt(api, org, receiver, loopback_settings):
    receiver.statuses = [500] * 10
    hook = create(api, org, receiver.url).json()
    leak(api, org)
    policy = Policy(retry_base_seconds=1, max_attempts=3)
    t0 = utcnow()
    for seconds in (0, 1, 3, 100):
        run_once(loopback_settings.database_url, loopback_settings.session_key, policy, t0 + timedelta(seconds=seconds))
    assert len(receiver.got) == 3
    (logged,) = api.get(f"{HOOKS}/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    assert (logged["status"], logged["attempts"], logged["last_error"]) == ("failed", 3, "HTTP 500")


def test_an_unreachable_receiver_is_logged_and_retried(api, org, loopback_settings):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = create(api, org, f"http://127.0.0.1:{port}/x").json()
    leak(api, org)
    run_once(loopback_settings.database_url, loopback_settings.session_key, Policy(retry_base_seconds=60))
    (logged,) = api.get(f"{HOOKS}/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    assert logged["status"] == "pending" and logged["attempts"] == 1 and logged["last_status_code"] is None
    assert "could not deliver" in logged["last_error"] and logged["next_attempt_at"] is not None


def test_concurrent_workers_send_each_delivery_once(api, org, receiver, loopback_settings):
    create(api, org, receiver.url)
    for _ in range(5):
        leak(api, org)
    db, key = loopback_settings.database_url, loopback_settings.session_key
    with session_scope(db) as session:
        source.scan(session)
    barrier = threading.Barrier(4)
    errors = []

    def work():
        barrier.wait()
        try:
            deliver_due(db, key, Policy())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [r.headers["tidegate-delivery"] for r in receiver.got]
    assert len(ids) == 5 and len(set(ids)) == 5


def test_repeated_scans_make_each_notification_once(api, org, receiver, loopback_settings):
    create(api, org, receiver.url)
    leak(api, org)
    db = loopback_settings.database_url
    for _ in range(3):
        run_once(db, loopback_settings.session_key, Policy())
    leaks = [n for n in notifications_of(db, org.id) if n.event_type == "api_key.leak_reported"]
    assert len(leaks) == 1
    assert len(receiver.got) == 1


def test_a_deleted_webhook_gets_nothing_more(api, org, receiver, loopback_settings):
    hook = create(api, org, receiver.url).json()
    api.delete(f"{HOOKS}/{hook['id']}", headers=org.headers())
    leak(api, org)
    run_once(loopback_settings.database_url, loopback_settings.session_key, Policy())
    assert receiver.got == []


def sign_in(client: TestClient, email: str, password: str):
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    client.post("/login", data={"csrf_token": csrf, "email": email, "password": password}, follow_redirects=False)


def test_the_notifications_panel_shows_events_deliveries_and_a_count(loopback_settings, receiver, client_ip):
    password = "a-long-enough-password"
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope(loopback_settings.database_url) as session:
        made = orgs.create_organization(session, f"org-{uuid.uuid4().hex[:10]}", email, password)
        org_id = made.org.id
        member_email = f"m-{uuid.uuid4().hex[:6]}@example.com"
        orgs.create_user(session, None, org_id, email=member_email, role="member", password=password)
    with TestClient(create_app(loopback_settings), client=(client_ip, 1)) as client:
        org = Org(org_id, "", made.admin.id, "", loopback_settings)
        org.admin_key = admin_key = org.key_for(made.admin.id, None)
        create(client, org, receiver.url)
        leak(client, org)
        run_once(loopback_settings.database_url, loopback_settings.session_key, Policy())
        sign_in(client, email, password)

        home = client.get("/sources")
        assert re.search(r'id="notification-count"[^>]*>2<', home.text), "2 new: the Full Access key, the leak"
        panel = client.get("/notifications")
        assert panel.status_code == 200
        assert (
            'data-type="api_key.leak_reported"' in panel.text
            and "was reported leaked at https://x.test/a" in panel.text
        )
        assert 'data-status="succeeded"' in panel.text  # the delivery log
        assert admin_key not in panel.text
        assert 'id="notification-count"' not in client.get("/sources").text  # seen

    with TestClient(create_app(loopback_settings), client=(client_ip, 1)) as member:
        sign_in(member, member_email, password)
        assert member.get("/notifications").status_code == 403
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', member.get("/sources").text).group(1)
        tried = member.post(
            "/notifications/webhooks", data={"csrf_token": csrf, "url": receiver.url, "events": ["api_key.created"]}
        )
        assert tried.status_code == 403
        assert 'href="/notifications"' not in member.get("/sources").text


def test_another_organizations_admin_cannot_see_or_touch_a_webhook(api, org, make_org, receiver):
    hook = create(api, org, receiver.url).json()
    other = make_org()
    for method, path in (
        ("GET", f"{HOOKS}/{hook['id']}"),
        ("PATCH", f"{HOOKS}/{hook['id']}"),
        ("DELETE", f"{HOOKS}/{hook['id']}"),
        ("GET", f"{HOOKS}/{hook['id']}/deliveries"),
    ):
        answer = api.request(
            method, path, headers=other.headers(), json={"events": ["api_key.created"]} if method == "PATCH" else None
        )
        assert error(answer) == (404, "webhook_not_found"), (method, path)
    assert api.get(HOOKS, headers=other.headers()).json()["data"] == []
    assert api.get(f"{HOOKS}/{hook['id']}", headers=org.headers()).json()["events"] == ["api_key.leak_reported"]


def test_the_egress_policy_is_checked_again_at_delivery(api, org, receiver, loopback_settings):
    hook = create(api, org, receiver.url).json()  # allowed when created
    leak(api, org)
    egress.configure("public")  # the operator narrowed the policy since
    run_once(loopback_settings.database_url, loopback_settings.session_key, Policy())
    assert receiver.got == []
    (logged,) = api.get(f"{HOOKS}/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    assert logged["status"] == "pending" and "egress policy" in logged["last_error"]


def test_redirects_are_not_followed(api, org, receiver, loopback_settings):
    receiver.statuses = [302]
    hook = create(api, org, receiver.url).json()
    leak(api, org)
    run_once(loopback_settings.database_url, loopback_settings.session_key, Policy())
    assert len(receiver.got) == 1
    (logged,) = api.get(f"{HOOKS}/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    assert (logged["status"], logged["last_status_code"]) == ("pending", 302)


def test_admins_add_and_delete_webhooks_in_the_panel(loopback_settings, receiver, client_ip):
    password = "a-long-enough-password"
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope(loopback_settings.database_url) as session:
        org_id = orgs.create_organization(session, f"org-{uuid.uuid4().hex[:10]}", email, password).org.id
    with TestClient(create_app(loopback_settings), client=(client_ip, 1)) as client:
        sign_in(client, email, password)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/notifications").text).group(1)
        form = {"csrf_token": csrf, "url": receiver.url, "events": ["api_key.leak_reported", "api_key.created"]}

        forged = client.post("/notifications/webhooks", data={**form, "csrf_token": "forged"})
        assert forged.status_code == 403
        refused = client.post("/notifications/webhooks", data={**form, "url": "http://10.0.0.1/x"})
        assert refused.status_code == 400 and "egress policy" in refused.text
        unknown = client.post("/notifications/webhooks", data={**form, "events": ["nope"]})
        assert unknown.status_code == 400 and "Unknown event" in unknown.text
        with session_scope(loopback_settings.database_url) as session:
            assert session.scalars(select(Webhook).where(Webhook.org_id == org_id)).all() == []

        added = client.post("/notifications/webhooks", data=form)
        assert added.status_code == 201
        secret = re.search(r'id="webhook-secret-value">(whsec_[0-9A-Za-z]+)<', added.text).group(1)
        hook_id = re.search(r'id="webhook-secret" data-webhook-id="([^"]+)"', added.text).group(1)
        panel = client.get("/notifications").text
        assert secret not in panel and f'data-webhook-id="{hook_id}"' in panel and secret[:10] in panel

        deleted = client.post(
            f"/notifications/webhooks/{hook_id}/delete", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert deleted.status_code == 303
        assert f'data-webhook-id="{hook_id}"' not in client.get("/notifications").text
        assert client.post("/notifications/webhooks/whk_nope/delete", data={"csrf_token": csrf}).status_code == 404
    with session_scope(loopback_settings.database_url) as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.target_id == hook_id)).all()
    assert sorted(actions) == ["webhook.created", "webhook.deleted"]


def test_the_audit_log_keeps_webhook_urls_without_their_credentials(api, org, receiver, loopback_settings):
    """Many receivers carry their credential in the URL (a Slack hook's path, a SIEM's
    ?token=): the audit log, read by every auditor and exported, keeps it redacted."""
    token = "T0AAAAAAA/B0BBBBBBBBB/XXXXXXXXXXXXXXXXXXXXXXXX"
    url = f"{receiver.url}/services/{token}?token=s3cr3tvalue&channel=ops"
    made = create(api, org, url)
    assert made.status_code == 201, made.text
    hook = made.json()["id"]
    changed = api.patch(f"/api/v1/org/webhooks/{hook}", headers=org.headers(), json={"url": receiver.url + "?k=v2"})
    assert changed.status_code == 200, changed.text
    assert api.delete(f"/api/v1/org/webhooks/{hook}", headers=org.headers()).status_code < 300
    with session_scope(loopback_settings.database_url) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.target_id == hook)
        ).all()
    text = str([e.details for e in events])
    assert (
        len(events) == 3 and "XXXXXXXXXXXXXXXXXXXXXXXX" not in text and "s3cr3tvalue" not in text and "v2" not in text
    )
    assert "/services/T0AAAAAAA/B0BBBBBBBBB/[redacted]?token=[redacted]&channel=[redacted]" in text
