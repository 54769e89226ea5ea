"""Smaller edges (issue 8, section 11): nosniff everywhere, a pre-sign-in CSRF cookie only
the server issues, and private file modes for the database and data."""

from __future__ import annotations

import os
import stat
import time

import pytest
from fastapi.testclient import TestClient
from server import init_home

from tidegate.api.app import create_app
from tidegate.config import load_settings
from tidegate.web import sessions
from tidegate.web.sessions import LOGIN_COOKIE, csrf_token, login_cookie_valid, new_login_cookie

# ---------------------------------------------------------------------------------------
# X-Content-Type-Options: nosniff on every response
# ---------------------------------------------------------------------------------------


def nosniff_values(response) -> list[str]:
    return [v for k, v in response.headers.multi_items() if k.lower() == "x-content-type-options"]


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/healthz", 200),
        ("GET", "/api/v1/keys", 401),  # an error envelope
        ("GET", "/api/v1/no-such-thing", 404),
        ("GET", "/no-such-page", 404),
        ("DELETE", "/healthz", 405),
        ("GET", "/static/app.js", 200),  # a static file
        ("GET", "/static/missing.js", 404),
        ("GET", "/login", 200),  # a web page (sets its own; never twice)
        ("GET", "/", 303),  # a redirect
        ("GET", "/api/openapi.json", 200),
    ],
)
def test_every_response_says_nosniff(client, method, path, status):
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == status
    assert nosniff_values(response) == ["nosniff"]


def test_authenticated_api_and_internal_errors_say_nosniff(client, org, monkeypatch):
    response = client.get("/api/v1/keys", headers=org.headers())
    assert response.status_code == 200 and nosniff_values(response) == ["nosniff"]
    monkeypatch.setattr("tidegate.api.app.__version__", object())  # healthz can no longer be rendered
    response = TestClient(client.app, raise_server_exceptions=False).get("/healthz")
    assert response.status_code == 500 and nosniff_values(response) == ["nosniff"]


# ---------------------------------------------------------------------------------------
# The pre-sign-in CSRF cookie: issued by the server only
# ---------------------------------------------------------------------------------------


def login_post(client, cookie: str | None, token: str, email: str = "nobody@example.com"):
    client.cookies.clear()
    if cookie is not None:
        client.cookies.set(LOGIN_COOKIE, cookie)
    return client.post(
        "/login", data={"csrf_token": token, "email": email, "password": "wrong password 123"}, follow_redirects=False
    )


def test_a_planted_login_cookie_is_replaced_not_adopted(client, settings):
    planted = "attacker-chosen-login-cookie-value-0123456789"
    client.cookies.clear()
    client.cookies.set(LOGIN_COOKIE, planted)
    response = client.get("/login")
    issued = response.cookies.get(LOGIN_COOKIE)
    assert issued and issued != planted and login_cookie_valid(settings.session_key, issued)
    assert csrf_token(settings.session_key, planted, "login") not in response.text
    assert csrf_token(settings.session_key, issued, "login") in response.text
    # A cookie the server issued is kept on the next visit (the form stays valid).
    client.cookies.clear()
    client.cookies.set(LOGIN_COOKIE, issued)
    again = client.get("/login")
    assert again.cookies.get(LOGIN_COOKIE) == issued


def test_a_forged_login_cookie_with_its_matching_token_is_refused(client, settings):
    key = settings.session_key
    genuine = new_login_cookie(key)
    payload = genuine.rpartition(".")[0]
    stale_payload = f"{payload.split('.')[0]}.{int(time.time()) - sessions.LOGIN_COOKIE_TTL - 5}"
    forged = [
        "attacker-chosen-login-cookie-value-0123456789",  # unsigned (accepted before)
        payload + "." + "0" * 64,  # a signature that is not the server's
        new_login_cookie(b"another server's session key"),
        stale_payload + "." + sessions._mac(key, "login-cookie", stale_payload),  # expired
    ]
    for cookie in forged:
        # The form token matches the cookie, as an attacker who planted both would send it.
        response = login_post(client, cookie, csrf_token(key, cookie, "login"))
        assert response.status_code == 403, cookie
        assert "Sign-in form expired" in response.text
    # The same request with a cookie the server issued passes the CSRF check (then the
    # password is wrong: 401), so the 403s above are the cookie's doing.
    response = login_post(client, genuine, csrf_token(key, genuine, "login"))
    assert response.status_code == 401
    assert login_post(client, None, csrf_token(key, genuine, "login")).status_code == 403


# ---------------------------------------------------------------------------------------
# File modes
# ---------------------------------------------------------------------------------------


def modes_under(root) -> dict[str, int]:
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def assert_private(root) -> dict[str, int]:
    modes = modes_under(root)
    wrong = {
        path: oct(mode)
        for path, mode in modes.items()
        if mode != (0o700 if os.path.isdir(os.path.join(root, path)) else 0o600)
    }
    assert not wrong, f"not private: {wrong}"
    return modes


def test_database_and_data_are_private_after_init_and_a_write(tmp_path, monkeypatch):
    old_umask = os.umask(0o022)  # the usual default: files 0644 and directories 0755 unless set
    try:
        srv = init_home(tmp_path)
        modes = assert_private(srv.home)
        assert {"tidegate.db", "data", "audit", "secrets.json"} <= set(modes)

        monkeypatch.setenv("TIDEGATE_HOME", str(srv.home))
        for name in [n for n in os.environ if n.startswith("TIDEGATE_") and n != "TIDEGATE_HOME"]:
            monkeypatch.delenv(name)
        settings = load_settings()
        headers = {"Authorization": f"Bearer {srv.admin_key}", "X-Tenant-ID": srv.org_id}
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            created = client.post("/api/v1/sources", json={"name": "s", "rows": [{"a": 1}, {"a": 2}]}, headers=headers)
            assert created.status_code == 201, created.text
            appended = client.post(
                f"/api/v1/sources/{created.json()['id']}/rows", json={"rows": [{"a": 3}]}, headers=headers
            )
            assert appended.status_code in (200, 201), appended.text
            modes = assert_private(srv.home)  # while the database is open: -wal and -shm too
        assert any(p.endswith(".parquet") for p in modes) and "tidegate.db-wal" in modes
        assert_private(srv.home)
    finally:
        os.umask(old_umask)


def test_an_existing_wide_database_and_directories_are_made_private(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True, mode=0o755)
    (home / "audit").mkdir(mode=0o755)
    database = home / "tidegate.db"
    database.write_bytes(b"")
    os.chmod(home, 0o755)
    os.chmod(database, 0o644)
    monkeypatch.setenv("TIDEGATE_HOME", str(home))
    for name in [n for n in os.environ if n.startswith("TIDEGATE_") and n != "TIDEGATE_HOME"]:
        monkeypatch.delenv(name)
    settings = load_settings()
    from tidegate.db.engine import migrate

    migrate(settings.database_url)
    assert_private(home)
