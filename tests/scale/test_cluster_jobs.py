"""Background jobs across nodes, in-process: each thread here has its own database session,
which is all that tells two nodes apart for PostgreSQL's advisory locks and for the claim of
a round (tidegate.db.jobs). Processes and a kill -9 where a real session must die.

- a cluster job (data GC) runs once per round however many processes race for it, and a
  runner killed mid-round does not block the next one (PostgreSQL frees its lock);
- audit shipping is per node (each node ships its own journal), and two shippers racing on
  the same events insert each event once (event ids are primary keys);
- two starts of one project's run at once (two nodes) leave one run, the other is refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from analysis_world import make_project
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from tidegate.analysis import runs
from tidegate.audit.journal import Journal, ship_pending
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.catalog.analysis import ProjectRun
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.db import jobs
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import Conflict


def race(n: int, work) -> list:
    """`work(i)` in `n` threads released at once; their results (an exception is a result)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - reported as the result
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def job_name() -> str:
    return f"test-{os.urandom(4).hex()}"


# -- a cluster job: once per round ------------------------------------------------------------


def test_processes_racing_for_a_round_run_it_once(database_url):
    name, ran = job_name(), []

    def job():
        ran.append(threading.get_ident())
        time.sleep(0.2)  # still running while the others try
        return "done"

    results = race(6, lambda i: jobs.run_if_due(database_url, name, 3600, job, node=f"node{i}"))
    assert sorted(results, key=str) == [(False, None)] * 5 + [(True, "done")]
    assert len(ran) == 1
    # The next wake-ups, in the same round: nothing to do.
    assert jobs.run_if_due(database_url, name, 3600, job) == (False, None)
    last = jobs.last_round(database_url, name)
    assert last.outcome == "ok" and last.finished_at >= last.started_at
    assert last.node == f"node{results.index((True, 'done'))}"
    # Once the interval has passed, one more round (and only one).
    with session_scope(database_url) as session:
        session.execute(
            update(jobs.ClusterJob)
            .where(jobs.ClusterJob.name == name)
            .values(started_at=utcnow() - timedelta(hours=2), finished_at=utcnow() - timedelta(hours=2))
        )
    results = race(4, lambda i: jobs.run_if_due(database_url, name, 3600, job))
    assert results.count((True, "done")) == 1 and len(ran) == 2


def test_a_failing_round_is_recorded_and_waits_for_the_next_interval(database_url):
    name = job_name()

    def broken():
        raise OSError("store unreachable")

    with pytest.raises(OSError):
        jobs.run_if_due(database_url, name, 3600, broken)
    assert jobs.last_round(database_url, name).outcome == "OSError"
    assert jobs.run_if_due(database_url, name, 3600, lambda: "again") == (False, None)  # no retry storm


@pytest.fixture
def pg_url(postgresql_url):
    return postgresql_url


def test_the_lock_keeps_an_operator_run_and_a_periodic_round_apart(pg_url):
    name, inside, release = job_name(), threading.Event(), threading.Event()

    def slow():
        inside.set()
        release.wait(30)
        return "slow"

    holder = threading.Thread(target=lambda: jobs.run_now(pg_url, name, slow))
    holder.start()
    try:
        assert inside.wait(30)
        with session_scope(pg_url) as session:  # even with the round due, the lock says no
            session.execute(update(jobs.ClusterJob).where(jobs.ClusterJob.name == name).values(started_at=None))
        assert jobs.run_if_due(pg_url, name, 3600, lambda: "twice") == (False, None)
        started = time.monotonic()
        with pytest.raises(jobs.LockBusy):
            jobs.run_now(pg_url, name, lambda: "twice", wait_seconds=0.6)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join(30)
    assert jobs.run_now(pg_url, name, lambda: "after", wait_seconds=5) == "after"


HOLD_AND_WAIT = """
import sys, time
from tidegate.db import jobs
def hold():
    print("holding", flush=True)
    time.sleep(600)
jobs.run_if_due(sys.argv[1], sys.argv[2], 3600, hold, node="doomed")
"""


