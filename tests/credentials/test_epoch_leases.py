"""Epoch leases (`orgs.epochwatch`, PostgreSQL): a serving process validates cached keys
against its own copy of the access epochs, with no round trip, and a writer returns only
once every leased process has applied its bump, or can no longer use its copy.

What each test tries to break: a warm request that still pays a trip; a change through
tidegate missed by the next request; a writer returning while a stalled process still
answers from its copy; a process whose listener is killed answering from its copy instead
of reading; a lease taken over after a lapse without a full read.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import text as sql
from sqlalchemy import update

from tidegate.credentials import authenticate
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.orgs import epochwatch, service
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.epochwatch import EpochWatch

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def raw(settings) -> psycopg.Connection:
    return psycopg.connect("postgresql://" + settings.database_url.split("://", 1)[1], autocommit=True)


def epoch_of(settings, org_id: str) -> int:
    with raw(settings) as conn:
        return conn.execute("SELECT access_epoch FROM organizations WHERE id = %s", (org_id,)).fetchone()[0]


def demote(settings, org, user_id: str) -> None:
    """A change through tidegate (the service, as the API calls it), in this process."""
    with session_scope(settings.database_url) as session:
        service.update_user(session, None, service.get_user(session, org.id, user_id), role="member")


def code(response) -> tuple[int, str | None]:
    return response.status_code, (response.json()["error"]["code"] if response.status_code >= 400 else None)


@pytest.fixture
def keys(client):
    keys = client.app.state.key_cache
    assert keys.leases is not None and keys.leases.wait_leased(), "the app holds no epoch lease"
    return keys


def test_warm_requests_make_no_round_trip_and_a_change_is_seen_by_the_next(client, org, settings, keys, monkeypatch):
    owner = org.add_user("lead@example.com", role="admin")
    h = org.headers(org.key_for(owner))
    assert client.get("/api/v1/users", headers=h).status_code == 200  # loads the key
    reads, trips = [], keys.epochs.trips
    real_load = authenticate.load_key_state
    monkeypatch.setattr(authenticate, "load_key_state", lambda s, d: reads.append(d) or real_load(s, d))
    for _ in range(5):
        assert client.get("/api/v1/users", headers=h).status_code == 200
    assert reads == [] and keys.epochs.trips == trips  # neither a key read nor an epoch read
    demote(settings, org, owner)  # returns once this process has applied the bump
    assert code(client.get("/api/v1/users", headers=h)) == (403, "insufficient_scope")
    assert len(reads) == 1 and keys.epochs.trips == trips
    assert keys.leases.known(org.id) == epoch_of(settings, org.id)


def test_a_writer_returns_only_after_every_live_process_applied_its_bump(client, org, settings, keys):
    """A second process (a watch of its own, another lease) must have the new epoch in its
    copy by the time the writer returns: not a moment later."""
    other = EpochWatch(settings.database_url)
    other.start()
    try:
        assert other.wait_leased()
        with raw(settings) as conn:
            live = conn.execute("SELECT count(*) FROM epoch_leases WHERE expires_at > clock_timestamp()").fetchone()[0]
        assert live >= 2
        for _ in range(3):
            user = org.add_user(f"u{time.monotonic_ns()}@example.com", role="admin")
            started = time.monotonic()
            demote(settings, org, user)
            now_epoch = epoch_of(settings, org.id)
            # Read the copies the instant the writer returned (no wait in between).
            assert other.known(org.id) == now_epoch and keys.leases.known(org.id) == now_epoch
            assert time.monotonic() - started < epochwatch.ACK_WAIT_SECONDS
    finally:
        other.close()
    with raw(settings) as conn:
        assert (
            conn.execute("SELECT count(*) FROM epoch_leases WHERE process_id = %s", (other.process_id,)).fetchone()[0]
            == 0
        )  # given back at close: writers no longer wait for it


def test_a_writer_waits_out_a_stalled_process_whose_copy_is_then_unusable(client, org, settings, keys):
    """A process that holds a lease but never acknowledges (stalled): the writer fences it
    and returns only once that process's own deadline has passed, so it reads epochs
    per request from then on; fenced, it cannot renew, and must take a new lease with a
    full read."""
    stalled = EpochWatch(settings.database_url)
    user = org.add_user("stalled@example.com", role="admin")
    with raw(settings) as conn:
        conn.execute(f"LISTEN {epochwatch.CHANNEL}")
        stalled._register(conn)  # leased, but nobody serves its notifications
        assert stalled.leased and stalled.known(org.id) == epoch_of(settings, org.id)
        started = time.monotonic()
        demote(settings, org, user)
        waited = time.monotonic() - started
        assert stalled.known(org.id) is None and not stalled.leased  # its copy is unusable now
        assert epochwatch.ACK_WAIT_SECONDS <= waited <= stalled.lease_seconds + epochwatch.ACK_WAIT_SECONDS + 1
        # Fenced: its lease row is gone, so a renewal fails and it reads everything again.
        assert (
            conn.execute("SELECT count(*) FROM epoch_leases WHERE process_id = %s", (stalled.process_id,)).fetchone()[0]
            == 0
        )
        renewed = conn.execute(
            "UPDATE epoch_leases SET expires_at = clock_timestamp() + interval '2 s' "
            "WHERE process_id = %s AND expires_at > clock_timestamp()",
            (stalled.process_id,),
        ).rowcount
        assert renewed == 0
    # The app's own process acknowledged in time and was not fenced.
    assert keys.leases.leased and keys.leases.known(org.id) == epoch_of(settings, org.id)


def test_a_process_whose_listener_is_killed_reads_epochs_and_stays_exact(client, org, settings, keys, monkeypatch):
    owner = org.add_user("boss@example.com", role="admin")
    h = org.headers(org.key_for(owner))
    assert client.get("/api/v1/users", headers=h).status_code == 200
    watch = keys.leases
    blocked = threading.Event()
    blocked.set()
    real_register = watch._register

    def register(conn):
        if blocked.is_set():
            raise psycopg.OperationalError("registration held back by the test")
        real_register(conn)

    monkeypatch.setattr(watch, "_register", register)
    registrations = watch.registrations
    listener_pid = watch._conn.info.backend_pid
    with raw(settings) as conn:  # kill the listener's backend (only it), as an operator or a crash would
        (killed,) = conn.execute("SELECT pg_terminate_backend(%s)", (listener_pid,)).fetchone()
    assert killed
    deadline = time.monotonic() + 5
    while watch.leased and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watch.leased and watch.known(org.id) is None
    trips = keys.epochs.trips
    assert client.get("/api/v1/users", headers=h).status_code == 200
    assert keys.epochs.trips > trips  # no lease: the epoch is read per request
    demote(settings, org, owner)  # no process to wait for, yet the next request sees it
    assert code(client.get("/api/v1/users", headers=h)) == (403, "insufficient_scope")
    blocked.clear()  # the listener is allowed back: a new lease, after a full read
    assert watch.wait_leased(10) and watch.registrations == registrations + 1
    assert watch.known(org.id) == epoch_of(settings, org.id)
    trips = keys.epochs.trips
    assert code(client.get("/api/v1/users", headers=h)) == (403, "insufficient_scope")
    assert keys.epochs.trips == trips


def test_a_notification_from_anyone_never_lowers_an_epoch(client, org, settings, keys):
    """Anyone who may NOTIFY on the channel can only make a process read more, never less."""
    before = keys.leases.known(org.id)
    with raw(settings) as conn:
        conn.execute(f"NOTIFY {epochwatch.CHANNEL}, '{org.id}:0'")
        conn.execute(f"NOTIFY {epochwatch.CHANNEL}, 'garbage'")
        conn.execute(f"NOTIFY {epochwatch.CHANNEL}, '{org.id}:not-a-number'")
    time.sleep(0.2)
    assert keys.leases.leased and keys.leases.known(org.id) == before


@pytest.mark.parametrize("how", ["orm update", "text update", "flushed change"])
def test_a_change_bumped_only_by_the_triggers_is_waited_for_too(client, org, settings, keys, how):
    """A tidegate transaction that changes a key without calling bump_access_epoch (the
    triggers of 0013 bump the epoch): the writer still waits for every process to apply it."""
    secret = org.key_for(org.admin_id, name=f"k-{how}")
    h = org.headers(secret)
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    digest = hash_secret(settings.pepper, secret)
    stalled = EpochWatch(settings.database_url)  # proves the wait: it never acknowledges
    with raw(settings) as conn:
        stalled._register(conn)
        started = time.monotonic()
        with session_scope(settings.database_url) as session:
            if how == "orm update":
                session.execute(update(ApiKey).where(ApiKey.secret_hash == digest).values(revoked_at=utcnow()))
            elif how == "text update":
                session.execute(sql("UPDATE api_keys SET revoked_at = now() WHERE secret_hash = :d"), {"d": digest})
            else:
                session.query(ApiKey).filter_by(secret_hash=digest).one().revoked_at = utcnow()
        assert time.monotonic() - started >= epochwatch.ACK_WAIT_SECONDS and not stalled.leased
    assert keys.leases.known(org.id) == epoch_of(settings, org.id)  # applied before the writer returned
    assert code(client.get("/api/v1/keys", headers=h)) == (401, "api_key_revoked")


def test_a_deleted_organization_never_validates_a_cached_entry_again(client, settings, keys):
    """Deleted by SQL (tidegate never deletes one): announced with an epoch no entry can reach."""
    org_id = f"org_gone{time.monotonic_ns()}"
    with raw(settings) as conn:
        conn.execute(
            "INSERT INTO organizations (id, name, created_at, api_key_creation_enabled, access_epoch, "
            "deny_by_default, max_keys_per_user, user_rate_limit_per_minute, embeds_enabled, "
            "public_share_links_enabled) VALUES (%s, %s, now(), true, 0, false, 100, 100000, true, false)",
            (org_id, org_id),
        )
        conn.execute("UPDATE organizations SET access_epoch = 7 WHERE id = %s", (org_id,))
        deadline = time.monotonic() + 5
        while keys.leases.known(org_id) != 7:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        conn.execute("DELETE FROM organizations WHERE id = %s", (org_id,))
    deadline = time.monotonic() + 5
    while keys.leases.known(org_id) != epochwatch.DELETED:
        assert time.monotonic() < deadline, "the deletion was never announced"
        time.sleep(0.01)


def test_a_savepoint_released_waits_for_nothing_and_the_commit_still_waits(org, settings, monkeypatch):
    """SQLAlchemy calls the commit hooks for a SAVEPOINT too: its release commits nothing, so
    nobody is waited for (nor fenced) then, and the real commit keeps its bumps to wait for."""
    waited: list[dict[str, int]] = []
    monkeypatch.setattr(epochwatch, "wait_for_acks", lambda engine, bumped: waited.append(dict(bumped)))
    with session_scope(settings.database_url) as session:
        with session.begin_nested():
            bump_access_epoch(session, org.id)
        assert waited == []  # (the savepoint was released: nothing is committed yet)
    assert waited == [{org.id: epoch_of(settings, org.id)}]
