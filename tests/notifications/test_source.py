"""The notification source: audit events of the subscribed action names become notifications
and queued deliveries in one transaction with the cursor, so a crash loses nothing and a
late-committed event is still seen; events other modules write are picked up by name."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row, record
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.notifications import source
from tidegate.notifications.delivery import Policy, run_once
from tidegate.notifications.models import Notification, NotificationCursor, WebhookDelivery
from tidegate.orgs.epoch import bump_access_epoch


def emit(database_url: str, org_id: str, action: str, **details) -> None:
    """An event as another module writes it (e.g. the new-IP and expiry detectors)."""
    with session_scope(database_url) as session:
        record(session, None, action, org_id=org_id, target_type="api_key", target_id="key_x", details=details)
        bump_access_epoch(session, org_id)


def of_org(database_url: str, org_id: str, model):
    with session_scope(database_url) as session:
        return list(session.scalars(select(model).where(model.org_id == org_id)))


def test_a_crash_before_the_commit_loses_nothing(api, org, receiver, loopback_settings):
    db = loopback_settings.database_url
    api.post(
        "/api/v1/org/webhooks", headers=org.headers(), json={"url": receiver.url, "events": ["api_key.expiring_soon"]}
    )
    emit(db, org.id, "api_key.expiring_soon", key_prefix="qk_AAAAAAAAA", name="nightly")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        with session_scope(db) as session:
            assert source.scan(session) >= 1
            raise Crash  # the process dies before its transaction commits
    assert not [n for n in of_org(db, org.id, Notification) if n.event_type == "api_key.expiring_soon"]

    run_once(db, loopback_settings.session_key, Policy())
    (notified,) = [n for n in of_org(db, org.id, Notification) if n.event_type == "api_key.expiring_soon"]
    (delivery,) = of_org(db, org.id, WebhookDelivery)
    assert delivery.notification_id == notified.id and delivery.status == "succeeded"
    assert [r.json()["type"] for r in receiver.got] == ["api_key.expiring_soon"]


def test_an_event_committed_late_is_still_seen(org, loopback_settings):
    """An event whose id (its creation time) is older than the cursor, committed after a scan
    passed its time (a long transaction, the audit journal shipping late)."""
    db = loopback_settings.database_url
    with session_scope(db) as session:
        source.scan(session)
        session.get(NotificationCursor, source.CURSOR).scanned_to = utcnow() + timedelta(minutes=5)  # ahead
    late = event_row(
        org_id=org.id,
        actor_type="api_key",
        actor_id="key_x",
        action="api_key.used_from_new_ip",
        timestamp=utcnow() - timedelta(minutes=20),
        ip_address="203.0.113.7",
        details={"key_prefix": "qk_BBBBBBBBB"},
    )
    late["id"] = source.event_id_floor(utcnow() - timedelta(minutes=20))[:-16] + "z" * 16
    with session_scope(db) as session:
        session.add(AuditEvent(**late))
    with session_scope(db) as session:
        source.scan(session)
    (notified,) = [n for n in of_org(db, org.id, Notification) if n.event_type == "api_key.used_from_new_ip"]
    assert notified.ip_address == "203.0.113.7" and notified.event_id == late["id"]


@pytest.mark.parametrize("action", ["api_key.used_from_new_ip", "api_key.expiring_soon"])
def test_events_of_other_modules_notify_by_action_name(api, org, loopback_settings, action):
    emit(loopback_settings.database_url, org.id, action, key_prefix="qk_CCCCCCCCC", name="etl")
    with session_scope(loopback_settings.database_url) as session:
        source.scan(session)
    listed = api.get("/api/v1/org/notifications", headers=org.headers()).json()["data"]
    assert listed[0]["type"] == action and "qk_CCCCCCCCC" in listed[0]["summary"]


def test_other_actions_do_not_notify(org, loopback_settings):
    emit(loopback_settings.database_url, org.id, "api_key.renamed", key_prefix="qk_DDDDDDDDD")
    emit(loopback_settings.database_url, org.id, "org.settings_updated", max_keys_per_user={"old": 10, "new": 5})
    with session_scope(loopback_settings.database_url) as session:
        source.scan(session)
    types = [n.event_type for n in of_org(loopback_settings.database_url, org.id, Notification)]
    assert "api_key.renamed" not in types and "org.settings_updated" not in types


def test_a_clock_set_ahead_does_not_move_the_cursor_past_new_events(org, loopback_settings):
    db = loopback_settings.database_url
    with session_scope(db) as session:
        source.scan(session, utcnow() + timedelta(days=1))  # a node whose clock is a day ahead
    emit(db, org.id, "api_key.expiring_soon", key_prefix="qk_EEEEEEEEE")
    with session_scope(db) as session:
        source.scan(session)
    assert [n for n in of_org(db, org.id, Notification) if n.event_type == "api_key.expiring_soon"]


def test_an_event_stamped_ahead_does_not_move_the_cursor_past_new_events(org, loopback_settings):
    """An event written by a node whose clock is a day fast (or stamped ahead by a job run for a
    future moment) must not carry the shared cursor past what the other nodes write meanwhile."""
    db = loopback_settings.database_url
    ahead = event_row(
        org_id=org.id,
        actor_type="system",
        actor_id="tidegate",
        action="api_key.expiring_soon",
        timestamp=utcnow() + timedelta(days=1),
        details={"key_prefix": "qk_FFFFFFFFF"},
    )
    with session_scope(db) as session:
        session.add(AuditEvent(**ahead))
    with session_scope(db) as session:
        source.scan(session)
    with session_scope(db) as session:
        source.scan(session, utcnow() + timedelta(days=2))  # and a node whose clock is fast scans it
    emit(db, org.id, "api_key.expiring_soon", key_prefix="qk_GGGGGGGGG")
    with session_scope(db) as session:
        source.scan(session)
    notified = [str(n.details) for n in of_org(db, org.id, Notification) if n.event_type == "api_key.expiring_soon"]
    assert any("qk_GGGGGGGGG" in s for s in notified), notified


def test_the_first_scan_ever_by_a_node_whose_clock_is_fast_hides_nothing(org, loopback_settings):
    db = loopback_settings.database_url
    with session_scope(db) as session:
        session.query(NotificationCursor).delete()  # a new deployment: no cursor yet
    with session_scope(db) as session:
        source.scan(session, utcnow() + timedelta(days=1))
    emit(db, org.id, "api_key.expiring_soon", key_prefix="qk_HHHHHHHHH")
    with session_scope(db) as session:
        source.scan(session)
    notified = [str(n.details) for n in of_org(db, org.id, Notification) if n.event_type == "api_key.expiring_soon"]
    assert any("qk_HHHHHHHHH" in s for s in notified), notified
