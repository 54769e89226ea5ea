"""The in-process key cache (`credentials.authenticate.KeyCache`) must never serve a key
state that the database no longer holds.

Before the cache, authentication read the database on every request, so the API tests
(test_api_auth.py) passed whatever happened between requests. These tests make sure a key
IS cached (on SQLite they check the cache entry is fresh) and then change the database
behind the server's back -- from another process, with plain SQL that knows nothing of
tidegate -- and require the very next request to see it.

While a test runs, the app's audit journal is kept from shipping (we hold its ship lock),
so no commit of the server's own lands between "cached" and "changed": the write under
test is the only thing that can invalidate the entry.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tidegate.api.app import create_app
from tidegate.credentials import authenticate
from tidegate.credentials.authenticate import KeyCache
from tidegate.credentials.hashing import hash_secret
from tidegate.credentials.keyformat import generate_key, is_well_formed
from tidegate.credentials.models import ApiKey
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope

# -- helpers ----------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import json, re, sys
    url, sql, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if url.startswith("sqlite"):
        import sqlite3
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=30)
        count = conn.execute(sql, params).rowcount
    else:
        import psycopg
        with psycopg.connect("postgresql://" + url.split("://", 1)[1], autocommit=True) as conn:
            count = conn.execute(re.sub(r":(\\w+)", r"%(\\1)s", sql), params).rowcount
    print(count)
""")


