"""The audit journal: shipping, idempotence, and events the database refuses."""

from __future__ import annotations

import orjson
from sqlalchemy import func, select

from tidegate.audit.journal import Journal
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.db.engine import session_scope


def count(url, org_id):
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.org_id == org_id))


def test_ships_once_even_if_shipped_twice(tmp_path, database_url):
    journal = Journal(tmp_path / "audit", database_url)
    events = [event_row(org_id="org_journal_a", actor_type="api_key", actor_id="key_x", action="api.request")
              for _ in range(5)]
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
    good = [event_row(org_id="org_journal_b", actor_type="api_key", actor_id="key_x", action="api.request")
            for _ in range(3)]
    bad = dict(good[0], id="evt_" + "x" * 100)  # longer than the id column: refused by PostgreSQL
    bad["org_id"] = None  # NOT NULL on every database
    for event in [good[0], bad, good[1], good[2]]:
        journal.append(event)
    journal.flush()
    assert count(database_url, "org_journal_b") == 3
    rejected = (tmp_path / "audit" / "rejected.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in rejected] == [bad["id"]]
    assert not list((tmp_path / "audit").glob("*.ready.jsonl"))
    journal.close()