def advisory_holders(url: str, name: str) -> list[int]:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::oid AND objid = %s::oid",
            (jobs.LOCK_NAMESPACE, jobs.lock_key(name) % 2**32),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_runner_killed_mid_round_frees_the_lock_and_the_next_process_runs_the_round(pg_url):
    name = job_name()
    doomed = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, pg_url, name],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,
    )
    try:
        assert doomed.stdout.readline().strip() == b"holding"
        assert len(advisory_holders(pg_url, name)) == 1
        assert jobs.run_if_due(pg_url, name, 3600, lambda: "now") == (False, None)  # it runs: not us
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
    # Its session ended with it, and with the session the lock: the round, started but never
    # finished, is run again by the next process that wakes up, not an interval later.
    deadline = time.monotonic() + 10
    while advisory_holders(pg_url, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert advisory_holders(pg_url, name) == []
    last = jobs.last_round(pg_url, name)
    assert last.node == "doomed" and last.finished_at is None
    assert jobs.run_if_due(pg_url, name, 3600, lambda: "rerun", node="survivor") == (True, "rerun")
    assert jobs.last_round(pg_url, name).node == "survivor"


# -- audit shipping: per node, and never twice ------------------------------------------------


def test_two_shippers_racing_on_the_same_events_insert_each_once(tmp_path, database_url):
    """Each node ships its own journal; should two ever ship the same segment (a journal
    directory restored on another node, a shared volume), the event ids decide."""
    org_id = f"org_race_{os.urandom(4).hex()}"
    journal = Journal(tmp_path / "node1", "postgresql+psycopg://nobody@127.0.0.1:9/nowhere")  # it keeps them
    for _ in range(300):
        journal.append(event_row(org_id=org_id, actor_type="api_key", actor_id="key_x", action="api.request"))
    journal.rotate()
    journal.close()
    (tmp_path / "node2").mkdir(mode=0o700)
    for segment in (tmp_path / "node1").glob("*.ready.jsonl"):
        shutil.copy(segment, tmp_path / "node2" / segment.name)
    shipped = race(2, lambda i: ship_pending(tmp_path / f"node{i + 1}", database_url))
    assert shipped == [300, 300], shipped  # each shipper saw all of them...
    with session_scope(database_url) as session:  # ...and the table holds each once
        ids = session.scalars(select(AuditEvent.id).where(AuditEvent.org_id == org_id)).all()
    assert len(ids) == len(set(ids)) == 300


# -- project runs: one at a time across nodes -----------------------------------------------------


def test_two_nodes_starting_the_same_project_at_once_leave_one_run(settings, org):
    url = settings.database_url
    project_id, _ = make_project(url, org.id, org.admin_id, {}, [("one", "SELECT 1 AS x")])
    admin = Principal.for_user(org.id, org.admin_id, "admin")
    limits = QueryLimits()
    first_inserted, first_may_commit = threading.Event(), threading.Event()

    def first():
        with session_scope(url) as session:
            run_id = runs.start_run(session, admin, project_id, limits)
            first_inserted.set()
            first_may_commit.wait(10)  # the other node's start arrives before this commit
            return run_id

    def second():
        assert first_inserted.wait(10)
        timer = threading.Timer(0.5, first_may_commit.set)  # PostgreSQL: the second waits for it
        timer.start()
        try:
            with session_scope(url) as session:
                return runs.start_run(session, admin, project_id, limits)
        finally:
            timer.cancel()
            first_may_commit.set()

    results = race(2, lambda i: (first, second)[i]())
    assert isinstance(results[0], str), results
    refused = results[1]
    assert isinstance(refused, Conflict) and refused.code == "run_in_progress", refused
    with session_scope(url) as session:
        running = session.scalar(
            select(func.count())
            .select_from(ProjectRun)
            .where(ProjectRun.project_id == project_id, ProjectRun.status == runs.RUNNING)
        )
    assert running == 1
