"""The tamper-evident audit chain (audit.chain, audit.verify), on SQLite and PostgreSQL.

Each tampering scenario edits the database as an attacker with write access would, then
checks that verification fails naming the right position and event; a clean log verifies.
"""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from tidegate.audit.chain import chain_org, event_fields, event_hash, sign_heads
from tidegate.audit.chainer import chain_round
from tidegate.audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from tidegate.audit.record import record
from tidegate.audit.signing import Signer, load_signer
from tidegate.audit.verify import verify_org
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.ids import new_id
from tidegate.orgs.models import Organization
from tidegate.orgs.retention import purge_expired


@pytest.fixture
def signer(tmp_path) -> Signer:
    return load_signer(tmp_path)


def add_events(url: str, org_id: str, n: int, action: str = "test.event") -> None:
    with session_scope(url) as session:
        for i in range(n):
            record(session, None, action, org_id=org_id, target_type="test", target_id=str(i), details={"i": i})


def chained(url: str, org_id: str) -> list[AuditEvent]:
    with session_scope(url) as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.org_id == org_id).order_by(AuditEvent.chain_seq))
        )


def verify(url: str, org_id: str, signer: Signer, **options):
    with session_scope(url) as session:
        return verify_org(session, org_id, {signer.key_id: signer.public}, **options)


@pytest.fixture
def chain(org, signer):
    """The org's events (from its creation) plus 8 more, chained and signed: (url, events)."""
    url = org.settings.database_url
    add_events(url, org.id, 8)
    chain_round(url, signer, force_sign=True)
    events = chained(url, org.id)
    assert [e.chain_seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) >= 10
    return url, events


def set_seq(url: str, event_id: str, seq: int) -> None:
    with session_scope(url) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(chain_seq=seq))


def test_clean_log_verifies(org, chain, signer):
    url, events = chain
    report = verify(url, org.id, signer)
    assert report.ok, report.problem
    assert (report.events, report.first_seq, report.last_seq) == (len(events), 1, len(events))
    assert report.verified_seq == len(events) and report.unsigned == 0
    assert events[0].prev_hash == "0" * 64
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash
        assert event_hash(event_fields(after)) == after.hash


def test_edited_event_is_named(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == events[4].id).values(action="key.harmless"))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq, report.problem.event_id) == ("altered", 5, events[4].id)


def test_edited_details_are_detected(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == events[6].id).values(details={"i": 999}))
    report = verify(url, org.id, signer)
    assert report.problem is not None and (report.problem.chain_seq, report.problem.event_id) == (7, events[6].id)


def test_edited_and_rehashed_event_is_named(org, chain, signer):
    """The attacker recomputes the edited event's hash: the next event's link names it."""
    url, events = chain
    with session_scope(url) as session:
        event = session.get(AuditEvent, events[3].id)
        event.ip_address = "10.9.9.9"
        event.hash = event_hash(event_fields(event))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq, report.problem.event_id) == ("altered", 4, events[3].id)


def test_deleted_event_is_named(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == events[2].id))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq) == ("missing", 3)
    assert report.problem.event_id == events[3].id  # the event after the gap
    assert events[1].id in report.problem.message


def test_deleted_and_renumbered_events_are_detected(org, chain, signer):
    """Closing the gap (renumbering the later events) breaks their hashes."""
    url, events = chain
    with session_scope(url) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == events[2].id))
    for event in events[3:]:
        set_seq(url, event.id, event.chain_seq - 1)
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.chain_seq, report.problem.event_id) == (3, events[3].id)


def test_inserted_event_is_named(org, chain, signer):
    """A forged event put at position 3, hashed correctly, the later events moved up one."""
    url, events = chain
    for event in reversed(events[2:]):
        set_seq(url, event.id, event.chain_seq + 1)
    forged_id = new_id("evt")
    with session_scope(url) as session:
        forged = AuditEvent(
            id=forged_id,
            org_id=org.id,
            timestamp=events[2].timestamp,
            actor_type="system",
            actor_id="cli",
            action="key.created",
            chain_seq=3,
            prev_hash=events[1].hash,
            chained_at=events[2].chained_at,
        )
        forged.hash = event_hash(event_fields(forged))
        session.add(forged)
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq, report.problem.event_id) == ("inserted", 3, forged_id)


