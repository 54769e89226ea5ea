"""Sign-in throttling in the real server: two `tidegate serve` processes (one database) behind
a trusted proxy, sharing their counts through Redis (db 15 of the test Redis; this test's keys
are deleted after it). Two single-worker servers rather than `--workers 2`: uvicorn gives a
worker 5 s to start, which a loaded test machine does not always meet."""

from __future__ import annotations

import re
import secrets
from dataclasses import replace

import httpx
import pytest
from server import base_env, init_home

from tidegate.web.throttle import NAMESPACE, SigninThrottle, client_subject

from .test_throttle import REDIS_URL, redis_or_skip

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PROXY = {"TIDEGATE_TRUSTED_PROXIES": "127.0.0.1"}


def attempt(server, email: str, password: str, forwarded: str) -> httpx.Response:
    """A fresh browser's sign-in, through the proxy that reports `forwarded`."""
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-For": forwarded}, timeout=60) as browser:
        form = browser.get("/login")
        return browser.post(
            "/login", data={"csrf_token": CSRF.search(form.text).group(1), "email": email, "password": password}
        )


@pytest.fixture
def redis_client():
    return redis_or_skip()


def test_two_servers_share_the_lock_and_forged_addresses_do_not_escape_it(tmp_path, redis_client):
    first = init_home(tmp_path, redis_url=REDIS_URL, extra_env=PROXY)
    home = tmp_path / "second-home"
    home.mkdir()
    second = replace(
        first,
        home=home,
        env=base_env(home, database_url=f"sqlite:///{first.home / 'tidegate.db'}", redis_url=REDIS_URL, extra=PROXY),
        _log_files=[],
    )
    email, password = "victim@example.com", "victim-" + secrets.token_hex(8)
    first.cli("users", "create", "--org", first.org_id, "--email", email, "--role", "member", "--password", password)
    attacker, other = "203.0.113.80", "198.51.100.80"
    try:
        first.start()
        second.start()
        for n in range(5):  # alternate servers; the attacker forges a different first hop each time
            response = attempt((first, second)[n % 2], email, f"guess-{n}", f"10.0.0.{n}, {attacker}")
            assert response.status_code == 401
        for server in (first, second):  # both know: locked, even for the right password
            response = attempt(server, email, password, f"10.0.1.1, {attacker}")
            assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 900
            assert "tidegate_session" not in response.cookies
        response = attempt(second, email, password, other)  # the real user, elsewhere
        assert response.status_code == 303 and "tidegate_session" in response.cookies
    finally:
        for server in (first, second):
            if server.proc is not None:
                server.stop()
        throttle = SigninThrottle(None)
        keys = [throttle._ip(client_subject(ip)) for ip in (attacker, other)]
        keys += [throttle._triple(first.org_id, email, client_subject(ip)) for ip in (attacker, other)]
        keys += [throttle._account(first.org_id, email)]
        assert all(key.startswith(NAMESPACE) for key in keys)
        redis_client.delete(*keys)