def write_elsewhere(database_url: str, sql: str, keys: KeyCache | None = None, **params) -> None:
    """Run one UPDATE in a separate Python process (sqlite3 / psycopg only, no tidegate)
    and commit it; exactly one row must change.

    With `keys` holding an epoch lease (PostgreSQL), wait until the change's announcement has
    reached it: SQL run outside tidegate is seen as soon as it is delivered, but no writer
    waits for it (only tidegate's own writes do), so "the very next request" means the next
    one after delivery. Without a lease nothing is waited for: the per-request epoch read
    must see it at once."""
    before = _epochs_now(database_url, keys)
    out = subprocess.run(
        [sys.executable, "-c", _WRITER, database_url, sql, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1", f"{sql} changed {out.stdout.strip()} rows"
    if before:
        after = _epochs_now(database_url, keys)
        deadline = time.monotonic() + 5
        while any(keys.leases.known(org) < epoch for org, epoch in after.items() if epoch != before.get(org)):
            assert time.monotonic() < deadline, "the change was never announced"
            time.sleep(0.005)


def _epochs_now(database_url: str, keys: KeyCache | None) -> dict[str, int]:
    if keys is None or keys.leases is None or not keys.leases.leased:
        return {}
    import psycopg

    with psycopg.connect("postgresql://" + database_url.split("://", 1)[1]) as conn:
        return dict(conn.execute("SELECT id, access_epoch FROM organizations").fetchall())


def sql_time(database_url: str, when) -> str:
    """A UTC timestamp as each database stores it (SQLite: naive text, as SQLAlchemy writes it)."""
    if database_url.startswith("sqlite"):
        return when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when.isoformat()


def is_sqlite(settings) -> bool:
    return settings.database_url.startswith("sqlite")


@pytest.fixture
def keys(client) -> KeyCache:
    return client.app.state.key_cache


@pytest.fixture
def quiet(client, settings):
    """No commit by the app's own audit shipper while the test runs (it waits on the ship lock)."""
    settings.audit_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.audit_dir / "ship.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def assert_cached(keys: KeyCache, settings, digest: str) -> None:
    """The key must now be answered from the cache (else the test proves nothing): on SQLite
    fresh by the commit generation, on PostgreSQL held at the organization's current epoch."""
    if is_sqlite(settings):
        assert keys.cached(digest) is not None, "the key is not cached: this test would prove nothing"
    else:
        assert keys.watch.generation() is None and digest in keys._entries
        state = keys._entries[digest][1]
        assert authenticate.read_epochs(settings.database_url, [state.org_id]) == [state.access_epoch], (
            "the cached key is not at its organization's epoch: this test would prove nothing"
        )


def error_code(response) -> str | None:
    return response.json()["error"]["code"] if response.status_code >= 400 else None


# -- writes from another process ---------------------------------------------------------------

# Changes that narrow what a key may do, and what each must make the next three requests
# to /api/v1/users answer; below, the SQL another process runs to make them.
REFUSED = {
    "key revoked": (401, "api_key_revoked"),
    "creator demoted": (403, "insufficient_scope"),
    "creator deactivated": (401, "api_key_owner_inactive"),
    "scopes narrowed": (403, "insufficient_scope"),
    "ip allowlist set": (403, "ip_not_allowed"),
    "expiry moved into the past": (401, "api_key_expired"),
}
EXTERNAL_WRITES = {
    "key revoked": "UPDATE api_keys SET revoked_at = :now WHERE secret_hash = :digest",
    "creator demoted": "UPDATE users SET role = 'member' WHERE id = :owner",
    "creator deactivated": "UPDATE users SET is_active = :false WHERE id = :owner",
    "scopes narrowed": "UPDATE api_keys SET scopes = :data_read WHERE secret_hash = :digest",
    "ip allowlist set": "UPDATE api_keys SET ip_allowlist = :elsewhere WHERE secret_hash = :digest",
    "expiry moved into the past": "UPDATE api_keys SET expires_at = :past WHERE secret_hash = :digest",
    # The key has made 3 requests this minute. A stale cached limit (1,000) would answer 200
    # three more times; at 1 a minute at most one more is allowed (one, if the count starts
    # afresh with a new limit, as `limits`' counters keyed per (key, limit) do).
    "rate limit lowered to 1": "UPDATE api_keys SET rate_limit_per_minute = 1 WHERE secret_hash = :digest",
}
EXPECTED = {change: [REFUSED[change]] * 3 for change in REFUSED}


@pytest.mark.parametrize("change", list(EXTERNAL_WRITES))
def test_a_write_by_another_process_is_seen_by_the_very_next_request(client, org, settings, keys, quiet, change):
    sql, path = EXTERNAL_WRITES[change], "/api/v1/users"
    owner = org.add_user(f"owner-{uuid.uuid4().hex[:8]}@example.com", role="admin")
    secret = org.key_for(owner)  # full access, as an admin
    digest = hash_secret(settings.pepper, secret)
    for _ in range(3):  # the first read loads the key, the next ones are cache hits
        assert client.get(path, headers=org.headers(secret)).status_code == 200
    assert_cached(keys, settings, digest)

    write_elsewhere(
        settings.database_url,
        sql,
        keys,
        digest=digest,
        owner=owner,
        false=False,
        data_read='["data:read"]',
        elsewhere='["10.0.0.0/8"]',
        now=sql_time(settings.database_url, utcnow()),
        past=sql_time(settings.database_url, utcnow() - timedelta(seconds=1)),
    )

    results = [
        (r.status_code, error_code(r)) for r in (client.get(path, headers=org.headers(secret)) for _ in range(3))
    ]
    if change == "rate limit lowered to 1":
        assert results[0] in {(200, None), (429, "rate_limit_exceeded")}
        assert results[1:] == [(429, "rate_limit_exceeded")] * 2
    else:
        assert results == EXPECTED[change]
    # Nobody else is affected: the org admin's own (cached) key still works.
    assert client.get(path, headers=org.headers()).status_code == 200


def test_demotion_then_reactivation_written_elsewhere_both_take_effect(client, org, settings, keys, quiet):
    """Changes in both directions: the cache must follow the database, not just refuse more."""
    owner = org.add_user("second-admin@example.com", role="admin")
    secret = org.key_for(owner)
    digest = hash_secret(settings.pepper, secret)
    h = org.headers(secret)
    assert client.get("/api/v1/users", headers=h).status_code == 200
    assert client.get("/api/v1/users", headers=h).status_code == 200
    assert_cached(keys, settings, digest)
    write_elsewhere(settings.database_url, "UPDATE users SET role = 'member' WHERE id = :owner", keys, owner=owner)
    r = client.get("/api/v1/users", headers=h)
    assert (r.status_code, error_code(r)) == (403, "insufficient_scope")
    assert client.get("/api/v1/keys", headers=h).status_code == 200  # what a member may do still works
    assert_cached(keys, settings, digest)
    write_elsewhere(
        settings.database_url, "UPDATE users SET is_active = :false WHERE id = :owner", keys, owner=owner, false=False
    )
    r = client.get("/api/v1/keys", headers=h)
    assert (r.status_code, error_code(r)) == (401, "api_key_owner_inactive")
    write_elsewhere(
        settings.database_url,
        "UPDATE users SET is_active = :true, role = 'admin' WHERE id = :owner",
        keys,
        owner=owner,
        true=True,
    )
    assert client.get("/api/v1/users", headers=h).status_code == 200


def test_a_commit_between_the_generation_and_the_read_is_not_cached_as_fresh(
    client, org, settings, keys, quiet, monkeypatch
):
    """The race the cache's ordering exists for: the key is read (still active), then a
    revocation commits, then the entry is stored. Stamped with the generation from before
    the read, the entry is stale at once; stamped after, it would be served for ever."""
    secret = org.key_for(org.admin_id, name="raced")
    digest = hash_secret(settings.pepper, secret)
    real_load = authenticate.load_key_state
    raced = []

    def load_then_revoke(session, wanted):
        state = real_load(session, wanted)
        if wanted == digest and not raced:
            raced.append(True)
            write_elsewhere(
                settings.database_url,
                "UPDATE api_keys SET revoked_at = :now WHERE secret_hash = :digest",
                keys,
                digest=digest,
                now=sql_time(settings.database_url, utcnow()),
            )
        return state

    monkeypatch.setattr(authenticate, "load_key_state", load_then_revoke)
    first = client.get("/api/v1/keys", headers=org.headers(secret))
    assert raced and first.status_code == 200  # read before the revocation committed
    results = [client.get("/api/v1/keys", headers=org.headers(secret)) for _ in range(3)]
    assert [(r.status_code, error_code(r)) for r in results] == [(401, "api_key_revoked")] * 3


def test_an_expiry_passing_while_cached_is_refused(client, org, settings, keys, quiet):
    secret = org.key_for(org.admin_id, name="brief", expires_in_days=1)
    digest = hash_secret(settings.pepper, secret)
    expires_at = utcnow() + timedelta(seconds=1.2)
    with session_scope(settings.database_url) as session:
        session.execute(update(ApiKey).where(ApiKey.secret_hash == digest).values(expires_at=expires_at))
    h = org.headers(secret)
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    assert_cached(keys, settings, digest)
    generation = keys.watch.generation()

    time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.1)
    # Nothing was committed meanwhile: on SQLite the entry is still fresh, so the refusal
    # below comes from the clock, not from a reload.
    assert keys.watch.generation() == generation
    assert_cached(keys, settings, digest)
    r = client.get("/api/v1/keys", headers=h)
    assert (r.status_code, error_code(r)) == (401, "api_key_expired")
    assert keys.watch.generation() == generation


def test_unknown_well_formed_keys_are_never_cached(client, org, settings, keys, quiet):
    assert client.get("/api/v1/keys", headers=org.headers()).status_code == 200  # one real entry (SQLite)
    before = dict(keys._entries)
    tokens = [generate_key() for _ in range(50)]
    assert all(is_well_formed(t) for t in tokens)
    for token in tokens:
        r = client.get("/api/v1/keys", headers=org.headers(token))
        assert (r.status_code, error_code(r)) == (401, "invalid_api_key")
    assert dict(keys._entries) == before
    assert not {hash_secret(settings.pepper, t) for t in tokens} & set(keys._entries)
    # Asking the cache directly does not store anything either.
    for token in tokens[:5]:
        assert keys.load(hash_secret(settings.pepper, token)) is None
    assert dict(keys._entries) == before


def test_a_cached_key_is_still_refused_for_another_tenant(client, make_org, settings, keys, quiet):
    a, b = make_org(), make_org()
    assert client.get("/api/v1/keys", headers=a.headers()).status_code == 200
    assert_cached(keys, settings, hash_secret(settings.pepper, a.admin_key))
    wrong = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {a.admin_key}", "X-Tenant-ID": b.id})
    unknown = client.get("/api/v1/keys", headers={"Authorization": f"Bearer {generate_key()}", "X-Tenant-ID": b.id})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_the_cache_is_bounded(org, settings):
    cache = KeyCache(settings.database_url, size=3)
    secrets = [org.key_for(org.admin_id, name=f"k{i}") for i in range(5)]
    digests = [hash_secret(settings.pepper, s) for s in secrets]
    for digest in digests:
        assert cache.load(digest).key_id
    assert list(cache._entries) == digests[-3:]  # least recently used first out
    if is_sqlite(settings):
        assert all(cache.cached(d) is not None for d in digests[-3:])
        assert all(cache.cached(d) is None for d in digests[:2])


# -- PostgreSQL: entries validated by the organization's epoch --------------------------------

ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def unleased(settings):
    """The app without epoch leases (TIDEGATE_EPOCH_LEASE_SECONDS=0): the epoch is read per request."""
    with TestClient(create_app(replace(settings, epoch_lease_seconds=0)), client=("127.0.0.1", 50000)) as test_client:
        assert test_client.app.state.key_cache.leases is None
        yield test_client


@ON_POSTGRESQL
def test_a_cached_key_costs_an_epoch_read_not_a_key_read(unleased, org, settings, quiet, monkeypatch):
    client, keys = unleased, unleased.app.state.key_cache
    secret = org.key_for(org.admin_id, name="warm")
    h = org.headers(secret)
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    reads, epoch_trips = [], keys.epochs.trips
    real_load = authenticate.load_key_state
    monkeypatch.setattr(authenticate, "load_key_state", lambda s, d: reads.append(d) or real_load(s, d))
    for _ in range(5):
        assert client.get("/api/v1/keys", headers=h).status_code == 200
    assert reads == [] and keys.epochs.trips >= epoch_trips + 5  # validated each time, never re-read
    # A change through tidegate (the org's limits) bumps the epoch: the next request re-reads.
    assert client.patch("/api/v1/org/settings", headers=h, json={"user_rate_limit_per_minute": 5000}).status_code == 200
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    assert len(reads) >= 1


@ON_POSTGRESQL
def test_an_epoch_read_that_fails_is_a_503_never_a_stale_success(unleased, org, settings, quiet):
    client, keys = unleased, unleased.app.state.key_cache
    secret = org.key_for(org.admin_id, name="down")
    h = org.headers(secret)
    assert client.get("/api/v1/keys", headers=h).status_code == 200
    assert_cached(keys, settings, hash_secret(settings.pepper, secret))
    reader = keys.epochs._work
    # The database unreachable for the epoch read (a closed port on loopback), key still cached.
    keys.epochs._work = authenticate.EpochReader("postgresql://root@127.0.0.1:1/none")
    try:
        r = client.get("/api/v1/keys", headers=h)
        assert (r.status_code, error_code(r)) == (503, "database_unavailable")
        assert "127.0.0.1:1" not in r.text and "postgresql" not in r.text
    finally:
        keys.epochs._work = reader
    assert client.get("/api/v1/keys", headers=h).status_code == 200  # back, without a restart


@ON_POSTGRESQL
def test_an_organization_without_an_epoch_row_never_validates_an_entry(org, settings):
    """No such organization reads as None, which no cached epoch (an int) equals."""
    reader = authenticate.EpochReader(settings.database_url)

    async def reads():
        return await reader(["org_missing", org.id, "org_missing"]), await reader([org.id])

    both, own = asyncio.run(reads())
    assert both[::2] == [None, None] and isinstance(own[0], int) and both[1] == own[0]
    assert authenticate.read_epochs(settings.database_url, ["org_missing", org.id]) == both[:2]
