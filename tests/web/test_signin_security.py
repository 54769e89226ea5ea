"""Sign-in throttling through the sign-in page: the attacks of issue 8 §7, reproduced and defeated.

The server runs in process (TestClient from 127.0.0.1, a trusted proxy here, so each request
names its client in X-Forwarded-For) with the sign-in throttle on a test clock.
"""

from __future__ import annotations

import re
import secrets
import socket
import uuid
from dataclasses import replace

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from tidegate.api.app import create_app
from tidegate.config import Settings
from tidegate.db.engine import session_scope
from tidegate.orgs import passwords
from tidegate.orgs import service as orgs
from tidegate.web.throttle import MemoryStore, RedisStore, SigninThrottle, redis_client

from .test_throttle import REDIS_URL, Clock, redis_or_skip

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PAUSED = "Too many failed sign-in attempts for this account or from your network."
WRONG = "Email or password is incorrect."


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """argon2id at its cheapest: these tests are about counting attempts, not hashing cost
    (one verification at the real parameters takes a second on a busy 2-core machine)."""
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def settings(tmp_path, sqlite_url) -> Settings:
    return Settings(
        home=tmp_path,
        database_url=sqlite_url,
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=("127.0.0.1",),
    )


@pytest.fixture
def clock():
    return Clock()


def serve(settings: Settings, clock: Clock, store=None, namespace: str | None = None) -> TestClient:
    app = create_app(settings)
    app.state.signin_throttle = SigninThrottle(
        store or MemoryStore(), clock=clock, namespace=namespace or f"test-signin-{uuid.uuid4().hex}"
    )
    return TestClient(app, client=("127.0.0.1", 50000))


@pytest.fixture
def site(settings, clock):
    with serve(settings, clock) as client:
        yield client


def make_org(settings: Settings, admin_email: str, password: str) -> str:
    with session_scope(settings.database_url) as session:
        return orgs.create_organization(session, f"org-{uuid.uuid4().hex[:10]}", admin_email, password).org.id


def sign_in(client: TestClient, email: str, password: str, ip: str, *, forwarded: str | None = None):
    """One attempt from a fresh browser at `ip` (as the trusted proxy reports it)."""
    client.cookies.clear()
    headers = {"X-Forwarded-For": forwarded or ip}
    form = client.get("/login", headers=headers)
    assert form.status_code == 200
    return client.post(
        "/login",
        headers=headers,
        follow_redirects=False,
        data={"csrf_token": CSRF.search(form.text).group(1), "email": email, "password": password},
    )


def signed_in(response) -> bool:
    return response.status_code == 303 and "tidegate_session" in response.cookies


def paused(response) -> int:
    assert response.status_code == 429, response.status_code
    assert PAUSED in response.text and "tidegate_session" not in response.cookies
    return int(response.headers["Retry-After"])


@pytest.fixture
def victim(settings):
    email, password = f"victim-{uuid.uuid4().hex[:8]}@x.test", "victim-" + secrets.token_hex(8)
    return email, password, make_org(settings, email, password)


def test_a_success_in_the_attackers_org_does_not_reset_the_victims_lock(site, settings, victim):
    email, password, _ = victim
    # The attacker made a user with the victim's email in an organization of their own.
    attacker_password = "attacker-" + secrets.token_hex(8)
    make_org(settings, email, attacker_password)
    attacker = "203.0.113.66"
    for n in range(4):
        assert sign_in(site, email, f"guess-{n}", attacker).status_code == 401
    # Signing in to their own account: it is a fifth failure for the victim's organization.
    assert signed_in(sign_in(site, email, attacker_password, attacker))
    for guess in ("guess-5", password):  # even the right password: paused, not signed in
        assert 890 <= paused(sign_in(site, email, guess, attacker)) <= 900
    # Their own organization stays open to them: more successes there reset nothing.
    assert signed_in(sign_in(site, email, attacker_password, attacker))
    assert paused(sign_in(site, email, password, attacker))
    # The victim, elsewhere, is not affected.
    assert signed_in(sign_in(site, email, password, "198.51.100.7"))


def test_a_success_elsewhere_leaves_a_locked_ip_locked(site, settings, victim, clock):
    email, password, _ = victim
    attacker_password = "attacker-" + secrets.token_hex(8)
    make_org(settings, email, attacker_password)
    for n in range(5):
        assert sign_in(site, email, f"guess-{n}", "203.0.113.66").status_code == 401
    assert signed_in(sign_in(site, email, attacker_password, "203.0.113.67"))
    assert paused(sign_in(site, email, password, "203.0.113.66"))
    clock.advance(901)
    assert signed_in(sign_in(site, email, password, "203.0.113.66"))


def test_failures_from_five_ips_do_not_lock_out_the_real_user(site, victim):
    email, password, _ = victim
    for n in range(5):
        assert sign_in(site, email, "wrong-password", f"203.0.113.{n + 1}").status_code == 401
    assert signed_in(sign_in(site, email, password, "198.51.100.7"))


