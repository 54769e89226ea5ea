"""Checking an organization's audit chain and its checkpoints: from the database or from an
export file (offline: no database, no server, only the verifying key).

The walk goes through the events in chain order and stops at the first one that is wrong:

- `missing`: a position has no event (deleted), or a checkpoint signs a position past the
  last event (the tail was cut off);
- `inserted`: the event before this one does not belong (this one links past it);
- `altered`: this event's hash is not the hash of its canonical form (edited, or moved: its
  position is part of what is hashed), or the event before it was rewritten with a new hash;
- `checkpoint_mismatch`: a checkpoint signs a head hash that the event at its position does
  not have (the events before it were rewritten, hashes and all);
- `forged_checkpoint`: a checkpoint whose signature does not verify with any known key;
- `checkpoint_missing`: an event chained longer ago than 2 checkpoint intervals + slack is
  covered by no checkpoint (the checkpoints after it were deleted, or signing stopped).

Each problem names the position (`chain_seq`) and, where there is one, the event id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidegate.audit.chain import (
    CHECKPOINT_SECONDS,
    GENESIS,
    checkpoint_fields,
    checkpoint_message,
    event_fields,
    event_hash,
)
from tidegate.audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from tidegate.audit.signing import verify_signature
from tidegate.db.base import utcnow

# An unsigned event older than this is a missing checkpoint (2 intervals + a minute of slack).
MISSING_AFTER = timedelta(seconds=2 * CHECKPOINT_SECONDS + 60)


@dataclass(frozen=True)
class Problem:
    kind: str
    chain_seq: int | None
    event_id: str | None
    message: str


@dataclass
class Report:
    org_id: str | None
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    verified_seq: int | None = None  # the last position a valid checkpoint vouches for
    verified_at: str | None = None  # when that checkpoint was signed
    verified_hash: str | None = None
    last_hash: str | None = None
    unsigned: int = 0  # events after the last checkpoint (not yet signed)
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def view(self) -> dict[str, Any]:
        body = asdict(self)
        body["ok"] = self.ok
        return body


def checkpoint_is_valid(checkpoint: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> bool:
    key = keys.get(checkpoint.get("key_id") or "")
    if key is None:
        return False
    try:
        message = checkpoint_message(
            checkpoint["org_id"],
            int(checkpoint["chain_seq"]),
            checkpoint["head_hash"],
            checkpoint["signed_at"],
            checkpoint["kind"],
        )
    except (KeyError, TypeError, ValueError):
        return False
    return verify_signature(key, str(checkpoint.get("signature") or ""), message)


def verify_chain(
    org_id: str | None,
    events: Iterable[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    keys: dict[str, Ed25519PublicKey],
    *,
    start: tuple[int, str] | None = (0, GENESIS),
    now: datetime | None = None,
    missing_after: timedelta = MISSING_AFTER,
    limit: int | None = None,
) -> Report:
    """Walk `events` (dicts of the canonical fields plus `hash`, in chain order) against
    `checkpoints` (as audit.chain.checkpoint_fields). `start` is the trusted position and
    hash the chain continues from (0 and GENESIS for a whole chain, a purge checkpoint's);
    None trusts the first event's position and prev_hash (an export: its signed seal
    vouches for them). `now` (database mode) turns on the missing-checkpoint rule."""
    report = Report(org_id)
    report.checkpoints = len(checkpoints)
    valid: dict[int, dict[str, Any]] = {}
    forged: list[dict[str, Any]] = []
    for checkpoint in checkpoints:
        if org_id is not None and checkpoint.get("org_id") != org_id or not checkpoint_is_valid(checkpoint, keys):
            forged.append(checkpoint)
        else:
            valid.setdefault(int(checkpoint["chain_seq"]), checkpoint)
    first_forged = min(forged, key=_position, default=None)

    def fail(problem: Problem) -> Report:
        # A forged checkpoint at an earlier position is the first thing wrong.
        if first_forged is not None and _position(first_forged) <= (problem.chain_seq or 0):
            problem = _forged(first_forged)
        report.problem = problem
        return report

    def vouch(seq: int, hash_: str) -> Problem | None:
        checkpoint = valid.get(seq)
        if checkpoint is None:
            return None
        if checkpoint["head_hash"] != hash_:
            return Problem(
                "checkpoint_mismatch",
                seq,
                None,
                f"checkpoint {checkpoint.get('id')} signed at {checkpoint['signed_at']} says position {seq} has hash "
                f"{checkpoint['head_hash'][:16]}..., the log has {hash_[:16]}...: events up to {seq} were rewritten",
            )
        report.verified_seq, report.verified_at, report.verified_hash = seq, checkpoint["signed_at"], hash_
        return None

    expected, previous_hash = (None, None) if start is None else start
    if start is not None and start[0] > 0:
        vouch(*start)  # the purge checkpoint the chain starts from
    before_previous: str | None = None
    previous_id: str | None = None
    last_event: dict[str, Any] | None = None
    first_unsigned: dict[str, Any] | None = None  # the oldest event no checkpoint signs yet
    for event in events:
        if limit is not None and report.events >= limit:
            report.notes.append(f"checked {limit} events this time; the rest on the next check")
            return report  # (what follows is not judged: neither the tail nor overdue checkpoints)
        seq = event.get("chain_seq")
        event_id = event.get("id")
        if not isinstance(seq, int):
            return fail(Problem("altered", None, event_id, f"event {event_id} has no valid chain position"))
        if expected is None:  # an export: its first event is the anchor
            expected, previous_hash = seq, event.get("prev_hash")
            report.first_seq = seq
        else:
            expected += 1
        if report.first_seq is None:
            report.first_seq = seq
        if seq > expected:
            return fail(
                Problem(
                    "missing",
                    expected,
                    event_id,
                    f"position {expected} is missing (deleted): after "
                    + (f"event {previous_id} (position {expected - 1})" if previous_id else "the start of the chain")
                    + f" comes event {event_id} at position {seq}",
                )
            )
        if seq < expected:
            return fail(
                Problem(
                    "inserted" if seq == expected - 1 else "altered",
                    seq,
                    event_id,
                    f"event {event_id} claims position {seq}, which event {previous_id} already holds "
                    "(a duplicate or inserted event)",
                )
            )
        own_hash_ok = _hash_or_none(event) == event.get("hash")
        if event.get("prev_hash") != previous_hash:
            # (This event's own hash need not hold: moving it up one changed its position.)
            if previous_id is not None and event.get("prev_hash") == before_previous:
                return fail(
                    Problem(
                        "inserted",
                        seq - 1,
                        previous_id,
                        f"event {previous_id} at position {seq - 1} was inserted: event {event_id} after it "
                        f"links to the event before it",
                    )
                )
            if own_hash_ok and previous_id is not None:
                return fail(
                    Problem(
                        "altered",
                        seq - 1,
                        previous_id,
                        f"event {previous_id} at position {seq - 1} was altered (rehashed): event {event_id} after "
                        "it links to a different hash",
                    )
                )
            return fail(
                Problem(
                    "altered",
                    seq,
                    event_id,
                    f"event {event_id} at position {seq} was altered or moved: it does not link to the event before it",
                )
            )
        if not own_hash_ok:
            return fail(
                Problem(
                    "altered",
                    seq,
                    event_id,
                    f"event {event_id} at position {seq} was altered or moved: its hash is not the hash of its content",
                )
            )
        mismatch = vouch(seq, event["hash"])
        if mismatch is not None:
            return fail(Problem(mismatch.kind, seq, event_id, mismatch.message))
        if report.verified_seq == seq:
            first_unsigned = None
        elif first_unsigned is None:
            first_unsigned = event
        report.events += 1
        report.last_seq, report.last_hash = seq, event["hash"]
        before_previous, previous_hash, previous_id = previous_hash, event["hash"], event_id
        last_event = event
    past_end = [seq for seq in valid if expected is not None and seq > expected]
    if past_end:
        seq = min(past_end)
        first_gone = (expected or 0) + 1
        return fail(
            Problem(
                "missing",
                first_gone,
                None,
                f"the log ends at position {expected or 0}"
                + (f" (event {previous_id})" if previous_id else "")
                + f", but checkpoint {valid[seq].get('id')} signs position {seq}: events from position "
                f"{first_gone} on were removed",
            )
        )
    if first_forged is not None:
        return fail(_forged(first_forged))
    if last_event is not None and (report.verified_seq is None or report.verified_seq < last_event["chain_seq"]):
        report.unsigned = last_event["chain_seq"] - (report.verified_seq or (report.first_seq or 1) - 1)
        overdue = (now - missing_after).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if now is not None else None
        if first_unsigned is not None and overdue is not None and (first_unsigned.get("chained_at") or "") < overdue:
            return fail(
                Problem(
                    "checkpoint_missing",
                    first_unsigned["chain_seq"],
                    first_unsigned.get("id"),
                    f"event {first_unsigned.get('id')} at position {first_unsigned['chain_seq']} was chained at "
                    f"{first_unsigned.get('chained_at')} and no checkpoint signs it (one is signed every minute): "
                    "its checkpoints were deleted, or signing stopped",
                )
            )
    return report


def _position(checkpoint: dict[str, Any]) -> int:
    value = checkpoint.get("chain_seq")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _hash_or_none(event: dict[str, Any]) -> str | None:
    """The event's hash; None if its content cannot be hashed (NaN, a value JSON cannot hold)."""
    try:
        return event_hash(event)
    except (TypeError, ValueError):
        return None


