"""Sign-in throttling in the real server: two uvicorn workers behind a trusted proxy, sharing
their counts through Redis (db 15 of the test Redis; this test's keys are deleted after it)."""

from __future__ import annotations

import re
import secrets
import urllib.parse
from http.cookies import SimpleCookie

import pytest

from server import WorkerPool, init_home
from tidegate.web.throttle import NAMESPACE, SigninThrottle, client_subject

from .test_throttle import REDIS_URL, redis_or_skip

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def attempt(pool: WorkerPool, worker: int, email: str, password: str, forwarded: str):
    """A fresh browser's sign-in on one worker's keep-alive connection: (status, headers)."""
    conn = pool._connection(worker).conn
    conn.request("GET", "/login", headers={"X-Forwarded-For": forwarded})
    form = conn.getresponse()
    page = form.read().decode()
    cookie = SimpleCookie(form.getheader("set-cookie"))
    body = urllib.parse.urlencode({"csrf_token": CSRF.search(page).group(1), "email": email, "password": password})
    conn.request("POST", "/login", body=body, headers={
        "X-Forwarded-For": forwarded, "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": "; ".join(f"{name}={morsel.value}" for name, morsel in cookie.items())})
    response = conn.getresponse()
    response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


@pytest.fixture
def redis_client():
    return redis_or_skip()


def test_two_workers_share_the_lock_and_forged_addresses_do_not_escape_it(tmp_path, redis_client):
    password = "victim-" + secrets.token_hex(8)
    srv = init_home(tmp_path, redis_url=REDIS_URL, extra_env={"TIDEGATE_TRUSTED_PROXIES": "127.0.0.1"})
    email = "victim@example.com"
    srv.cli("users", "create", "--org", srv.org_id, "--email", email, "--role", "member", "--password", password)
    attacker, other = "203.0.113.80", "198.51.100.80"
    srv.start(workers=2)
    try:
        pool = WorkerPool(srv, 2)
        for n in range(5):  # alternate workers; the attacker forges a different first hop each time
            status, _ = attempt(pool, n % 2, email, f"guess-{n}", f"10.0.0.{n}, {attacker}")
            assert status == 401
        for worker in (0, 1):  # both workers know: locked, even for the right password
            status, headers = attempt(pool, worker, email, password, f"10.0.1.{worker}, {attacker}")
            assert status == 429 and 1 <= int(headers["retry-after"]) <= 900
            assert "tidegate_session" not in headers.get("set-cookie", "")
        status, headers = attempt(pool, 1, email, password, other)  # the real user, elsewhere
        assert status == 303 and "tidegate_session=" in headers["set-cookie"]
    finally:
        srv.stop()
        throttle = SigninThrottle(None)
        keys = [throttle._ip(client_subject(ip)) for ip in (attacker, other)]
        keys += [throttle._triple(srv.org_id, email, client_subject(ip)) for ip in (attacker, other)]
        keys += [throttle._account(srv.org_id, email)]
        assert all(key.startswith(NAMESPACE) for key in keys)
        redis_client.delete(*keys)