def test_many_ips_only_slow_the_account_down(site, victim, clock):
    email, password, _ = victim
    for n in range(10):
        assert sign_in(site, email, "wrong-password", f"203.0.113.{n + 1}").status_code == 401
    # From a clean IP the real user waits a moment, then signs in.
    wait = paused(sign_in(site, email, password, "198.51.100.7"))
    assert wait <= 2
    clock.advance(wait)
    assert signed_in(sign_in(site, email, password, "198.51.100.7"))


def test_a_locked_ip_is_refused_even_the_right_password_until_the_window_passes(site, victim, clock):
    email, password, _ = victim
    for n in range(5):
        response = sign_in(site, email, f"guess-{n}", "203.0.113.9")
        assert response.status_code == 401 and WRONG in response.text
    assert 890 <= paused(sign_in(site, email, password, "203.0.113.9")) <= 900
    assert signed_in(sign_in(site, email, password, "203.0.113.10"))  # other IPs: unaffected
    clock.advance(600)
    assert 290 <= paused(sign_in(site, email, password, "203.0.113.9")) <= 300
    clock.advance(301)
    assert signed_in(sign_in(site, email, password, "203.0.113.9"))


def test_a_success_resets_only_its_own_ip(site, victim, clock):
    email, password, _ = victim
    for ip in ("203.0.113.1", "203.0.113.2"):
        for _ in range(4):
            clock.advance(30)  # spaced out: the account's slow-down does not come into it
            assert sign_in(site, email, "wrong-password", ip).status_code == 401
    assert signed_in(sign_in(site, email, password, "203.0.113.1"))
    for _ in range(4):
        clock.advance(30)
        assert sign_in(site, email, "wrong-password", "203.0.113.1").status_code == 401
    clock.advance(30)
    assert signed_in(sign_in(site, email, password, "203.0.113.1"))
    # The other IP still has its four: one more failure locks it.
    clock.advance(30)
    assert sign_in(site, email, "wrong-password", "203.0.113.2").status_code == 401
    assert paused(sign_in(site, email, password, "203.0.113.2"))


def test_an_unknown_email_is_paused_the_same_way(site, victim):
    email, _, _ = victim
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@x.test"
    answers = {}
    for address in (email, nobody):
        for _ in range(5):
            assert sign_in(site, address, "wrong-password", "203.0.113.30").status_code == 401
        answers[address] = sign_in(site, address, "wrong-password", "203.0.113.30")
    known, unknown = answers[email], answers[nobody]
    assert paused(known) == paused(unknown)
    strip = re.compile(r'value="[^"]*"')
    assert strip.sub("", known.text) == strip.sub("", unknown.text)


def test_forged_forwarded_for_does_not_escape_the_lock(site, victim):
    email, password, _ = victim
    # Behind the trusted proxy: the attacker prepends addresses; the proxy appends the real one.
    for n in range(5):
        assert sign_in(site, email, "wrong", "", forwarded=f"10.9.9.{n}, 203.0.113.50").status_code == 401
    assert paused(sign_in(site, email, password, "", forwarded="10.9.9.99, 203.0.113.50"))


def test_forwarded_for_from_an_untrusted_peer_is_ignored(settings, clock, victim):
    email, password, _ = victim
    with serve(replace(settings, trusted_proxies=()), clock) as site:
        for n in range(5):
            assert sign_in(site, email, "wrong", f"203.0.113.{n + 1}").status_code == 401
        # All five came from 127.0.0.1, whatever the header said: it is locked.
        assert paused(sign_in(site, email, password, "198.51.100.7"))


def test_one_email_in_two_orgs_with_one_password_still_offers_the_choice(site, settings, victim):
    email, password, _ = victim
    make_org(settings, email, password)
    for _ in range(4):
        assert sign_in(site, email, "wrong-password", "203.0.113.40").status_code == 401
    response = sign_in(site, email, password, "203.0.113.40")
    assert response.status_code == 200 and "Choose an organization" in response.text
    # That success cleared both organizations' counters for this IP.
    for _ in range(4):
        assert sign_in(site, email, "wrong-password", "203.0.113.40").status_code == 401
    assert sign_in(site, email, password, "203.0.113.40").status_code == 200


def test_with_redis_two_servers_share_the_counts(settings, clock, victim):
    redis_or_skip()
    email, password, _ = victim
    namespace = f"test-signin-{uuid.uuid4().hex}"
    try:
        with (
            serve(settings, clock, RedisStore(redis_client(REDIS_URL)), namespace) as first,
            serve(settings, clock, RedisStore(redis_client(REDIS_URL)), namespace) as second,
        ):
            for n in range(5):
                assert sign_in((first, second)[n % 2], email, "wrong", "203.0.113.60").status_code == 401
            assert paused(sign_in(first, email, password, "203.0.113.60"))
            assert paused(sign_in(second, email, password, "203.0.113.60"))
            assert signed_in(sign_in(second, email, password, "203.0.113.61"))
    finally:
        client = redis_or_skip()
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)


def test_redis_down_answers_503_and_signs_nobody_in(settings, victim):
    email, password, _ = victim
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with TestClient(
        create_app(replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")), client=("127.0.0.1", 50000)
    ) as site:
        response = sign_in(site, email, password, "203.0.113.70")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert "temporarily unavailable" in response.text and "tidegate_session" not in response.cookies
