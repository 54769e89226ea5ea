"""The audit journal: shipping, idempotence, and events the database refuses."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from sqlalchemy import func, select

from tidegate.audit import journal as journal_module
from tidegate.audit.journal import (
    AuditUnavailable,
    Journal,
    backlog,
    decode_records,
    encode_record,
    reship_set_aside,
    ship_pending,
)
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.db.engine import session_scope


def count(url, org_id):
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.org_id == org_id))


def test_ships_once_even_if_shipped_twice(tmp_path, database_url):
    journal = Journal(tmp_path / "audit", database_url)
    events = [
        event_row(org_id="org_journal_a", actor_type="api_key", actor_id="key_x", action="api.request")
        for _ in range(5)
    ]
    for event in events:
        journal.append(event)
    journal.rotate()
    ready = next((tmp_path / "audit").glob("*.ready.jsonl"))
    copy = ready.read_bytes()
    assert journal.flush() == 5
    ready.write_bytes(copy)  # as if a crash came between the commit and the unlink
    journal.flush()
    assert count(database_url, "org_journal_a") == 5
    journal.close()


def test_a_refused_event_does_not_block_the_others(tmp_path, database_url):
    journal = Journal(tmp_path / "audit", database_url)
    good = [
        event_row(org_id="org_journal_b", actor_type="api_key", actor_id="key_x", action="api.request")
        for _ in range(3)
    ]
    bad = dict(good[0], id="evt_" + "x" * 100)  # longer than the id column: refused by PostgreSQL
    bad["org_id"] = None  # NOT NULL on every database
    for event in [good[0], bad, good[1], good[2]]:
        journal.append(event)
    journal.flush()
    assert count(database_url, "org_journal_b") == 3
    set_aside = decode_records((tmp_path / "audit" / "rejected.jsonl").read_bytes())[0]
    assert [record["event"]["id"] for record in set_aside] == [bad["id"]]
    assert set_aside[0]["reason"]
    assert not list((tmp_path / "audit").glob("*.ready.jsonl"))
    assert backlog(tmp_path / "audit").set_aside_events == 1
    journal.close()


# -- records: whole, checksummed, torn ones detected -------------------------------------------


DOWN_URL = "postgresql+psycopg://nobody@127.0.0.1:9/nowhere"  # discard port: connection refused at once


def some_events(org_id: str, n: int) -> list[dict]:
    return [event_row(org_id=org_id, actor_type="api_key", actor_id="key_x", action="api.request") for _ in range(n)]


def test_a_torn_record_is_detected_and_the_next_record_on_its_line_is_still_read():
    first, second, third = (encode_record({"id": f"evt_{i}", "n": i}) for i in range(3))
    flipped = bytearray(third)
    flipped[20] ^= 1  # one bit changed on disk
    data = first[:-7] + second + bytes(flipped) + first  # torn tail glued to the next record
    values, torn = decode_records(data)
    assert [v["id"] for v in values] == ["evt_1", "evt_0"]
    assert [offset for offset, _ in torn] == [0, len(first[:-7] + second)]
    assert torn[0][1] == first[:-7]


def test_lines_written_before_checksums_are_still_read():
    values, torn = decode_records(b'{"id":"evt_old","n":1}\n{"id":"evt_cut"\n' + encode_record({"id": "evt_new"}))
    assert [v["id"] for v in values] == ["evt_old", "evt_new"] and len(torn) == 1


@pytest.mark.parametrize("failure", ["enospc_after_half", "eio_on_fsync"])
def test_a_failed_append_leaves_no_torn_record_and_raises(tmp_path, monkeypatch, failure):
    journal = Journal(tmp_path / "audit", "sqlite://", fsync=failure == "eio_on_fsync")
    ok = some_events("org_torn", 3)
    journal.append(ok[0])
    real_write, real_fsync = os.write, os.fsync

    def half_then_full(fd, data):  # the disk fills in the middle of the record
        if len(data) > 10:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    if failure == "enospc_after_half":
        monkeypatch.setattr(journal_module.os, "write", half_then_full)
    else:
        monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    with pytest.raises(AuditUnavailable) as refused:
        journal.append(ok[1])
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    monkeypatch.setattr(journal_module.os, "write", real_write)
    monkeypatch.setattr(journal_module.os, "fsync", real_fsync)
    journal.append(ok[2])
    (segment,) = (tmp_path / "audit").glob("*.active.jsonl")
    values, torn = decode_records(segment.read_bytes())
    assert [v["id"] for v in values] == [ok[0]["id"], ok[2]["id"]] and torn == []
    journal.close()


def test_journal_files_are_private(tmp_path, database_url):
    journal = Journal(tmp_path / "audit", database_url)
    journal.append(some_events("org_private", 1)[0])
    directory = tmp_path / "audit"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    journal.close()


# -- nothing deleted before the database has it --------------------------------------------------


def test_events_stay_spooled_while_the_database_is_down_and_ship_when_it_is_back(tmp_path, database_url):
    directory = tmp_path / "audit"
    down = Journal(directory, DOWN_URL)
    events = some_events("org_journal_down", 7)
    for event in events:
        down.append(event)
    for _ in range(3):  # every round fails: nothing may be set aside or deleted
        with pytest.raises(Exception):
            down.flush()
    assert not (directory / "rejected.jsonl").exists()
    status = backlog(directory)
    assert status.pending_events == 7 and status.set_aside_events == 0 and status.oldest_pending_at is not None
    down.close()  # shutdown while still down: still kept (a restart)
    assert backlog(directory).pending_events == 7
    assert ship_pending(directory, database_url) == 7  # the next process, database back
    assert count(database_url, "org_journal_down") == 7
    assert backlog(directory).pending_events == 0


def test_a_set_aside_event_is_reshipped_once_it_can_be_stored(tmp_path, database_url):
    directory = tmp_path / "audit"
    journal = Journal(directory, database_url)
    good, bad = some_events("org_reship", 2)
    bad["org_id"] = None  # refused: NOT NULL
    journal.append(good)
    journal.append(bad)
    journal.flush()
    assert backlog(directory).set_aside_events == 1
    with pytest.raises(Exception):
        reship_set_aside(directory, DOWN_URL)  # an outage while reshipping changes nothing
    assert backlog(directory).set_aside_events == 1
    assert reship_set_aside(directory, database_url) == (0, 1)  # still refused: still kept
    record = decode_records((directory / "rejected.jsonl").read_bytes())[0][0]
    fixed = dict(record, event=dict(record["event"], org_id="org_reship"))
    (directory / "rejected.jsonl").write_bytes(encode_record(fixed))  # e.g. repaired by an operator
    assert reship_set_aside(directory, database_url) == (1, 0)
    assert count(database_url, "org_reship") == 2
    assert not (directory / "rejected.jsonl").exists()
    journal.close()


def test_torn_records_are_quarantined_and_counted(tmp_path, database_url):
    directory = tmp_path / "audit"
    Journal(directory, database_url)  # creates the directory
    events = some_events("org_torn_ship", 3)
    records = [encode_record(dict(e, timestamp=e["timestamp"].isoformat())) for e in events]
    (directory / "1-1-dead.ready.jsonl").write_bytes(records[0][:-9] + records[1] + records[2][:30])
    status = backlog(directory)
    assert status.pending_events == 1 and status.torn_records == 2
    assert ship_pending(directory, database_url) == 1
    assert count(database_url, "org_torn_ship") == 1
    assert backlog(directory).torn_records == 2  # quarantined in torn.jsonl, not forgotten
    assert stat.S_IMODE((directory / "torn.jsonl").stat().st_mode) == 0o600


def test_a_shipper_claiming_orphans_while_a_segment_is_created_takes_nothing_from_a_live_writer(
    tmp_path, database_url, monkeypatch
):
    """A segment is created, locked and only then named `.active`: a shipper that looks for dead
    writers' segments at any moment of that never ships and deletes the live writer's file."""
    directory = tmp_path / "audit"
    journal = Journal(directory, database_url)
    real_flock = journal_module.fcntl.flock
    claims = []

    def flock_with_a_shipper_in_the_gap(fd, operation):
        if operation == journal_module.fcntl.LOCK_EX and not claims:  # the writer taking its lock
            claims.append(None)  # once (the shipper takes locks of its own)
            claims[0] = ship_pending(directory, database_url)  # the shipper's round, right now
        return real_flock(fd, operation)

    monkeypatch.setattr(journal_module.fcntl, "flock", flock_with_a_shipper_in_the_gap)
    events = some_events("org_journal_gap", 3)
    for event in events:
        journal.append(event)
    monkeypatch.setattr(journal_module.fcntl, "flock", real_flock)
    journal.rotate()
    ship_pending(directory, database_url)
    assert claims == [0]
    assert count(database_url, "org_journal_gap") == 3
    journal.close()
