"""Sending queued webhook deliveries: signed, retried with exponential backoff, once at a time.

A due delivery (pending, its next attempt time reached) is claimed by one conditional UPDATE
that sets `claimed_until` only if nobody holds it: of all the processes and nodes that see
it due, exactly one sends each attempt. The claim outlives the request's timeout, so it only
runs out when its holder died mid-attempt; the delivery is then due again. Receivers get
the delivery's id (`Tidegate-Delivery`) to drop a repeat should one ever happen (the
receiver answered but the outcome was not recorded).

Attempt n failing (no connection, timeout, a non-2xx answer, a URL the egress policy now
refuses) is retried `base * 2**(n-1)` seconds later, until `max_attempts`; then the
delivery is `failed`. Each attempt's status code or error is kept (the delivery log).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tidegate.db.base import isoformat, utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import TidegateError
from tidegate.notifications import audit_stream, source
from tidegate.notifications.models import Notification, Webhook, WebhookDelivery
from tidegate.notifications.signed_post import Outcome, post_signed
from tidegate.notifications.webhooks import decrypt_secret

log = logging.getLogger("tidegate.notifications")

BATCH = 50
MAX_BACKOFF = timedelta(hours=6)


@dataclass(frozen=True)
class Policy:
    retry_base_seconds: float = 30.0
    max_attempts: int = 8
    timeout_seconds: float = 10.0

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt."""
        return min(timedelta(seconds=self.retry_base_seconds * 2 ** (attempts - 1)), MAX_BACKOFF)

    @property
    def claim(self) -> timedelta:
        return timedelta(seconds=self.timeout_seconds * 3 + 30)

    @property
    def stream(self) -> audit_stream.StreamPolicy:
        """The audit streams retry on the same schedule (but never give up)."""
        return audit_stream.StreamPolicy(self.retry_base_seconds, self.timeout_seconds)


def payload(notification: Notification) -> bytes:
    """The body every webhook of the notification gets (no secret: audit details hold none)."""
    return orjson.dumps(
        {
            "id": notification.id,
            "type": notification.event_type,
            "created": int(notification.occurred_at.timestamp()),
            "occurred_at": isoformat(notification.occurred_at),
            "organization_id": notification.org_id,
            "data": {
                "event_id": notification.event_id,
                "target_type": notification.target_type,
                "target_id": notification.target_id,
                "ip_address": notification.ip_address,
                "details": notification.details or {},
            },
        }
    )


def _due(now: datetime):
    return (
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
    )


def _claim(database_url: str, delivery_id: str, now: datetime, policy: Policy) -> bool:
    with session_scope(database_url) as session:
        result = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, *_due(now))
            .values(claimed_until=now + policy.claim)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]  # a CursorResult for an UPDATE


def send(url: str, secret: str, delivery_id: str, event_type: str, body: bytes, timeout: float) -> Outcome:
    """POST a webhook delivery's `body` to `url`, signed (see `post_signed`)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tidegate-webhooks",
        "Tidegate-Event": event_type,
        "Tidegate-Delivery": delivery_id,
    }
    return post_signed(url, secret, body, headers, timeout)


def deliver_one(database_url: str, session_key: bytes, delivery_id: str, now: datetime, policy: Policy) -> bool:
    """Attempt one claimed delivery and record its outcome; True if it succeeded."""
    with session_scope(database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        webhook = session.get(Webhook, delivery.webhook_id) if delivery else None
        notification = session.get(Notification, delivery.notification_id) if delivery else None
        if delivery is None or webhook is None or notification is None:
            return False
        url, body, event_type = webhook.url, payload(notification), delivery.event_type
        gone = webhook.deleted_at is not None
        secret, unreadable = "", None
        try:
            secret = decrypt_secret(webhook.secret_encrypted, session_key)
        except TidegateError as exc:
            unreadable = exc.message
    if gone:
        outcome = Outcome(False, None, "The webhook was deleted.")
    elif unreadable is not None:
        outcome = Outcome(False, None, unreadable[:500])
    else:
        outcome = send(url, secret, delivery_id, event_type, body, policy.timeout_seconds)
    with session_scope(database_url) as session:
        _record(session, delivery_id, outcome, now, policy, final=gone)
    return outcome.ok


def _record(session: Session, delivery_id: str, outcome: Outcome, now: datetime, policy: Policy, final: bool) -> None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return
    delivery.attempts += 1
    delivery.last_attempt_at = utcnow()
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    delivery.claimed_until = None
    if outcome.ok:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = "succeeded", utcnow(), None
    elif final or delivery.attempts >= policy.max_attempts:
        delivery.status, delivery.next_attempt_at = "failed", None
    else:
        delivery.next_attempt_at = now + policy.backoff(delivery.attempts)


def deliver_due(database_url: str, session_key: bytes, policy: Policy, now: datetime | None = None) -> int:
    """Attempt every due delivery this process can claim; how many were attempted."""
    now = now or utcnow()
    with session_scope(database_url) as session:
        due = session.scalars(
            select(WebhookDelivery.id).where(*_due(now)).order_by(WebhookDelivery.next_attempt_at).limit(BATCH)
        ).all()
    attempted = 0
    for delivery_id in due:
        if not _claim(database_url, delivery_id, now, policy):
            continue  # another process has it
        attempted += 1
        try:
            deliver_one(database_url, session_key, delivery_id, now, policy)
        except Exception:  # noqa: BLE001 - one delivery's failure must not stop the others
            log.exception("webhook delivery %s failed; its claim runs out and it is retried", delivery_id)
    return attempted


def run_once(database_url: str, session_key: bytes, policy: Policy, now: datetime | None = None) -> int:
    """A scan of the audit log, the deliveries due, then the audit streams due: what the
    worker does each round; how many webhook deliveries were attempted."""
    with session_scope(database_url) as session:
        source.scan(session, now)
    attempted = deliver_due(database_url, session_key, policy, now)
    try:
        audit_stream.deliver_due(database_url, session_key, policy.stream, now)
    except Exception:  # noqa: BLE001 - the webhooks are not held up by the streams
        log.exception("audit streams round failed; will retry")
    return attempted


class NotificationWorker:
    """Runs `run_once` every `interval` seconds in a daemon thread of each server process."""

    def __init__(
        self, database_url: str, session_key: bytes, policy: Policy, interval: float = 5.0, clock: Callable = utcnow
    ):
        self.database_url, self.session_key, self.policy, self.interval = database_url, session_key, policy, interval
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    run_once(self.database_url, self.session_key, self.policy, self.clock())
                except Exception:  # noqa: BLE001 - the next round retries
                    log.exception("notifications round failed; will retry")

        self._thread = threading.Thread(target=loop, name="tidegate-notifications", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
