"""Session cookie flags and what the session table holds (in-process, SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from tidegate.api.app import create_app
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.web.models import WebSession
from tidegate.web.sessions import token_hash

PASSWORD = "a-long-enough-password"


def make_admin(settings) -> str:
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    with session_scope(settings.database_url) as session:
        orgs.create_organization(session, f"org-{uuid.uuid4().hex[:10]}", email, PASSWORD)
    return email


def sign_in(client: TestClient, email: str):
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/login", data={"csrf_token": csrf, "email": email, "password": PASSWORD}, follow_redirects=False
    )


def session_cookie(response) -> str:
    return next(h for h in response.headers.get_list("set-cookie") if h.startswith("tidegate_session="))


def test_cookie_is_secure_over_https_and_only_a_keyed_hash_is_stored(settings):
    email = make_admin(settings)
    with TestClient(create_app(settings), base_url="https://tidegate.test") as client:
        response = sign_in(client, email)
        assert response.status_code == 303
        cookie = session_cookie(response)
        assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        token = cookie.split(";")[0].split("=", 1)[1]
        assert client.get("/settings/api-keys").status_code == 200
    with session_scope(settings.database_url) as session:
        rows = list(session.scalars(select(WebSession)))
        stored = [r.token_hash for r in rows]
    assert token_hash(settings.session_key, token) in stored
    assert token not in stored
    # Without the server's session key, the stored hash is useless: it is not a plain hash.
    assert hashlib.sha256(token.encode()).hexdigest() not in stored


def test_cookie_is_not_secure_over_plain_http(settings):
    email = make_admin(settings)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        cookie = session_cookie(sign_in(client, email))
        assert "Secure" not in cookie and "HttpOnly" in cookie


def test_sign_out_deletes_the_session_row(settings):
    email = make_admin(settings)
    with TestClient(create_app(settings)) as client:
        sign_in(client, email)
        page = client.get("/settings/api-keys")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        token = client.cookies.get("tidegate_session")
        assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    with session_scope(settings.database_url) as session:
        assert (
            session.scalar(select(WebSession).where(WebSession.token_hash == token_hash(settings.session_key, token)))
            is None
        )