def test_reordered_events_are_named(org, chain, signer):
    url, events = chain
    set_seq(url, events[4].id, 10_000)
    set_seq(url, events[5].id, 5)
    set_seq(url, events[4].id, 6)
    report = verify(url, org.id, signer)
    assert report.problem is not None
    # Position 5 now holds the event that was at 6: it is the first one out of place.
    assert (report.problem.kind, report.problem.chain_seq, report.problem.event_id) == ("altered", 5, events[5].id)


def test_truncated_tail_is_detected(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(delete(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.chain_seq >= 7))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq) == ("missing", 7)
    assert events[5].id in report.problem.message  # the last event left


def test_rewritten_chain_is_caught_by_its_checkpoint(org, chain, signer):
    """Editing an event and rehashing everything after it: only the signature can tell."""
    url, events = chain
    with session_scope(url) as session:
        rows = list(
            session.scalars(select(AuditEvent).where(AuditEvent.org_id == org.id).order_by(AuditEvent.chain_seq))
        )
        rows[2].action = "nothing.happened"
        previous = rows[1].hash
        for row in rows[2:]:
            row.prev_hash = previous
            row.hash = previous = event_hash(event_fields(row))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq) == ("checkpoint_mismatch", len(events))


def test_forged_checkpoint_is_detected(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(update(AuditCheckpoint).where(AuditCheckpoint.org_id == org.id).values(head_hash="ab" * 32))
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq) == ("forged_checkpoint", len(events))


def test_checkpoint_signed_by_another_key_is_forged(org, chain, signer, tmp_path):
    url, events = chain
    (tmp_path / "elsewhere").mkdir()
    other = load_signer(tmp_path / "elsewhere")
    assert other.key_id != signer.key_id
    with session_scope(url) as session:
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org.id))
    add_events(url, org.id, 2)
    with session_scope(url) as session:
        chain_org(session, org.id)
        sign_heads(session, other, force=True)
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq) == ("forged_checkpoint", len(events) + 2)
    assert other.key_id in report.problem.message
    assert verify(url, org.id, signer, now=utcnow()).problem is not None
    with session_scope(url) as session:  # with both keys (a rotation), it verifies
        assert verify_org(session, org.id, {signer.key_id: signer.public, other.key_id: other.public}, now=utcnow()).ok


def test_missing_checkpoint_is_detected(org, signer):
    """Events chained 10 minutes ago that no checkpoint signs: their checkpoints were
    deleted (or signing stopped). Fresh unsigned events are only reported."""
    url = org.settings.database_url
    add_events(url, org.id, 3)
    with session_scope(url) as session:
        chain_org(session, org.id, now=utcnow() - timedelta(minutes=10))
    events = chained(url, org.id)
    report = verify(url, org.id, signer)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.chain_seq, report.problem.event_id) == (
        "checkpoint_missing",
        1,
        events[0].id,
    )
    with session_scope(url) as session:
        sign_heads(session, signer, force=True)
    assert verify(url, org.id, signer).ok
    add_events(url, org.id, 2)
    chain_round(url, signer)  # chained now; its head was signed less than a minute ago: not yet signed
    report = verify(url, org.id, signer)
    assert report.ok and report.unsigned == 2 and report.verified_seq == len(events)


def test_events_of_one_org_do_not_affect_another(make_org, signer):
    first, second = make_org(), make_org()
    url = first.settings.database_url
    add_events(url, first.id, 3)
    add_events(url, second.id, 3)
    chain_round(url, signer, force_sign=True)
    with session_scope(url) as session:
        session.execute(
            update(AuditEvent).where(AuditEvent.org_id == second.id, AuditEvent.chain_seq == 2).values(actor_id="x")
        )
    assert verify(url, first.id, signer).ok
    assert verify(url, second.id, signer).problem is not None


