"""The /embed page in an iframe of a parent page served from other loopback ports.

The parent is a tiny http.server page that frames /embed, records the messages the frame
posts, and posts `init` itself: the handshake, a refused origin, expired and revoked
sessions, the rows a policy-limited user sees, and the frame-ancestors header.
"""

from __future__ import annotations

import html
import json
import sqlite3
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

ROWS = [{"region": "US" if i % 3 else "EU", "amount": i} for i in range(1, 121)]  # 80 US rows
US_AMOUNTS = sorted(r["amount"] for r in ROWS if r["region"] == "US")

PARENT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Parent</title></head><body>
<iframe id="embed" title="Embedded data" src="{src}" width="1000" height="800"></iframe>
<script>
window.messages = [];
window.addEventListener("message", function (event) {{
  if (event.source === document.getElementById("embed").contentWindow) window.messages.push(event.data);
}});
window.sendInit = function (token, target) {{
  document.getElementById("embed").contentWindow.postMessage({{type: "init", sessionToken: token, config: {{}}}}, target);
}};
</script></body></html>"""


class ParentPage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's name)
        src = parse_qs(urlsplit(self.path).query).get("src", [""])[0]
        body = PARENT.format(src=html.escape(src)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def parent_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ParentPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def parents():
    """Two parent origins on two more loopback ports."""
    with parent_server() as first, parent_server() as second:
        yield first, second


@pytest.fixture(scope="module")
def admin(web):
    _, secret = web.srv.new_admin_key()
    with web.api(secret) as client:
        yield client


@pytest.fixture(scope="module")
def world(web, admin):
    """An org-shared source and an external user whose policy shows only region US."""
    source = admin.post("/sources", json={"name": "sales", "rows": ROWS}).json()["id"]
    assert admin.post(f"/sources/{source}/org-share", json={"permission": "view"}).status_code in (200, 201)
    admin.post("/sources", json={"name": "private", "rows": [{"secret": 1}]})  # not shared: never listed
    user = admin.put("/users/external/embed-ext-1", json={"email": "embed1@example.com"}).json()
    policy = admin.post(
        "/access/policies",
        json={"name": "embed-us", "source_ids": [source], "row_filters": [{"column": "region", "values": ["US"]}]},
    ).json()["id"]
    assert admin.put(f"/access/users/{user['id']}/policies", json={"policy_ids": [policy]}).status_code == 200
    return {"source": source, "user": user["id"]}


def org_settings(admin, **changes) -> None:
    response = admin.patch("/org/settings", json=changes)
    assert response.status_code == 200, response.text


def new_session(admin, user_id: str, origin: str | None = None) -> dict:
    body = {"user_id": user_id, **({"origin": origin} if origin else {})}
    response = admin.post("/embed/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def open_parent(ui, parent: str, embed_url: str):
    ui.goto(f"{parent}/?src={quote(embed_url, safe='')}", label="parent")
    ui.page.wait_for_function("() => window.messages.some(m => m.type === 'ready')")
    return ui.page.frame_locator("#embed")


def init(ui, token: str, web, expect_type: str) -> list[dict]:
    ui.page.evaluate("([token, target]) => window.sendInit(token, target)", [token, web.url])
    ui.page.wait_for_function(f"() => window.messages.some(m => m.type === {json.dumps(expect_type)})")
    return ui.page.evaluate("() => window.messages")


def embed_url(web) -> str:
    return f"{web.url}/embed?org={web.org_id}"


def test_handshake_then_only_the_users_rows_paged_and_sorted(ui, web, admin, world, parents):
    parent = parents[0]
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[parent])
    token = new_session(admin, "embed-ext-1", origin=parent)["session_token"]
    frame = open_parent(ui, parent, embed_url(web))
    messages = init(ui, token, web, "authenticated")
    assert [m["type"] for m in messages] == ["ready", "authenticated"]
    assert token not in json.dumps(messages)  # never posted back
    # Only the source shared with the user; then only her rows.
    expect(frame.locator("#embed-source-list button")).to_have_text(["sales"])
    frame.get_by_role("button", name="sales").click()
    expect(frame.locator("#embed-page")).to_have_text("Page 1 of 2 (80 rows)")
    ui.snap("rows")
    regions = frame.locator("#embed-table tbody tr td:first-child")
    expect(regions).to_have_count(50)
    assert set(regions.all_inner_texts()) == {"US"}
    frame.get_by_role("button", name="amount").click()
    expect(frame.locator("th[aria-sort=ascending]")).to_have_text("amount")
    amounts = frame.locator("#embed-table tbody tr td:nth-child(2)")
    expect(amounts.first).to_have_text(str(US_AMOUNTS[0]))
    assert [int(a) for a in amounts.all_inner_texts()] == US_AMOUNTS[:50]
    frame.get_by_role("button", name="amount").click()
    expect(frame.locator("th[aria-sort=descending]")).to_have_text("amount")
    expect(amounts.first).to_have_text(str(US_AMOUNTS[-1]))
    frame.get_by_role("button", name="Next").click()
    expect(frame.locator("#embed-page")).to_have_text("Page 2 of 2 (80 rows)")
    assert [int(a) for a in amounts.all_inner_texts()] == sorted(US_AMOUNTS, reverse=True)[50:]
    assert token not in frame.locator("html").inner_html()


def test_the_sdks_bare_embed_url_works_from_a_listed_origin(ui, web, admin, world, parents):
    """The Querri SDK frames `{server}/embed` without ?org: the Referer's origin decides."""
    parent = parents[0]
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[parent])
    token = new_session(admin, "embed-ext-1", origin=parent)["session_token"]
    frame = open_parent(ui, parent, f"{web.url}/embed")
    init(ui, token, web, "authenticated")
    expect(frame.locator("#embed-source-list button")).to_have_text(["sales"])


