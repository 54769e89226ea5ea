"""An organization's webhooks: checked URLs, subscribed events, an encrypted signing secret.

The URL must be http(s) and obey the connector egress policy (tidegate.data.egress:
private, loopback and the metadata database are refused unless TIDEGATE_CONNECTOR_ALLOW
allows them), checked when it is set and again at every delivery (the name is resolved once
per delivery and the request goes to the checked address). The secret (`whsec_...`) is shown
once, at creation; it is stored as a Fernet token, since deliveries must be signed with it.

Signing (Stripe's scheme): `Tidegate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" under the secret>`; a receiver recomputes it and rejects old timestamps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.audit.record import RequestContext, record
from tidegate.core.principal import Principal
from tidegate.credentials.keyformat import BASE62
from tidegate.data import egress
from tidegate.db.base import utcnow
from tidegate.errors import InvalidRequest, NotFound
from tidegate.ids import new_id
from tidegate.notifications.events import EVENT_TYPES
from tidegate.notifications.models import Webhook

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2000
MAX_WEBHOOKS_PER_ORG = 20
SIGNATURE_HEADER = "Tidegate-Signature"


@dataclass(frozen=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str


# ---------------------------------------------------------------------------------------
# The secret: generated, encrypted at rest, used to sign
# ---------------------------------------------------------------------------------------


def _fernet(session_key: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tidegate webhook secrets v1").derive(session_key)
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: str, session_key: bytes) -> str:
    return _fernet(session_key).encrypt(secret.encode()).decode()


def decrypt_secret(token: str, session_key: bytes) -> str:
    try:
        return _fernet(session_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise InvalidRequest(
            "webhook_secret_unreadable",
            "The webhook's secret cannot be decrypted (was the session key changed?); create the webhook again.",
        ) from None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Tidegate-Signature` header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL whose host the egress policy allows; 400 otherwise."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest("invalid_webhook_url", f"url: at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("invalid_webhook_url", "url: not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("invalid_webhook_url", "url: must be an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("invalid_webhook_url", "url: must not carry credentials (use the signing secret).")
    if parts.fragment or any(ord(c) < 33 for c in url):
        raise InvalidRequest("invalid_webhook_url", "url: must not contain spaces, control characters or a fragment.")
    destination(url, port)
    return url


_TOKEN_LIKE = re.compile(r"[^/]{16,}")


def redacted_url(url: str | None) -> str | None:
    """`url` as the audit log keeps it: many receivers put their credential in the URL (Slack,
    Teams and Discord hooks in the path, SIEM inputs in `?token=`), and audit events are read by
    every auditor and exported. Query values and any path segment of 16 characters or more
    become `[redacted]`; the scheme, host, port and short path segments stay."""
    if url is None:
        return None
    parts = urlsplit(url)
    path = "/".join("[redacted]" if _TOKEN_LIKE.fullmatch(segment) else segment for segment in parts.path.split("/"))
    query = urlencode([(name, "[redacted]") for name, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="[]")
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def destination(url: str, port: int | None = None) -> egress.Destination:
    """Where to send to `url`: its host resolved once and checked against the egress policy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = port if port is not None else parts.port
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        return egress.check_destination(host, port)
    except InvalidRequest as exc:
        if exc.code == "connector_unreachable":
            raise InvalidRequest("webhook_url_unresolvable", f"url: the host {host!r} cannot be resolved.") from None
        raise InvalidRequest(
            "webhook_url_not_allowed",
            f"url: webhooks may not be sent to {host}:{port}: the server's egress policy ({egress.ENV}) does not "
            "allow it (private and loopback addresses are refused unless allowed).",
        ) from None


def check_events(events: list[str]) -> list[str]:
    if not events:
        raise InvalidRequest("invalid_events", "events: subscribe to at least one event.")
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        raise InvalidRequest(
            "unknown_event", f"Unknown event(s): {', '.join(unknown)}. Known: {', '.join(sorted(EVENT_TYPES))}."
        )
    return sorted(set(events))


# ---------------------------------------------------------------------------------------
# CRUD (the caller is an org admin; the caller commits)
# ---------------------------------------------------------------------------------------


def _org_webhooks(org_id: str):
    return select(Webhook).where(Webhook.org_id == org_id, Webhook.deleted_at.is_(None))


def list_webhooks(session: Session, org_id: str) -> list[Webhook]:
    return list(session.scalars(_org_webhooks(org_id).order_by(Webhook.id)))


def get_webhook(session: Session, org_id: str, webhook_id: str) -> Webhook:
    webhook = session.scalar(_org_webhooks(org_id).where(Webhook.id == webhook_id))
    if webhook is None:
        raise NotFound("webhook_not_found", f"No webhook {webhook_id!r} in this organization.")
    return webhook


def create_webhook(
    session: Session,
    actor: Principal,
    *,
    url: str,
    events: list[str],
    description: str | None,
    session_key: bytes,
    context: RequestContext | None = None,
) -> CreatedWebhook:
    """Validates everything before changing anything."""
    events = check_events(events)
    url = check_url(url)
    if len(list_webhooks(session, actor.org_id)) >= MAX_WEBHOOKS_PER_ORG:
        raise InvalidRequest("too_many_webhooks", f"An organization may have at most {MAX_WEBHOOKS_PER_ORG} webhooks.")
    secret = SECRET_PREFIX + "".join(secrets.choice(BASE62) for _ in range(32))
    webhook = Webhook(
        id=new_id("whk"),
        org_id=actor.org_id,
        url=url,
        events=events,
        description=description,
        secret_encrypted=encrypt_secret(secret, session_key),
        secret_prefix=secret[: len(SECRET_PREFIX) + 4],
        created_by=actor.user_id,
        created_at=utcnow(),
    )
    session.add(webhook)
    record(
        session,
        actor,
        "webhook.created",
        org_id=actor.org_id,
        target_type="webhook",
        target_id=webhook.id,
        details={"url": redacted_url(url), "events": events, "secret_prefix": webhook.secret_prefix},
        context=context,
    )
    return CreatedWebhook(webhook, secret)


def update_webhook(
    session: Session,
    actor: Principal,
    webhook: Webhook,
    *,
    url: str | None,
    events: list[str] | None,
    description: str | None,
    context: RequestContext | None = None,
) -> Webhook:
    new_events = check_events(events) if events is not None else None
    new_url = check_url(url) if url is not None else None
    changes = {}
    for field, value in (("url", new_url), ("events", new_events), ("description", description)):
        if value is not None and value != getattr(webhook, field):
            changes[field] = {"old": getattr(webhook, field), "new": value}
            setattr(webhook, field, value)
    if "url" in changes:  # (as the audit log keeps URLs: without their credentials)
        changes["url"] = {side: redacted_url(url) for side, url in changes["url"].items()}
    if changes:
        record(
            session,
            actor,
            "webhook.updated",
            org_id=webhook.org_id,
            target_type="webhook",
            target_id=webhook.id,
            details=changes,
            context=context,
        )
    return webhook


def delete_webhook(
    session: Session, actor: Principal, webhook: Webhook, *, context: RequestContext | None = None
) -> None:
    """Kept (its delivery log stays readable by id in the audit trail), never delivered again."""
    webhook.deleted_at = utcnow()
    record(
        session,
        actor,
        "webhook.deleted",
        org_id=webhook.org_id,
        target_type="webhook",
        target_id=webhook.id,
        details={"url": redacted_url(webhook.url)},
        context=context,
    )
