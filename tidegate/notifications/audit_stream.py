"""Streaming an organization's audit chain to a SIEM: NDJSON batches, signed, retried.

An org admin sets an HTTPS endpoint (`audit_stream_url`; plain http only to a loopback
address the egress policy allows) and turns the stream on. Each round, the stream of every
organization that is due sends the events chained after its cursor (`delivered_seq`), at
most BATCH per POST, in chain order, one line each exactly as the export writes its event
lines (audit.export): the receiver can check the chain itself (each line's `prev_hash` is
the `hash` of the line before it). Only chained events are sent: an event waits for its
position before it can be streamed.

The cursor moves only after a 2xx; a failure (no connection, a non-2xx answer, a URL the
egress policy now refuses) is retried `retry_base * 2**(n-1)` seconds later (at most
MAX_BACKOFF), for ever: nothing is skipped. A stream is claimed by one conditional UPDATE
(`claimed_until`, as a webhook delivery) before its batch is read, so across processes and
nodes one sends each batch; the claim outlives the request's timeout, and the cursor is
moved only while the claim is still the sender's, so a batch acknowledged is never sent
again. Receivers get `Tidegate-Org`, and `Tidegate-Signature` as webhooks.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from urllib.parse import urlsplit

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from tidegate.audit.chain import event_fields
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.credentials.keyformat import BASE62
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import InvalidRequest, TidegateError
from tidegate.notifications.models import AuditStream
from tidegate.notifications.signed_post import Outcome, post_signed
from tidegate.notifications.webhooks import (
    SECRET_PREFIX,
    check_url,
    decrypt_secret,
    destination,
    encrypt_secret,
    redacted_url,
)

log = logging.getLogger("tidegate.notifications")

BATCH = 500  # events per POST
MAX_BACKOFF = timedelta(minutes=30)
CONTENT_TYPE = "application/x-ndjson"
STREAMS_PER_ROUND = 100
BATCHES_PER_ROUND = 20  # per stream: a long backlog does not hold up the other streams


@dataclass(frozen=True)
class StreamPolicy:
    retry_base_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt in a row."""
        seconds = self.retry_base_seconds * 2 ** min(attempts - 1, 30)
        return min(timedelta(seconds=seconds), MAX_BACKOFF)

    @property
    def claim(self) -> timedelta:
        return timedelta(seconds=self.timeout_seconds * 3 + 30)


@dataclass(frozen=True)
class StreamSettings:
    """What an update changed; `secret` only when a URL was set (shown once)."""

    url: str | None
    enabled: bool
    secret: str | None = None


# ---------------------------------------------------------------------------------------
# Settings (the caller is an org admin; the caller commits)
# ---------------------------------------------------------------------------------------


def check_stream_url(url: str) -> str:
    """`url` if it is https (or http to an allowed loopback address) and the egress policy allows it."""
    url = check_url(url)  # shape, credentials, egress policy: the webhook errors
    if urlsplit(url).scheme != "https" and not ip_address(destination(url).address).is_loopback:
        raise InvalidRequest(
            "invalid_webhook_url", "url: the audit stream must be an https:// URL (http:// only to a loopback address)."
        )
    return url


def get_stream(session: Session, org_id: str) -> AuditStream | None:
    return session.get(AuditStream, org_id)


def check_update(
    session: Session, org_id: str, *, url: str | None, clear_url: bool, enabled: bool | None
) -> str | None:
    """The checked new URL (None: unchanged or cleared); 400 for a bad URL or enabling without one."""
    new_url = check_stream_url(url) if url is not None else None
    stream = session.get(AuditStream, org_id)
    if enabled and new_url is None and (clear_url or stream is None or stream.url is None):
        raise InvalidRequest("audit_stream_url_required", "audit_stream_enabled: set audit_stream_url first.")
    return new_url


def update_stream(
    session: Session,
    actor: Principal | None,
    org_id: str,
    *,
    url: str | None,
    clear_url: bool = False,
    enabled: bool | None,
    session_key: bytes,
    context: RequestContext | None = None,
) -> StreamSettings:
    """Validates before changing anything. Setting or changing the URL makes a new secret;
    clearing it (`clear_url`) turns the stream off. Enabling needs a URL."""
    new_url = check_update(session, org_id, url=url, clear_url=clear_url, enabled=enabled)
    stream = session.get(AuditStream, org_id)
    changes: dict[str, dict[str, object]] = {}
    secret = None
    if stream is None:
        if new_url is None and not enabled:
            return StreamSettings(None, False)
        stream = AuditStream(org_id=org_id, enabled=False, delivered_seq=0, attempts=0, updated_at=utcnow())
        session.add(stream)
    if new_url is not None and new_url != stream.url:
        secret = SECRET_PREFIX + "".join(secrets.choice(BASE62) for _ in range(32))
        changes["url"] = {"old": redacted_url(stream.url), "new": redacted_url(new_url)}
        changes["secret_prefix"] = {"old": stream.secret_prefix, "new": secret[: len(SECRET_PREFIX) + 4]}
        stream.url, stream.secret_encrypted = new_url, encrypt_secret(secret, session_key)
        stream.secret_prefix = secret[: len(SECRET_PREFIX) + 4]
    elif clear_url and stream.url is not None:
        changes["url"] = {"old": redacted_url(stream.url), "new": None}
        stream.url = stream.secret_encrypted = stream.secret_prefix = None
        enabled = False
    if enabled is not None and enabled != stream.enabled:
        changes["enabled"] = {"old": stream.enabled, "new": enabled}
        stream.enabled = enabled
    if changes:
        # A new endpoint or a restart is tried at the next round, not after the old backoff.
        stream.attempts, stream.next_attempt_at, stream.last_error, stream.last_status_code = 0, None, None, None
        stream.updated_at = utcnow()
        record(
            session,
            actor,
            "org.audit_stream_updated",
            org_id=org_id,
            target_type="organization",
            target_id=org_id,
            details=changes,
            context=context,
        )
    return StreamSettings(stream.url, stream.enabled, secret)