def test_chained_events_keep_their_place(org, chain, signer):
    """A later round never rechains: positions, hashes and checkpoints stay as they were."""
    url, events = chain
    add_events(url, org.id, 2)
    chain_round(url, signer, force_sign=True)
    after = chained(url, org.id)
    assert [(e.id, e.chain_seq, e.hash) for e in after[: len(events)]] == [(e.id, e.chain_seq, e.hash) for e in events]
    assert [e.chain_seq for e in after] == list(range(1, len(events) + 3))
    assert verify(url, org.id, signer).ok


# -- two processes --------------------------------------------------------------------------


ROUNDS = 40


def _worker(url: str, org_id: str, home: str, rounds: int) -> None:
    signer = load_signer(Path(home))
    for _ in range(rounds):
        add_events(url, org_id, 3)
        chain_round(url, signer)


def test_two_processes_chain_one_consistent_order(org, signer, tmp_path):
    """Two processes record events and run the chainer at the same time: every event gets
    exactly one position, the positions have no gap, and the chain verifies."""
    url = org.settings.database_url
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(url, org.id, str(tmp_path), ROUNDS)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    chain_round(url, signer, force_sign=True)
    events = chained(url, org.id)
    assert all(e.chain_seq is not None for e in events)
    assert [e.chain_seq for e in events] == list(range(1, len(events) + 1))
    assert sum(e.action == "test.event" for e in events) == 2 * ROUNDS * 3
    report = verify(url, org.id, signer)
    assert report.ok, report.problem
    assert report.events == len(events)


# -- retention --------------------------------------------------------------------------------


def test_purge_keeps_the_rest_verifiable(org, signer):
    url = org.settings.database_url
    add_events(url, org.id, 4, action="old.event")
    with session_scope(url) as session:  # chained and signed 400 days ago
        chain_org(session, org.id, now=utcnow() - timedelta(days=400))
        sign_heads(session, signer, force=True, signed_at=utcnow() - timedelta(days=400))
    old = chained(url, org.id)
    add_events(url, org.id, 3, action="new.event")
    chain_round(url, signer, force_sign=True)
    purged = [p for p in purge_expired(url, signer) if p.org_id == org.id]
    assert len(purged) == 1 and purged[0].events == len(old) and purged[0].boundary_seq == len(old)
    left = chained(url, org.id)
    assert {e.action for e in left if e.chain_seq is not None} >= {"new.event"}
    assert not any(e.action == "old.event" for e in left)
    chain_round(url, signer, force_sign=True)  # chains the audit.purged event
    report = verify(url, org.id, signer)
    assert report.ok, report.problem
    assert report.first_seq == len(old) + 1
    assert any("purged" in note for note in report.notes)
    assert any(e.action == "audit.purged" for e in chained(url, org.id))
    # Without the signed boundary, the remaining log starts at a position nobody vouches for.
    with session_scope(url) as session:
        session.execute(
            delete(AuditCheckpoint).where(AuditCheckpoint.org_id == org.id, AuditCheckpoint.kind == "purge")
        )
    report = verify(url, org.id, signer)
    assert report.problem is not None and (report.problem.kind, report.problem.chain_seq) == ("missing", 1)


def test_purge_follows_each_orgs_retention(make_org, signer):
    keeps_long, keeps_short = make_org(), make_org()
    url = keeps_long.settings.database_url
    with session_scope(url) as session:
        session.execute(update(Organization).where(Organization.id == keeps_long.id).values(audit_retention_days=2190))
        session.execute(update(Organization).where(Organization.id == keeps_short.id).values(audit_retention_days=30))
    for org in (keeps_long, keeps_short):
        with session_scope(url) as session:
            chain_org(session, org.id, now=utcnow() - timedelta(days=100))
            sign_heads(session, signer, force=True, signed_at=utcnow() - timedelta(days=100))
    purged = {p.org_id for p in purge_expired(url, signer)}
    assert keeps_short.id in purged and keeps_long.id not in purged


def test_nothing_to_purge_changes_nothing(org, chain, signer):
    url, events = chain
    assert not [p for p in purge_expired(url, signer) if p.org_id == org.id]
    assert [e.id for e in chained(url, org.id)] == [e.id for e in events]