def test_init_from_an_origin_the_session_is_not_bound_to_is_refused(ui, web, admin, world, parents):
    bound, other = parents
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[bound, other])
    token = new_session(admin, "embed-ext-1", origin=bound)["session_token"]
    ui.expect_status(401, 403)
    frame = open_parent(ui, other, embed_url(web))  # a listed origin may frame the page...
    messages = init(ui, token, web, "auth-required")  # ...but not use a session of another
    assert messages[-1] == {"type": "auth-required", "code": "origin_not_allowed"}
    expect(frame.locator("#embed-sources")).to_be_hidden()


def test_a_page_of_an_unlisted_origin_cannot_frame_it(ui, web, admin, world, parents):
    listed, unlisted = parents
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[listed])
    for url in (embed_url(web), f"{web.url}/embed"):  # named organization, or Referer's origin
        ui.goto(f"{unlisted}/?src={quote(url, safe='')}", label="unlisted-parent")
        ui.page.wait_for_timeout(1500)
        assert ui.page.evaluate("() => window.messages") == []  # the browser never ran the page
    ui.console_errors = [e for e in ui.console_errors if "frame-ancestors" not in e]


def test_revoked_and_expired_sessions(ui_factory, web, admin, world, parents):
    parent = parents[0]
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[parent])
    revoked = new_session(admin, "embed-ext-1", origin=parent)
    assert admin.delete(f"/embed/sessions/{revoked['session_token']}").status_code == 200
    ui = ui_factory("revoked")
    ui.expect_status(401)
    open_parent(ui, parent, embed_url(web))
    assert init(ui, revoked["session_token"], web, "auth-required")[-1]["code"] == "embed_session_revoked"

    expired = new_session(admin, "embed-ext-1", origin=parent)
    with sqlite3.connect(web.srv.home / "tidegate.db") as db:
        db.execute(
            "UPDATE embed_sessions SET expires_at = '2000-01-01 00:00:00.000000' WHERE token_prefix = ?",
            (expired["session_token"][:16],),
        )
    ui = ui_factory("expired")
    ui.expect_status(401)
    open_parent(ui, parent, embed_url(web))
    messages = init(ui, expired["session_token"], web, "session-expired")
    assert messages[-1] == {"type": "session-expired", "code": "embed_session_expired"}