# ---------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------


def _due(now: datetime):
    return (
        AuditStream.enabled.is_(True),
        AuditStream.url.is_not(None),
        or_(AuditStream.next_attempt_at.is_(None), AuditStream.next_attempt_at <= now),
        or_(AuditStream.claimed_until.is_(None), AuditStream.claimed_until < now),
    )


def _claim(database_url: str, org_id: str, now: datetime, policy: StreamPolicy) -> datetime | None:
    """Hold the stream until the returned time, or None if another process holds it."""
    until = now + policy.claim
    with session_scope(database_url) as session:
        result = session.execute(
            update(AuditStream)
            .where(AuditStream.org_id == org_id, *_due(now))
            .values(claimed_until=until)
            .execution_options(synchronize_session=False)
        )
        return until if result.rowcount == 1 else None  # type: ignore[attr-defined]  # a CursorResult


def batch_body(session: Session, org_id: str, after: int, limit: int = BATCH) -> tuple[bytes, int]:
    """The NDJSON of the org's chained events after position `after` (at most `limit`), and the last position."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq > after)
        .order_by(AuditEvent.chain_seq)
        .limit(limit)
    ).all()
    lines = [orjson.dumps({"type": "event", "hash": row.hash, **event_fields(row)}) + b"\n" for row in rows]
    return b"".join(lines), (rows[-1].chain_seq or after) if rows else after


def send_next(
    database_url: str, session_key: bytes, org_id: str, claim: datetime, now: datetime, policy: StreamPolicy
) -> bool:
    """Send the claimed stream's next batch and record the outcome; True if a batch was acknowledged."""
    with session_scope(database_url) as session:
        stream = session.get(AuditStream, org_id)
        if stream is None or stream.url is None or stream.secret_encrypted is None:
            return False
        url, after = stream.url, stream.delivered_seq
        body, last = batch_body(session, org_id, after)
        secret, unreadable = "", None
        try:
            secret = decrypt_secret(stream.secret_encrypted, session_key)
        except TidegateError as exc:
            unreadable = exc.message
    if not body:
        _release(database_url, org_id, claim)
        return False
    if unreadable is not None:
        outcome = Outcome(False, None, unreadable[:500])
    else:
        headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "tidegate-audit-stream", "Tidegate-Org": org_id}
        outcome = post_signed(url, secret, body, headers, policy.timeout_seconds)
    with session_scope(database_url) as session:
        # Only while this process still holds the claim, and the stream still points there.
        held = (AuditStream.org_id == org_id, AuditStream.claimed_until == claim, AuditStream.url == url)
        values: dict[str, object] = {
            "claimed_until": None,
            "last_attempt_at": utcnow(),
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
        }
        if outcome.ok:
            values.update(delivered_seq=last, delivered_at=utcnow(), attempts=0, next_attempt_at=None)
            session.execute(
                update(AuditStream)
                .where(*held, AuditStream.delivered_seq == after)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        else:
            attempts = session.scalar(select(AuditStream.attempts).where(*held))
            if attempts is not None:
                values.update(attempts=attempts + 1, next_attempt_at=now + policy.backoff(attempts + 1))
                session.execute(
                    update(AuditStream).where(*held).values(**values).execution_options(synchronize_session=False)
                )
    return outcome.ok


def _release(database_url: str, org_id: str, claim: datetime) -> None:
    with session_scope(database_url) as session:
        session.execute(
            update(AuditStream)
            .where(AuditStream.org_id == org_id, AuditStream.claimed_until == claim)
            .values(claimed_until=None)
            .execution_options(synchronize_session=False)
        )


def deliver_due(database_url: str, session_key: bytes, policy: StreamPolicy, now: datetime | None = None) -> int:
    """Send every due stream's next batches (until it is caught up or fails); batches acknowledged."""
    now = now or utcnow()
    with session_scope(database_url) as session:
        due = session.scalars(
            select(AuditStream.org_id).where(*_due(now)).order_by(AuditStream.org_id).limit(STREAMS_PER_ROUND)
        ).all()
    sent = 0
    for org_id in due:
        try:
            for _ in range(BATCHES_PER_ROUND):
                claim = _claim(database_url, org_id, now, policy)
                if claim is None or not send_next(database_url, session_key, org_id, claim, now, policy):
                    break
                sent += 1
        except Exception:  # noqa: BLE001 - one stream's failure must not stop the others
            log.exception("audit stream of %s failed; its claim runs out and it is retried", org_id)
    return sent


def pending_events(session: Session, org_id: str, stream: AuditStream | None) -> int:
    """Chained events the stream has not delivered yet."""
    after = stream.delivered_seq if stream else 0
    count = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.chain_seq > after)
    )
    return int(count or 0)