def test_unique_position_is_enforced_by_the_database(org, chain):
    url, events = chain
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        with session_scope(url) as session:
            session.execute(text("UPDATE audit_events SET chain_seq = 1 WHERE id = :id"), {"id": events[1].id})


def test_lost_head_row_continues_the_chain(org, chain, signer):
    """The chainer's bookkeeping row deleted: it continues after the last chained event."""
    url, events = chain
    with session_scope(url) as session:
        session.execute(delete(AuditChainHead).where(AuditChainHead.org_id == org.id))
    add_events(url, org.id, 2)
    chain_round(url, signer, force_sign=True)
    after = chained(url, org.id)
    assert [e.chain_seq for e in after] == list(range(1, len(events) + 3))
    assert verify(url, org.id, signer).ok


def test_verify_all_finds_every_chained_org(org, chain, signer):
    from tidegate.audit.verify import org_ids

    url, _ = chain
    with session_scope(url) as session:
        session.execute(delete(AuditChainHead).where(AuditChainHead.org_id == org.id))
        assert org.id in org_ids(session)


def test_purge_leaves_a_tampered_boundary_alone(org, signer):
    """Evidence is not purged: a boundary event that does not match its checkpoint stays."""
    url = org.settings.database_url
    with session_scope(url) as session:
        chain_org(session, org.id, now=utcnow() - timedelta(days=400))
        sign_heads(session, signer, force=True, signed_at=utcnow() - timedelta(days=400))
        session.execute(
            update(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.chain_seq == 1).values(action="covered.up")
        )
    # (the boundary is the last position; altering its hash field is what would hide an edit)
    with session_scope(url) as session:
        last = session.scalar(
            select(AuditEvent).where(AuditEvent.org_id == org.id).order_by(AuditEvent.chain_seq.desc())
        )
        last.hash = "f" * 64
    assert not [p for p in purge_expired(url, signer) if p.org_id == org.id]
    assert len(chained(url, org.id)) == last.chain_seq


def test_a_limited_check_judges_only_what_it_read(org, chain, signer):
    url, events = chain
    with session_scope(url) as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == events[7].id).values(path="/elsewhere"))
    partial = verify(url, org.id, signer, limit=3)
    assert partial.ok and partial.events == 3 and partial.notes
    report = verify(url, org.id, signer)
    assert report.problem is not None and report.problem.event_id == events[7].id


def test_a_wrong_head_row_is_repaired(org, chain, signer):
    """The chainer's bookkeeping row set back by hand: the next round continues after the
    last chained event instead of colliding with it (or linking to the wrong hash)."""
    url, events = chain
    with session_scope(url) as session:
        session.execute(
            update(AuditChainHead).where(AuditChainHead.org_id == org.id).values(chain_seq=2, head_hash="e" * 64)
        )
    add_events(url, org.id, 2)
    chain_round(url, signer, force_sign=True)
    after = chained(url, org.id)
    assert [e.chain_seq for e in after] == list(range(1, len(events) + 3))
    assert verify(url, org.id, signer).ok


def test_a_failing_chainer_does_not_slow_shipping(org, tmp_path):
    """The journal's thread chains after shipping; a chainer that fails (say, an unreadable
    signing key) is logged and retried, while shipping keeps its one-interval pace."""
    from tidegate.audit.journal import Journal, private_directory
    from tidegate.audit.record import event_row

    url = org.settings.database_url
    calls = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("no signing key")

    journal = Journal(private_directory(tmp_path / "journal"), url)
    journal.start(interval=0.1, after_ship=failing)
    try:
        time.sleep(1.5)  # with failures counted as shipping failures, the wait would be 5 s now
        event = event_row(org_id=org.id, actor_type="system", actor_id="cli", action="late.event")
        journal.append(event)
        deadline = time.monotonic() + 1.5
        while not any(e.id == event["id"] for e in chained(url, org.id)):
            assert time.monotonic() < deadline, "the event was not shipped within 1.5 s"
            time.sleep(0.05)
    finally:
        journal.close()
    assert len(calls) >= 5
