"""Browser tests for the web UI: the real `tidegate serve` as a subprocess, driven by
Debian's Chromium (/usr/bin/chromium) through Playwright. Playwright never downloads a
browser here (no `playwright install`).

Every test gets a fresh browser context and a `UI` helper that screenshots each page it
visits into test-artifacts/screenshots/, checks that every form control on it has a
label, and at the end fails the test if the browser console logged an error (other than
the HTTP status of a page the test deliberately loaded with a 4xx).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from server import Server, base_env, run_cli

CHROMIUM = os.environ.get("TIDEGATE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Every page a test visits, as a full-page PNG to look at: on request only
# (TIDEGATE_TEST_SCREENSHOTS=1), since taking them doubles the browser tests' time.
SCREENSHOTS_WANTED = os.environ.get("TIDEGATE_TEST_SCREENSHOTS") == "1"
ADMIN_EMAIL = "admin@acme.test"
ADMIN_PASSWORD = "admin-" + secrets.token_urlsafe(12)
STATUS_LOG = re.compile(r"status of (\d{3})")

# Finds form controls without an accessible name: no <label for>, no wrapping <label>,
# no aria-label / aria-labelledby. Hidden inputs and buttons with text are fine.
UNLABELLED_JS = """() => Array.from(document.querySelectorAll('input, select, textarea, button')).filter(el => {
  if (el.type === 'hidden') return false;
  if (el.tagName === 'BUTTON') return !(el.textContent.trim() || el.getAttribute('aria-label'));
  if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return false;
  if (el.closest('label')) return false;
  return !(el.id && document.querySelector('label[for="' + el.id + '"]'));
}).map(el => el.outerHTML.slice(0, 120))"""


@dataclass
class WebServer:
    srv: Server
    admin_email: str
    admin_password: str

    @property
    def url(self) -> str:
        return self.srv.url

    @property
    def org_id(self) -> str:
        return self.srv.org_id

    def add_user(self, email: str, role: str = "member", password: str | None = None, org: str | None = None) -> dict:
        args = ["users", "create", "--json", "--org", org or self.srv.org_id, "--email", email, "--role", role]
        if password:
            args += ["--password", password]
        return json.loads(self.srv.cli(*args).stdout)

    def api(self, key: str | None = None) -> httpx.Client:
        """An /api/v1 client with `key` (default: the admin's Full Access key from init)."""
        return self.srv.client(key)


def _need_chromium():
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install -y chromium); the browser tests are SKIPPED"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} -- but CI=true requires them", pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module, not per session: while it is open, Playwright's sync API
    keeps an event loop running in this thread, and the files a worker runs next (slowest
    first, so often not browser tests) call asyncio.run()."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def web_server(base: Path, *, database_url: str | None = None, org_name: str = "Acme"):
    """`tidegate init` (org with admin admin@acme.test) and `tidegate serve` on a free port."""
    home = base / "home"
    home.mkdir()
    env = base_env(home, database_url=database_url)
    info = json.loads(
        run_cli(
            env,
            "init",
            "--json",
            "--org-name",
            org_name,
            "--admin-email",
            ADMIN_EMAIL,
            "--admin-password",
            ADMIN_PASSWORD,
        ).stdout
    )
    srv = Server(
        home=home,
        env=env,
        org_id=info["org_id"],
        admin_user_id=info["admin_user_id"],
        admin_email=info["admin_email"],
        admin_key=info["key"],
        admin_key_id=info["key_id"],
    )
    srv.start()
    try:
        yield WebServer(srv, ADMIN_EMAIL, ADMIN_PASSWORD)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> WebServer:
    """One server per test module, on SQLite (test_postgres.py overrides it)."""
    with web_server(tmp_path_factory.mktemp("web")) as server:
        yield server


class UI:
    def __init__(self, browser, web: WebServer, name: str):
        self.web = web
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.context = browser.new_context(base_url=web.url, viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.expected_statuses: set[int] = set()
        self.shots = 0
        for old in SCREENSHOTS.glob(f"{self.name}-[0-9][0-9]-*.png"):  # from an earlier run
            old.unlink()
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))

    # -- navigation ----------------------------------------------------------------------

    def goto(self, path: str, status: int = 200, label: str | None = None):
        if status >= 400:
            self.expected_statuses.add(status)
        response = self.page.goto(path)
        assert response is not None and response.status == status, (path, response and response.status)
        self.snap(label or path)
        return response

    def snap(self, label: str) -> None:
        """Screenshot the current page and check that all its controls are labelled."""
        self.page.wait_for_load_state("load")
        self.shots += 1
        if SCREENSHOTS_WANTED:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:60] or "page"
            self.page.screenshot(path=str(SCREENSHOTS / f"{self.name}-{self.shots:02d}-{slug}.png"), full_page=True)
        unlabelled = self.page.evaluate(UNLABELLED_JS)
        assert not unlabelled, f"controls without a label on {self.page.url}: {unlabelled}"

    def expect_status(self, *statuses: int) -> None:
        self.expected_statuses.update(statuses)

    # -- common flows --------------------------------------------------------------------

    def sign_in(self, email: str, password: str, *, organization: str | None = None, expect_home: bool = True):
        self.goto("/login", label="sign-in")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        with self.page.expect_navigation():
            self.page.get_by_role("button", name="Sign in").click()
        if organization is not None:
            self.snap("choose-organization")
            self.page.get_by_label(organization, exact=True).check()
            with self.page.expect_navigation():
                self.page.get_by_role("button", name="Continue").click()
        if expect_home:
            assert self.page.url.endswith("/settings/api-keys"), self.page.url
            self.snap("signed-in")

    def csrf(self) -> str:
        return self.page.locator("input[name=csrf_token]").first.input_value()

    def key_row(self, prefix: str):
        return self.page.locator("tr[data-key-id]", has=self.page.locator("code", has_text=prefix))

    def key_action(self, prefix: str, name: str):
        """A key row's action link (Activity, Rotate, Revoke), its "…" menu opened first."""
        row = self.key_row(prefix)
        menu = row.locator("details.row-menu")
        if menu.count() and menu.get_attribute("open") is None:
            menu.locator("summary").click()
        return row.get_by_role("link", name=name)

    def check_console(self) -> None:
        unexpected = []
        for text in self.console_errors:
            match = STATUS_LOG.search(text)
            if text.startswith("Failed to load resource") and match and int(match.group(1)) in self.expected_statuses:
                continue
            unexpected.append(text)
        assert not unexpected, f"browser console errors: {unexpected}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui_factory(browser, web, request):
    """Make UIs (browser contexts); each is checked for console errors and closed at the end."""
    made: list[UI] = []

    def make(suffix: str = "") -> UI:
        module = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
        ui = UI(browser, web, f"{module}-{request.node.name}" + (f"-{suffix}" if suffix else ""))
        made.append(ui)
        return ui

    yield make
    try:
        for ui in made:
            ui.check_console()
    finally:
        for ui in made:
            ui.close()


@pytest.fixture
def ui(ui_factory) -> UI:
    return ui_factory()
