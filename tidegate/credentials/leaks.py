"""Leaked keys: finding qk_ keys in text, and acting on a secret-scanning provider's report.

A report (GitHub's secret scanning partner format: a JSON array of `{token, type, url,
source}`) is answered token by token with `true_positive` (one of our keys, whatever its
state) or `false_positive` (anything else), and nothing more: never the organization, the
key's name or whether it was still active. An active key is revoked at once (with every key
it minted, as any revocation); every real key, active or not, gets an `api_key.leak_reported`
event in its organization naming where it was found (never the token), which notifies its
admins (tidegate.notifications).

An already revoked or expired key is still `true_positive`: the token is ours and it is
public, which its organization should hear about; labelling it false would only hide that.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.audit.record import SERVER, RequestContext, record
from tidegate.core.redaction import redact_secrets
from tidegate.credentials import service
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import CHECKSUM_LENGTH, RANDOM_LENGTH, display_prefix, is_well_formed
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.errors import Unauthenticated

TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"
LEAK_REPORTED = "api_key.leak_reported"

# A qk_ key anywhere in text: not preceded or followed by a character a key could continue with.
_CANDIDATE = re.compile(rf"(?<![0-9A-Za-z_])qk_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}(?![0-9A-Za-z])")


def find_keys(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, key) of every well-formed qk_ key in `text`: the format and the
    checksum, so a look-alike with a wrong checksum is not one. No database involved."""
    for number, line in enumerate(text.splitlines(), start=1):
        if "qk_" not in line:
            continue
        for match in _CANDIDATE.finditer(line):
            if is_well_formed(match.group(0)):
                yield number, match.group(0)


@dataclass(frozen=True)
class LeakReport:
    token: str
    type: str | None = None
    url: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Label:
    token_raw: str
    token_type: str | None
    label: str


def report_leaks(
    session: Session, pepper: bytes, reports: list[LeakReport], context: RequestContext | None = None
) -> list[Label]:
    """Label each report; revoke and record every real key among them (the caller commits)."""
    labels = []
    handled: set[str] = set()
    for report in reports:
        key = None
        if is_well_formed(report.token):  # the checksum first: no lookup for random text
            key = session.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_secret(pepper, report.token)))
        labels.append(Label(report.token, report.type, TRUE_POSITIVE if key is not None else FALSE_POSITIVE))
        if key is not None and key.id not in handled:
            handled.add(key.id)
            _act_on_leak(session, key, report, context)
    return labels


def _act_on_leak(session: Session, key: ApiKey, report: LeakReport, context: RequestContext | None) -> None:
    status = key.status_at(utcnow())
    if status == "active":
        service.revoke_key(session, SERVER, key, context=context, via="leak_report")
    record(
        session,
        SERVER,
        LEAK_REPORTED,
        org_id=key.org_id,
        target_type="api_key",
        target_id=key.id,
        details={
            "name": key.name,
            "key_prefix": key.key_prefix,
            # Where it was found, as the provider said (a secret in the URL is redacted).
            "url": redact_secrets(report.url)[:2000] if report.url else None,
            "source": redact_secrets(report.source)[:100] if report.source else None,
            "token_type": report.type[:100] if report.type else None,
            "status_before": status,
            "revoked": status == "active",
            "via": "leak_report",
        },
        context=context,
    )  # (revoke_key bumped the access epoch if it revoked: a report alone changes no access)


def prefix_of(token: str) -> str:
    """What may be shown of a found key: its display prefix, never more."""
    return display_prefix(token)


# ---------------------------------------------------------------------------------------
# Signatures of reports (GitHub: ECDSA P-256 / SHA-256 over the raw body, DER, base64)
# ---------------------------------------------------------------------------------------

KEY_ID_HEADER = "github-public-key-identifier"
SIGNATURE_HEADER = "github-public-key-signature"


def _public_key(pem: str) -> ec.EllipticCurvePublicKey:
    # Parsed per report, not cached: reports are rare and rate limited per address.
    key = load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an ECDSA public key")
    return key


def verify_signature(
    public_keys: tuple[tuple[str, str], ...], key_identifier: str | None, signature: str | None, body: bytes
) -> None:
    """Nothing when `body` is signed by the configured key `key_identifier` names; else 401
    with a code saying what is wrong. Called only when keys are configured."""
    if not key_identifier or not signature:
        raise Unauthenticated(
            "leak_signature_missing",
            "Leak reports must be signed: send Github-Public-Key-Identifier and Github-Public-Key-Signature.",
        )
    pem = dict(public_keys).get(key_identifier.strip())
    if pem is None:
        raise Unauthenticated("leak_signature_key_unknown", "The public key identifier is not one this server trusts.")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
        _public_key(pem).verify(raw, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise Unauthenticated("leak_signature_invalid", "The signature does not match the report.") from None
