"""Streaming the audit chain to a SIEM: org-admin settings with a secret shown once, checked
URLs (https, or loopback when the egress policy allows it), NDJSON batches of chained events
in chain order, signed; retried with backoff, nothing lost or sent twice; one org's events
never go to another's endpoint."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import Org
from tests.notifications.signatures import verify
from tests.notifications.test_webhooks import sign_in
from tidegate.api.app import create_app
from tidegate.audit.chain import GENESIS, event_hash
from tidegate.audit.chainer import chain_round
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import record
from tidegate.audit.signing import load_signer
from tidegate.audit.verify import verify_chain
from tidegate.data import egress
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest
from tidegate.notifications import audit_stream
from tidegate.notifications.audit_stream import StreamPolicy, deliver_due
from tidegate.notifications.delivery import Policy, run_once
from tidegate.notifications.models import AuditStream
from tidegate.orgs import service as orgs

SETTINGS = "/api/v1/org/settings"
STREAM = "/api/v1/org/audit-stream"
POLICY = StreamPolicy(retry_base_seconds=30.0, timeout_seconds=5.0)


@pytest.fixture
def signer(tmp_path):
    return load_signer(tmp_path)


def add_events(url: str, org_id: str, n: int) -> None:
    with session_scope(url) as session:
        for i in range(n):
            record(session, None, "test.event", org_id=org_id, target_type="test", target_id=str(i), details={"i": i})


def chain_all(api, url: str, signer) -> None:
    """Ship the app's pending request events and chain everything (the app's own journal
    thread chains too: a round that lost the race to it is run again)."""
    api.app.state.journal.flush()
    for _ in range(100):
        chain_round(url, signer, force_sign=True)
        with session_scope(url) as session:
            if session.scalar(select(AuditEvent.id).where(AuditEvent.chain_seq.is_(None)).limit(1)) is None:
                return
        time.sleep(0.05)
    raise AssertionError("events left unchained")


def chained_ids(url: str, org_id: str) -> list[str]:
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(AuditEvent.id)
                .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq.is_not(None))
                .order_by(AuditEvent.chain_seq)
            )
        )


def lines(received) -> list[dict]:
    return [json.loads(line) for line in received.body.splitlines()]


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def start_stream(api, org, url: str) -> str:
    response = api.patch(SETTINGS, headers=org.headers(), json={"audit_stream_url": url, "audit_stream_enabled": True})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()["audit_stream_secret"]


def test_the_chain_arrives_as_signed_ndjson_in_order(api, org, receiver, signer):
    url = org.settings.database_url
    secret = start_stream(api, org, receiver.url)
    add_events(url, org.id, 7)
    chain_all(api, url, signer)
    assert deliver_due(url, org.settings.session_key, POLICY) == 1
    assert deliver_due(url, org.settings.session_key, POLICY) == 0  # caught up: nothing sent again
    assert len(receiver.got) == 1
    got = receiver.got[0]
    assert got.headers["content-type"] == "application/x-ndjson" and got.headers["tidegate-org"] == org.id
    assert verify(secret, got.headers["tidegate-signature"], got.body)
    events = lines(got)
    assert [e["id"] for e in events] == chained_ids(url, org.id)
    assert [e["chain_seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["type"] == "event" and e["org_id"] == org.id for e in events)
    # The receiver checks the chain itself: each hash recomputes and links to the one before.
    assert events[0]["prev_hash"] == GENESIS
    for before, event in zip(events, events[1:], strict=False):
        assert event["prev_hash"] == before["hash"]
    assert all(event_hash(e) == e["hash"] for e in events)
    assert verify_chain(org.id, events, [], {signer.key_id: signer.public}).problem is None

    # Later events go in the next batch, from where the last one ended.
    add_events(url, org.id, 3)
    chain_all(api, url, signer)
    deliver_due(url, org.settings.session_key, POLICY)
    more = lines(receiver.got[1])
    assert [e["chain_seq"] for e in more] == list(range(len(events) + 1, len(events) + len(more) + 1))
    assert more[0]["prev_hash"] == events[-1]["hash"]
    status = api.get(STREAM, headers=org.headers()).json()
    assert status["delivered_seq"] == more[-1]["chain_seq"] and status["last_error"] is None
    assert status["url"] == receiver.url and status["enabled"] is True and secret not in json.dumps(status)


def test_unchained_events_wait_and_batches_hold_at_most_500(api, org, receiver, signer):
    url = org.settings.database_url
    start_stream(api, org, receiver.url)
    with session_scope(url) as session:  # an event without its position yet is not in a batch
        record(session, None, "test.event", org_id=org.id, target_type="test", target_id="x")
        session.flush()
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.chain_seq.is_(None)))
        body, _ = audit_stream.batch_body(session, org.id, 0)
        assert all(json.loads(line)["chain_seq"] is not None for line in body.splitlines())
    add_events(url, org.id, 1100)
    chain_all(api, url, signer)
    assert deliver_due(url, org.settings.session_key, POLICY) == 3
    sizes = [len(lines(r)) for r in receiver.got]
    assert sizes[:2] == [500, 500] and sum(sizes) == len(chained_ids(url, org.id))
    with session_scope(url) as session:
        assert audit_stream.pending_events(session, org.id, session.get(AuditStream, org.id)) == 0
    seqs = [e["chain_seq"] for r in receiver.got for e in lines(r)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_failing_receiver_is_retried_with_backoff_and_nothing_is_lost_or_repeated(api, org, receiver, signer):
    url, key = org.settings.database_url, org.settings.session_key
    start_stream(api, org, receiver.url)
    add_events(url, org.id, 4)
    chain_all(api, url, signer)
    receiver.statuses = [500, 503]
    now = utcnow()
    assert deliver_due(url, key, POLICY, now) == 0
    status = api.get(STREAM, headers=org.headers()).json()
    assert status["delivered_seq"] == 0 and status["attempts"] == 1 and status["last_error"] == "HTTP 500"
    assert status["last_status_code"] == 500 and status["next_attempt_at"] is not None
    assert deliver_due(url, key, POLICY, now + timedelta(seconds=29)) == 0  # backing off: not yet
    assert len(receiver.got) == 1
    assert deliver_due(url, key, POLICY, now + timedelta(seconds=31)) == 0  # second failure: 60 s now
    assert deliver_due(url, key, POLICY, now + timedelta(seconds=31 + 59)) == 0
    assert len(receiver.got) == 2
    add_events(url, org.id, 2)  # chained while it was failing: go with the same retry
    chain_all(api, url, signer)
    assert deliver_due(url, key, POLICY, now + timedelta(seconds=31 + 61)) == 1
    first, second = lines(receiver.got[0]), lines(receiver.got[1])
    assert second[: len(first)] == first  # the same batch, retried whole (plus what was chained since)
    delivered = lines(receiver.got[2])
    assert [e["chain_seq"] for e in delivered] == list(range(1, len(delivered) + 1))  # nothing lost, in order
    assert [e["id"] for e in delivered] == chained_ids(url, org.id)[: len(delivered)]
    assert len(delivered) >= 6
    assert deliver_due(url, key, POLICY, now + timedelta(hours=1)) == 0 and len(receiver.got) == 3
    status = api.get(STREAM, headers=org.headers()).json()
    assert status["attempts"] == 0 and status["next_attempt_at"] is None and status["last_error"] is None
    assert status["delivered_seq"] == delivered[-1]["chain_seq"]


def test_concurrent_workers_send_each_batch_once(api, org, receiver, signer):
    url, key = org.settings.database_url, org.settings.session_key
    start_stream(api, org, receiver.url)
    add_events(url, org.id, 30)
    chain_all(api, url, signer)
    expected = len(chained_ids(url, org.id))
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        deliver_due(url, key, POLICY)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [e["chain_seq"] for r in receiver.got for e in lines(r)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= expected


def test_another_organizations_events_are_never_sent(api, org, make_org, receiver, signer):
    url = org.settings.database_url
    other = make_org()
    start_stream(api, org, receiver.url)
    add_events(url, other.id, 5)
    add_events(url, org.id, 2)
    chain_all(api, url, signer)
    deliver_due(url, org.settings.session_key, POLICY)
    sent = [e for r in receiver.got for e in lines(r)]
    assert sent and {e["org_id"] for e in sent} == {org.id}
    assert {r.headers["tidegate-org"] for r in receiver.got} == {org.id}
    # The other org's admin sees its own (empty) stream, not this one.
    assert api.get(STREAM, headers=other.headers()).json()["url"] is None
    assert api.get(SETTINGS, headers=other.headers()).json()["audit_stream_url"] is None


def test_the_secret_is_shown_once_stored_encrypted_and_renewed_with_the_url(api, org, receiver, signer):
    url = org.settings.database_url
    secret = start_stream(api, org, receiver.url)
    assert secret.startswith("whsec_")
    for response in (api.get(SETTINGS, headers=org.headers()), api.get(STREAM, headers=org.headers())):
        assert secret not in response.text and "audit_stream_secret" not in response.json()
    toggled = api.patch(SETTINGS, headers=org.headers(), json={"audit_stream_enabled": True})
    assert "audit_stream_secret" not in toggled.json()  # no new URL, no new secret
    with session_scope(url) as session:
        stored = session.get(AuditStream, org.id)
        assert secret not in (stored.secret_encrypted or "") and stored.secret_prefix == secret[:10]
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.action == "org.audit_stream_updated")
        ).all()
        assert len(audited) == 1 and audited[0].details["url"] == {"old": None, "new": receiver.url}
        assert secret not in json.dumps(audited[0].details)
    renewed = api.patch(SETTINGS, headers=org.headers(), json={"audit_stream_url": receiver.url + "/v2"})
    new_secret = renewed.json()["audit_stream_secret"]
    assert new_secret != secret
    add_events(url, org.id, 1)
    chain_all(api, url, signer)
    deliver_due(url, org.settings.session_key, POLICY)
    got = receiver.got[-1]
    assert verify(new_secret, got.headers["tidegate-signature"], got.body)
    assert not verify(secret, got.headers["tidegate-signature"], got.body)


def test_clearing_the_url_stops_the_stream(api, org, receiver, signer):
    url = org.settings.database_url
    start_stream(api, org, receiver.url)
    cleared = api.patch(SETTINGS, headers=org.headers(), json={"audit_stream_url": None})
    assert cleared.status_code == 200
    assert (cleared.json()["audit_stream_url"], cleared.json()["audit_stream_enabled"]) == (None, False)
    add_events(url, org.id, 2)
    chain_all(api, url, signer)
    assert deliver_due(url, org.settings.session_key, POLICY) == 0 and receiver.got == []
    assert error(api.patch(SETTINGS, headers=org.headers(), json={"audit_stream_enabled": True})) == (
        400,
        "audit_stream_url_required",
    )


def test_bad_urls_are_refused_and_change_nothing(api, org, receiver):
    cases = [
        ("ftp://127.0.0.1/x", "invalid_webhook_url"),
        ("http://user:pw@127.0.0.1:8080/x", "invalid_webhook_url"),
        ("http://10.1.2.3/siem", "webhook_url_not_allowed"),  # private, not in the allowlist
        ("https://169.254.169.254/latest", "webhook_url_not_allowed"),  # cloud metadata
        ("https://does-not-exist.invalid/siem", "webhook_url_unresolvable"),
    ]
    for bad, code in cases:
        body = {"audit_stream_url": bad, "audit_stream_enabled": True, "unused_key_days": 7}
        assert error(api.patch(SETTINGS, headers=org.headers(), json=body)) == (400, code), bad
    settings = api.get(SETTINGS, headers=org.headers()).json()
    assert settings["audit_stream_url"] is None and settings["unused_key_days"] != 7  # nothing changed
    with session_scope(org.settings.database_url) as session:
        assert session.get(AuditStream, org.id) is None


def test_plain_http_is_refused_unless_the_address_is_loopback(org):
    # Everything allowed by the egress policy: only the scheme rule refuses.
    egress.configure("0.0.0.0/0")
    try:
        with pytest.raises(InvalidRequest) as refused:
            audit_stream.check_stream_url("http://1.1.1.1/siem")
        assert refused.value.code == "invalid_webhook_url"
        assert audit_stream.check_stream_url("https://1.1.1.1/siem") == "https://1.1.1.1/siem"
        assert audit_stream.check_stream_url("http://127.0.0.1:9/siem") == "http://127.0.0.1:9/siem"
    finally:
        egress.configure("")


def test_loopback_is_refused_unless_the_operator_allows_it(settings, org, receiver, client_ip):
    with TestClient(create_app(settings), client=(client_ip, 50000)) as api:  # the default egress policy
        body = {"audit_stream_url": receiver.url, "audit_stream_enabled": True}
        assert error(api.patch(SETTINGS, headers=org.headers(), json=body)) == (400, "webhook_url_not_allowed")


def test_only_org_admins_set_or_read_the_stream(api, org, receiver):
    member = org.add_user("m@example.com")
    headers = org.headers(org.key_for(member))
    assert api.patch(SETTINGS, headers=headers, json={"audit_stream_url": receiver.url}).status_code == 403
    assert api.get(STREAM, headers=headers).status_code == 403
    with session_scope(org.settings.database_url) as session:
        assert session.get(AuditStream, org.id) is None


def test_the_egress_policy_is_checked_again_at_send(api, org, receiver, signer, loopback_settings):
    url = org.settings.database_url
    start_stream(api, org, receiver.url)
    add_events(url, org.id, 2)
    chain_all(api, url, signer)
    egress.configure("")  # the operator removed loopback from the allowlist
    assert deliver_due(url, org.settings.session_key, POLICY) == 0 and receiver.got == []
    status = api.get(STREAM, headers=org.headers()).json()
    assert "egress policy" in status["last_error"] and status["delivered_seq"] == 0


def test_the_security_page_shows_the_stream(loopback_settings, receiver, client_ip, signer):
    password = "a-long-enough-password"
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope(loopback_settings.database_url) as session:
        made = orgs.create_organization(session, f"org-{uuid.uuid4().hex[:10]}", email, password)
    with TestClient(create_app(loopback_settings), client=(client_ip, 1)) as client:
        org = Org(made.org.id, "", made.admin.id, "", loopback_settings)
        org.admin_key = org.key_for(made.admin.id, None)
        sign_in(client, email, password)
        assert "Not streaming." in client.get("/settings/security").text
        secret = start_stream(client, org, receiver.url)
        receiver.statuses = [502]
        chain_all(client, loopback_settings.database_url, signer)
        deliver_due(loopback_settings.database_url, loopback_settings.session_key, POLICY)
        page = client.get("/settings/security").text
        assert receiver.url in page and "HTTP 502" in page and "nothing yet" in page
        assert secret not in page and secret[:10] in page


def test_the_notifications_worker_round_streams_too(api, org, receiver, signer):
    url = org.settings.database_url
    start_stream(api, org, receiver.url)
    chain_all(api, url, signer)
    run_once(url, org.settings.session_key, Policy())
    assert receiver.got and [e["id"] for e in lines(receiver.got[0])] == chained_ids(url, org.id)
