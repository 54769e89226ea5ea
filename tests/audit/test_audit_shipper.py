"""The audit shipper process of `tidegate serve` (`audit.shipper`): workers only append and
rotate journal segments; one child process of the server ships them to the database, is
restarted when it dies, and does not outlive the server.

Arrival is checked by reading `audit_events` directly, never through GET /audit/events
(whose own journal flush would ship the events itself and hide a dead shipper).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from server import init_home, live_processes, running_server, scratch_postgres_database

pytestmark = pytest.mark.slow

# Bounded, but with room for a busy machine: a restarted shipper first imports for seconds.
ARRIVAL_TIMEOUT = 20.0


# -- helpers ----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    return [child for child, parent, _ in live_processes() if parent == pid]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def shipper_pid(srv, timeout: float = 10.0) -> int:
    """The server's one multiprocessing child that is not the resource tracker (with one
    worker, uvicorn serves in the server process itself, so that child is the shipper)."""
    deadline = time.monotonic() + timeout
    while True:
        spawned = [
            pid for pid in children(srv.proc.pid) if "multiprocessing" in cmdline(pid) and "spawn_main" in cmdline(pid)
        ]
        if len(spawned) == 1:
            return spawned[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected one shipper child of {srv.proc.pid}, found {spawned}")
        time.sleep(0.05)


def first_shipper_pid(srv) -> int:
    """The shipper the server started, with any number of workers: uvicorn's workers are
    spawned after `tidegate serve` sets TIDEGATE_AUDIT_SHIPPER=process, the shipper before."""
    spawned = [pid for pid in children(srv.proc.pid) if "spawn_main" in cmdline(pid)]
    shippers = [
        pid
        for pid in spawned
        if b"TIDEGATE_AUDIT_SHIPPER=process" not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ]
    assert len(shippers) == 1, (spawned, shippers)
    return shippers[0]


def make_requests(srv, n: int = 10) -> list[str]:
    """`n` answered API requests; their request ids."""
    ids = []
    with httpx.Client(base_url=srv.url + "/api/v1", headers=srv.headers(), timeout=30) as http:
        for i in range(n):
            resp = http.get("/keys" if i % 2 else "/users")
            assert resp.status_code == 200, resp.text
            ids.append(resp.headers["x-request-id"])
    return ids


def stored_request_ids(srv, request_ids: list[str]) -> list[str]:
    """Which of `request_ids` have an audit event in the server's database (one per event)."""
    marks = ",".join("?" * len(request_ids))
    url = srv.env.get("TIDEGATE_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as db:
            rows = db.execute(
                f"SELECT request_id FROM audit_events WHERE request_id IN ({marks.replace('?', '%s')})", request_ids
            ).fetchall()
    else:
        db = sqlite3.connect(f"file:{srv.home / 'tidegate.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute(
                f"SELECT request_id FROM audit_events WHERE request_id IN ({marks})", request_ids
            ).fetchall()
        finally:
            db.close()
    return [row[0] for row in rows]


def wait_until_stored(srv, request_ids: list[str], timeout: float = ARRIVAL_TIMEOUT) -> float:
    """Seconds until every request has exactly one event in the database; fails after `timeout`."""
    start = time.monotonic()
    while True:
        stored = stored_request_ids(srv, request_ids)
        if sorted(stored) == sorted(request_ids):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            missing = set(request_ids) - set(stored)
            raise AssertionError(
                f"{len(missing)} of {len(request_ids)} events not in the database after "
                f"{timeout}s; duplicates: {len(stored) - len(set(stored))}\n{srv.logs()[-3000:]}"
            )
        time.sleep(0.1)


@contextmanager
def stopped(pid: int, lock_path: Path):
    """SIGSTOP `pid` at a moment it does not hold the ship lock; SIGCONT on exit."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            break
        except BlockingIOError:
            os.kill(pid, signal.SIGCONT)  # stopped mid-shipment: let it finish
            time.sleep(0.05)
        finally:
            os.close(fd)
    else:
        raise AssertionError("the shipper never let go of the ship lock")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`tidegate serve` (one worker) on SQLite."""
    with running_server(tmp_path_factory.mktemp("shipper")) as srv:
        yield srv


# -- (a) events reach the database without anyone asking ------------------------------------


def test_served_requests_reach_the_database_on_their_own(served):
    ids = make_requests(served)
    took = wait_until_stored(served, ids)
    print(f"events stored {took:.2f}s after the last response")


def test_workers_do_not_ship_the_shipper_does(served):
    """With the shipper paused, nothing arrives (workers only rotate); resumed, everything does."""
    pid = shipper_pid(served)
    with stopped(pid, served.home / "audit" / "ship.lock"):
        ids = make_requests(served, 6)
        time.sleep(2.5)  # the worker has rotated its segment twice by now
        assert stored_request_ids(served, ids) == [], "a worker shipped events itself"
        assert list((served.home / "audit").glob("*.ready.jsonl")), "the worker did not rotate its segment"
        assert shipper_pid(served) == pid  # a paused shipper is not replaced
    wait_until_stored(served, ids)


# -- (b) a killed shipper is replaced ---------------------------------------------------------


def test_a_killed_shipper_is_restarted_and_events_keep_arriving(served):
    for round_ in range(2):
        old = shipper_pid(served)
        os.kill(old, signal.SIGKILL)
        ids = make_requests(served)  # answered while there may be no shipper at all
        wait_until_stored(served, ids)
        new = shipper_pid(served)
        assert new != old and not alive(old), (round_, old, new)
    assert served.logs().count("audit shipper exited") >= 2


# -- (c) the shipper does not outlive the server ----------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An initialized home that each test below starts (and kills or stops) a server on."""
    return init_home(tmp_path_factory.mktemp("shipper-lifecycle"))


@pytest.fixture
def lone(home):
    try:
        yield home
    finally:
        home.kill()  # whatever is left of the group


def test_the_shipper_exits_when_the_server_is_killed(lone):
    lone.start()
    pid = shipper_pid(lone)
    make_requests(lone, 4)
    os.kill(lone.proc.pid, signal.SIGKILL)  # the server process only, not its group
    lone.proc.wait(timeout=10)
    deadline = time.monotonic() + 3.0
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the audit shipper outlived the server by more than 3 s"


def test_a_stopped_server_ships_what_its_workers_left(lone):
    """SIGTERM to the group right after the last response: nothing is left unshipped."""
    lone.start()
    pid = shipper_pid(lone)
    ids = make_requests(lone, 10)
    lone.stop()
    assert not alive(pid)
    assert sorted(stored_request_ids(lone, ids)) == sorted(ids)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_to_the_server_alone_stops_its_shipper(lone, workers):
    """What a service manager sending SIGTERM to the main process expects: by the time the
    server has exited, it has stopped its shipper (ShipperProcess.stop: terminate, join)."""
    lone.start(workers=workers)
    pid = first_shipper_pid(lone)
    ids = make_requests(lone, 4)
    os.kill(lone.proc.pid, signal.SIGTERM)
    lone.proc.wait(timeout=20)
    time.sleep(0.1)
    assert not alive(pid), "the server exited and left its audit shipper running"
    assert sorted(stored_request_ids(lone, ids)) == sorted(ids)


# -- on PostgreSQL ------------------------------------------------------------------------------


def test_served_requests_reach_postgresql_on_their_own(tmp_path):
    with scratch_postgres_database("tidegate_shipper") as url, running_server(tmp_path, database_url=url) as srv:
        ids = make_requests(srv)
        wait_until_stored(srv, ids)
        os.kill(shipper_pid(srv), signal.SIGKILL)
        ids = make_requests(srv)
        wait_until_stored(srv, ids)
