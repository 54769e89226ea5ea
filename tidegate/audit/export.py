"""The verifiable NDJSON export of an organization's audit chain, and its offline check.

One JSON object per line:

- first, `{"type": "header", ...}`: what was asked (org, dates) and when (not signed: informative);
- then each event of the exported window, in chain order: `{"type": "event", "hash": ...,
  <the canonical fields>}`, each followed by the stored checkpoints that sign its position:
  `{"type": "checkpoint", "id", "org_id", "chain_seq", "head_hash", "signed_at", "kind",
  "key_id", "signature"}`;
- last, `{"type": "seal", ...}`, signed when the export ends: the organization, the window
  (`first_seq`, the `first_prev_hash` the first event links to, `last_seq`, `last_hash`, the
  number of events) and the dates. A date range starts mid-chain: the seal is what anchors its
  first event's prev_hash (and vouches for events not signed by a checkpoint yet). Lines cut
  from the start or the end, or a missing seal, fail verification.

The window is contiguous in chain order: from the first position whose event falls in the
date range to the last one (events chained in between, timestamped outside the range, are
included: a gap would not verify).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidegate.audit.chain import CHAIN_VERSION, canonical_bytes, checkpoint_fields, event_fields, timestamp_text
from tidegate.audit.models import AuditCheckpoint, AuditEvent
from tidegate.audit.signing import Signer, verify_signature
from tidegate.audit.verify import Problem, Report, verify_chain
from tidegate.db.base import utcnow

FORMAT = "tidegate.audit.export"
SEAL_TYPE = "tidegate.audit.export-seal"
SEAL_FIELDS = (
    "org_id",
    "start_date",
    "end_date",
    "exported_at",
    "first_seq",
    "first_prev_hash",
    "last_seq",
    "last_hash",
    "events",
)
BATCH = 1000


def seal_message(seal: dict[str, Any]) -> bytes:
    return canonical_bytes({"type": SEAL_TYPE, "v": CHAIN_VERSION, **{name: seal.get(name) for name in SEAL_FIELDS}})


def window(session: Session, org_id: str, since: datetime | None, until: datetime | None) -> tuple[int, int] | None:
    """The chain positions [first, last] of the events in [since, until), or None."""
    chained = [AuditEvent.org_id == org_id, AuditEvent.chain_seq.is_not(None)]
    if since is not None:
        chained.append(AuditEvent.timestamp >= since)
    if until is not None:
        chained.append(AuditEvent.timestamp < until)
    first, last = session.execute(
        select(func.min(AuditEvent.chain_seq), func.max(AuditEvent.chain_seq)).where(*chained)
    ).one()
    return None if first is None or last is None else (int(first), int(last))


def _line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"


def export_lines(
    open_session: Any, signer: Signer, org_id: str, since: datetime | None, until: datetime | None
) -> Iterator[bytes]:
    """The export, line by line; `open_session()` gives a fresh transaction (a context
    manager) for each batch, so a long export holds no transaction open."""
    exported_at = timestamp_text(utcnow())
    dates = {
        "start_date": timestamp_text(since) if since else None,
        "end_date": timestamp_text(until) if until else None,
    }
    with open_session() as session:
        span = window(session, org_id, since, until)
    yield _line(
        {"type": "header", "format": FORMAT, "v": CHAIN_VERSION, "org_id": org_id, "exported_at": exported_at, **dates}
    )
    seal: dict[str, Any] = {"org_id": org_id, "exported_at": exported_at, **dates, "events": 0}
    seal.update(first_seq=None, first_prev_hash=None, last_seq=None, last_hash=None)
    if span is not None:
        after, last = span[0] - 1, span[1]
        while after < last:
            with open_session() as session:
                rows = list(
                    session.scalars(
                        select(AuditEvent)
                        .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq > after, AuditEvent.chain_seq <= last)
                        .order_by(AuditEvent.chain_seq)
                        .limit(BATCH)
                    )
                )
                if not rows:
                    break
                top = rows[-1].chain_seq or after
                signed: dict[int, list[dict[str, Any]]] = {}
                for checkpoint in session.scalars(
                    select(AuditCheckpoint).where(
                        AuditCheckpoint.org_id == org_id,
                        AuditCheckpoint.chain_seq > after,
                        AuditCheckpoint.chain_seq <= top,
                    )
                ):
                    signed.setdefault(checkpoint.chain_seq, []).append(
                        {"type": "checkpoint", **checkpoint_fields(checkpoint)}
                    )
            chunk = []
            for row in rows:
                if seal["first_seq"] is None:
                    seal["first_seq"], seal["first_prev_hash"] = row.chain_seq, row.prev_hash
                chunk.append(_line({"type": "event", "hash": row.hash, **event_fields(row)}))
                chunk.extend(_line(c) for c in signed.get(row.chain_seq or 0, ()))
                seal["last_seq"], seal["last_hash"] = row.chain_seq, row.hash
                seal["events"] += 1
            yield b"".join(chunk)
            after = top
    yield _line({"type": "seal", **seal, "key_id": signer.key_id, "signature": signer.sign(seal_message(seal))})


# -- offline verification ---------------------------------------------------------------------------


class _Events:
    """The event lines of an export file, read again from disk (constant memory)."""

    def __init__(self, path: Path):
        self.path = path
        self.bad_line: tuple[int, str] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                value = _parse(line)
                if value is None:
                    self.bad_line = (number, "not a JSON object")
                    return
                if value.get("type") == "event":
                    yield value


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def verify_export(path: Path, keys: dict[str, Ed25519PublicKey]) -> Report:
    """Check an export file with the verifying key(s) only (no database, no server)."""
    checkpoints, seals, header = [], [], None
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            value = _parse(line)
            if value is None:
                return Report(None, problem=Problem("malformed", None, None, f"line {number} is not a JSON object"))
            kind = value.get("type")
            if kind == "checkpoint":
                checkpoints.append(value)
            elif kind == "seal":
                seals.append(value)
            elif kind == "header":
                header = value
            elif kind != "event":
                return Report(
                    None, problem=Problem("malformed", None, None, f"line {number} has unknown type {kind!r}")
                )
    org_id = (seals[-1] if seals else header or {}).get("org_id")
    if len(seals) != 1:
        message = "the export has no seal (its end was cut off)" if not seals else "the export has several seals"
        return Report(org_id, problem=Problem("unsealed", None, None, message))
    seal = seals[0]
    key = keys.get(str(seal.get("key_id")))
    if key is None or not verify_signature(key, str(seal.get("signature") or ""), seal_message(seal)):
        return Report(
            org_id,
            problem=Problem(
                "forged_seal",
                None,
                None,
                f"the export's seal does not verify with the verifying key (key {seal.get('key_id')})",
            ),
        )
    first_seq = seal.get("first_seq")
    start = (first_seq - 1, seal["first_prev_hash"]) if isinstance(first_seq, int) else None
    events = _Events(path)
    report = verify_chain(org_id, events, checkpoints, keys, start=start)
    if events.bad_line is not None:
        report.problem = Problem("malformed", None, None, f"line {events.bad_line[0]} is {events.bad_line[1]}")
    if report.ok and (report.last_seq != seal.get("last_seq") or report.events != seal.get("events")):
        gone = (report.last_seq or (first_seq or 1) - 1) + 1
        report.problem = Problem(
            "missing",
            gone,
            None,
            f"the seal covers positions {first_seq}..{seal.get('last_seq')} ({seal.get('events')} events), the file "
            f"has {report.events} ending at {report.last_seq}: events from position {gone} on were removed",
        )
    if report.ok and report.last_seq is not None:
        # The seal vouches for the last event (events not signed by a stored checkpoint yet).
        report.unsigned, report.verified_seq, report.verified_at = 0, report.last_seq, seal.get("exported_at")
        report.verified_hash = seal.get("last_hash")
        if seal.get("last_hash") != report.last_hash:
            report.problem = Problem(
                "altered", report.last_seq, None, "the last event's hash is not the one the seal signs"
            )
    return report