def _forged(checkpoint: dict[str, Any]) -> Problem:
    return Problem(
        "forged_checkpoint",
        _position(checkpoint),
        None,
        f"checkpoint {checkpoint.get('id')} (position {checkpoint.get('chain_seq')}, key {checkpoint.get('key_id')}) "
        "has a signature that does not verify with the verifying key: it was forged or altered",
    )


# -- from the database ---------------------------------------------------------------------------


def _events_of(session: Session, org_id: str, after_seq: int, batch: int = 2000) -> Iterator[dict[str, Any]]:
    while True:
        rows = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.org_id == org_id, AuditEvent.chain_seq > after_seq)
                .order_by(AuditEvent.chain_seq)
                .limit(batch)
            )
        )
        for row in rows:
            yield {**event_fields(row), "hash": row.hash}
        if len(rows) < batch:
            return
        after_seq = rows[-1].chain_seq or after_seq
        session.expunge_all()  # a long chain is read in constant memory


def verify_org(
    session: Session,
    org_id: str,
    keys: dict[str, Ed25519PublicKey],
    *,
    now: datetime | None = None,
    resume: tuple[int, str, str] | None = None,
    limit: int | None = None,
) -> Report:
    """The organization's whole chain from where it starts (its latest valid purge checkpoint,
    or position 1); or, with `resume` (position, hash, signed at) of an earlier verification,
    from there on; at most `limit` events (then the report judges only those)."""
    checkpoints = [
        checkpoint_fields(c)
        for c in session.scalars(
            select(AuditCheckpoint).where(AuditCheckpoint.org_id == org_id).order_by(AuditCheckpoint.chain_seq)
        )
    ]
    start: tuple[int, str] = (0, GENESIS)
    for checkpoint in checkpoints:
        if checkpoint["kind"] == "purge" and checkpoint_is_valid(checkpoint, keys):
            start = max(start, (checkpoint["chain_seq"], checkpoint["head_hash"]))
    if resume is not None and resume[0] > start[0]:
        start = (resume[0], resume[1])
        checkpoints = [c for c in checkpoints if c["chain_seq"] > start[0]]
    report = verify_chain(
        org_id,
        _events_of(session, org_id, start[0]),
        checkpoints,
        keys,
        start=start,
        now=now or utcnow(),
        limit=limit,
    )
    if resume is not None and report.verified_seq is None and report.ok:
        report.verified_seq, report.verified_hash, report.verified_at = resume
    if start[0] > 0:
        report.notes.append(f"the chain starts after position {start[0]}: earlier events were purged")
    unchained = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.org_id == org_id, AuditEvent.chain_seq.is_(None))
    )
    if unchained:
        report.notes.append(f"{unchained} event(s) not chained yet (the chainer runs every second)")
    return report


def org_ids(session: Session) -> list[str]:
    return sorted(
        set(session.scalars(select(AuditChainHead.org_id)))
        | set(session.scalars(select(AuditCheckpoint.org_id).distinct()))
        | set(session.scalars(select(AuditEvent.org_id).where(AuditEvent.chain_seq.is_not(None)).distinct()))
    )