def test_a_session_that_expires_while_shown_tells_the_parent(ui, web, admin, world, parents):
    parent = parents[0]
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[parent])
    created = new_session(admin, "embed-ext-1", origin=parent)
    ui.expect_status(401)
    frame = open_parent(ui, parent, embed_url(web))
    init(ui, created["session_token"], web, "authenticated")
    assert admin.delete(f"/embed/sessions/{created['session_token']}").status_code == 200
    frame.get_by_role("button", name="sales").click()
    ui.page.wait_for_function("() => window.messages.some(m => m.type === 'auth-required')")
    expect(frame.locator("#embed-rows")).to_be_hidden()


def test_frame_ancestors_follow_the_organizations_origins(web, admin):
    def ancestors(org: str | None, referer: str | None = None) -> str:
        params = {"org": org} if org is not None else None
        headers = {"Referer": referer} if referer else None
        response = httpx.get(f"{web.url}/embed", params=params, headers=headers)
        assert response.status_code == 200
        assert "X-Frame-Options" not in response.headers and response.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        return response.headers["Content-Security-Policy"].split("frame-ancestors ")[1]

    origins = ["https://a.example.com", "https://b.example.com:8443"]
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=origins)
    assert ancestors(web.org_id) == " ".join(origins)
    for unknown in (None, "", "org_nope", "org_<script>", "x" * 150):
        assert ancestors(unknown) == "'none'"
    # No ?org (the SDK's token modes): the framing page's origin, from Referer, if listed.
    assert ancestors(None, "https://b.example.com:8443/app/page?x=1") == "https://b.example.com:8443"
    assert ancestors(None, "https://B.example.com:8443/") == "https://b.example.com:8443"
    for referer in ("https://c.example.com/", "https://b.example.com/", "not a url", "javascript:alert(1)"):
        assert ancestors(None, referer) == "'none'"
    assert ancestors("org_nope", "https://a.example.com/") == "'none'"  # a named org decides alone
    org_settings(admin, embeds_enabled=False)
    assert ancestors(web.org_id) == "'none'"
    assert ancestors(None, "https://a.example.com/") == "'none'"
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[])
    assert ancestors(web.org_id) == "'none'"
    page = httpx.get(f"{web.url}/embed", params={"org": "org_<script>"}).text
    assert "<script>" not in page.replace('<script src="/static/embed.js', "")


def test_the_parent_origin_header_cannot_launder_a_foreign_origin(web, admin, world, parents):
    """X-Embed-Origin counts only on a request without an Origin or from tidegate's own."""
    bound, other = parents
    org_settings(admin, embeds_enabled=True, embed_allowed_origins=[bound, other])
    token = new_session(admin, "embed-ext-1", origin=bound)["session_token"]
    own = web.url

    def status(**headers: str) -> tuple[int, str | None]:
        response = httpx.get(f"{web.url}/api/v1/sources", headers={"X-Embed-Session": token, **headers})
        return response.status_code, response.json().get("error", {}).get("code")

    assert status(**{"X-Embed-Origin": bound})[0] == 200
    assert status(Origin=own, **{"X-Embed-Origin": bound})[0] == 200
    refused = (403, "origin_not_allowed")
    assert status(**{"X-Embed-Origin": other}) == refused
    assert status(Origin=own, **{"X-Embed-Origin": other}) == refused
    # A page of another origin: the browser sends its Origin, which wins over any claim.
    assert status(Origin=other, **{"X-Embed-Origin": bound}) == refused
    assert status(Origin="https://evil.example.com", **{"X-Embed-Origin": bound}) == refused
    assert status(Origin="null", **{"X-Embed-Origin": bound}) == refused
    # The organization the page names must be the session's.
    assert status(**{"X-Embed-Origin": bound, "X-Tenant-ID": "org_other"}) == (401, "invalid_embed_session")
