"""The `tidegate` operator CLI, in a temporary TIDEGATE_HOME.

`init` and everything that needs a running server go through the real console script in a
subprocess; the rest uses typer's CliRunner in-process (same app, same code paths, ten
times faster), with the settings cache cleared around every invocation.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import traceback
from dataclasses import dataclass

import pytest
from server import base_env, init_home, run_cli
from typer.testing import CliRunner

from tidegate.cli.main import app
from tidegate.config import get_settings
from tidegate.data import egress

DATA_ACCESS = ["admin:files:read", "admin:sources:read", "data:read"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def error(self) -> dict:
        """The `{"error": {...}}` body a failing --json command prints on stderr."""
        return json.loads(self.stderr)["error"]


@pytest.fixture
def tg(tmp_path, monkeypatch):
    """Run `tidegate ...` in-process against a fresh TIDEGATE_HOME (tmp_path/home)."""
    for name in list(os.environ):
        if name.startswith("TIDEGATE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("TIDEGATE_HOME", str(home))
    runner = CliRunner()

    def run(*args: str, ok: bool | None = True) -> Result:
        get_settings.cache_clear()
        try:
            result = runner.invoke(app, list(args))
        finally:
            get_settings.cache_clear()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            detail = "".join(traceback.format_exception(*result.exc_info))
            raise AssertionError(f"tidegate {' '.join(args)} crashed instead of failing cleanly:\n{detail}")
        out = Result(result.exit_code, result.stdout, result.stderr)
        if ok is True:
            assert out.code == 0, f"tidegate {' '.join(args)} exited {out.code}: {out.stdout}{out.stderr}"
        elif ok is False:
            assert out.code != 0, f"tidegate {' '.join(args)} should have failed: {out.stdout}"
        return out

    run.home = home
    yield run
    get_settings.cache_clear()


def init_org(tg, name: str = "Acme") -> dict:
    return tg("init", "--json", "--org-name", name, "--admin-email", f"admin@{name.lower()}.example").json


def org_count(tg) -> int:
    return len(tg("org", "list", "--json").json)


# -- init (the real console script) --------------------------------------------------------


def test_init_prints_org_admin_and_a_working_key_stored_only_hashed(tmp_path):
    home = tmp_path / "home"
    env = base_env(home)
    out = run_cli(env, "init", "--json", "--org-name", "Acme", "--admin-email", "Boss@Acme.example")
    info = json.loads(out.stdout)
    assert info["initialized"] is True
    assert info["org_id"].startswith("org_") and info["org_name"] == "Acme"
    assert info["admin_user_id"].startswith("user_") and info["admin_email"] == "boss@acme.example"
    assert info["key_id"].startswith("key_")
    assert info["key"].startswith("qk_") and len(info["key"]) == 41
    assert len(info["admin_password"]) >= 12  # generated, shown once

    orgs = json.loads(run_cli(env, "org", "list", "--json").stdout)
    assert orgs == [{"id": info["org_id"], "name": "Acme"}]
    listed = run_cli(env, "keys", "list", "--org", info["org_id"], "--json").stdout
    keys = json.loads(listed)
    assert [(k["id"], k["status"], k["key_prefix"]) for k in keys] == [(info["key_id"], "active", info["key"][:12])]
    assert keys[0]["created_by"] == info["admin_user_id"]
    assert info["key"] not in listed and "secret" not in listed

    # At rest the key is a keyed hash: the secret is nowhere in the database files.
    for db_file in home.glob("tidegate.db*"):
        assert info["key"].encode() not in db_file.read_bytes(), db_file.name


def test_init_human_output_shows_the_key_once(tmp_path):
    out = run_cli(base_env(tmp_path / "home"), "init", "--org-name", "Human")
    assert "qk_" in out.stdout and "Shown once" in out.stdout and "Human" in out.stdout
    assert "Traceback" not in out.stderr


def test_init_twice_with_the_same_name_fails_and_changes_nothing(tmp_path):
    env = base_env(tmp_path / "home")
    first = json.loads(run_cli(env, "init", "--json", "--org-name", "Acme").stdout)

    again = run_cli(env, "init", "--json", "--org-name", "acme", check=False)  # names are case-insensitive
    assert again.returncode != 0
    assert json.loads(again.stderr)["error"]["code"] == "organization_exists"
    assert "Traceback" not in again.stderr and "qk_" not in again.stdout

    orgs = json.loads(run_cli(env, "org", "list", "--json").stdout)
    assert orgs == [{"id": first["org_id"], "name": "Acme"}]
    keys = json.loads(run_cli(env, "keys", "list", "--org", "Acme", "--json").stdout)
    assert [k["id"] for k in keys] == [first["key_id"]]  # no half-created key either


def test_init_with_a_new_name_adds_an_org_and_if_needed_is_then_a_no_op(tg):
    acme = init_org(tg, "Acme")
    beta = init_org(tg, "Beta")
    assert beta["org_id"] != acme["org_id"] and beta["key"] != acme["key"]
    assert {o["name"] for o in tg("org", "list", "--json").json} == {"Acme", "Beta"}

    noop = tg("init", "--if-needed", "--json", "--org-name", "Gamma").json
    assert noop == {"initialized": False}
    assert org_count(tg) == 2
    assert "nothing to do" in tg("init", "--if-needed", "--org-name", "Gamma").stdout.lower()
    assert org_count(tg) == 2


def test_init_if_needed_initializes_an_empty_home(tg):
    info = tg("init", "--if-needed", "--json").json
    assert info["initialized"] is True and info["key"].startswith("qk_")
    assert org_count(tg) == 1


def test_secrets_file_is_private(tg):
    init_org(tg)
    secrets_file = tg.home / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tg.home.stat().st_mode) == 0o700
    stored = json.loads(secrets_file.read_text())
    assert len(stored["pepper"]) >= 64 and stored["pepper"] != stored["session_key"]


# -- users ---------------------------------------------------------------------------------


def test_users_create_set_role_deactivate(tg):
    acme = init_org(tg)
    made = tg("users", "create", "--org", "Acme", "--email", "Mia@Acme.example", "--json").json
    assert made["email"] == "mia@acme.example" and made["role"] == "member" and made["is_active"] is True
    assert made["org_id"] == acme["org_id"] and made["id"].startswith("user_")

    duplicate = tg("users", "create", "--org", "Acme", "--email", "mia@acme.example", "--json", ok=False)
    assert duplicate.error["code"] == "user_exists"

    promoted = tg(
        "users", "set-role", "--org", acme["org_id"], "--email", "mia@acme.example", "--role", "admin", "--json"
    ).json
    assert promoted["role"] == "admin" and promoted["id"] == made["id"]
    listed = {u["email"]: u for u in tg("users", "list", "--org", "Acme", "--json").json}
    assert listed["mia@acme.example"]["role"] == "admin"

    gone = tg("users", "deactivate", "--org", "Acme", "--email", "mia@acme.example", "--json").json
    assert gone["is_active"] is False
    assert "mia@acme.example" not in {u["email"] for u in tg("users", "list", "--org", "Acme", "--json").json}

    # The organization's last active admin can be neither demoted nor deactivated.
    last = tg("users", "deactivate", "--org", "Acme", "--email", "admin@acme.example", "--json", ok=False)
    assert last.error["code"] == "last_admin"
    demote = tg("users", "set-role", "--org", "Acme", "--email", "admin@acme.example", "--role", "member", ok=False)
    assert "last_admin" in demote.stderr and "only active admin" in demote.stderr


def test_bad_role_and_unknown_org_give_a_clear_message(tg):
    init_org(tg)
    bad_role = tg("users", "create", "--org", "Acme", "--email", "x@acme.example", "--role", "superuser", ok=False)
    assert "Unknown role 'superuser'" in bad_role.stderr and "admin, member" in bad_role.stderr
    assert "x@acme.example" not in {u["email"] for u in tg("users", "list", "--org", "Acme", "--json").json}

    set_bad = tg(
        "users", "set-role", "--org", "Acme", "--email", "admin@acme.example", "--role", "owner", "--json", ok=False
    )
    assert set_bad.error["code"] == "invalid_role"

    for args in (
        ["users", "create", "--email", "y@acme.example"],
        ["users", "list"],
        ["keys", "list"],
        ["keys", "create", "--user", "admin@acme.example", "--name", "k", "--preset", "data_access"],
        ["org", "settings"],
    ):
        missing = tg(*args, "--org", "Nope", ok=False)
        assert "No organization 'Nope'" in missing.stderr and "(organization_not_found)" in missing.stderr, args
        assert missing.code == 1

    unknown_user = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "ghost@acme.example",
        "--name",
        "k",
        "--preset",
        "data_access",
        "--json",
        ok=False,
    )
    assert unknown_user.error["code"] == "user_not_found"


# -- keys ----------------------------------------------------------------------------------


def test_keys_create_with_preset_or_scopes(tg):
    acme = init_org(tg)
    data = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "reader",
        "--preset",
        "data_access",
        "--json",
    ).json
    assert data["scopes"] == DATA_ACCESS and data["secret"].startswith("qk_")
    assert data["key_prefix"] == data["secret"][:12] and data["created_by"] == acme["admin_user_id"]

    explicit = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "auditor",
        "--scopes",
        "admin:audit:read, data:read",
        "--expires-in-days",
        "7",
        "--json",
    ).json
    assert explicit["scopes"] == ["admin:audit:read", "data:read"] and explicit["expires_at"]

    human = tg(
        "keys", "create", "--org", "Acme", "--user", "admin@acme.example", "--name", "h", "--preset", "data_access"
    )
    assert human.stdout.startswith("qk_") and "shown once" in human.stdout

    both = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "x",
        "--preset",
        "data_access",
        "--scopes",
        "data:read",
        "--json",
        ok=False,
    )
    assert both.error["code"] == "invalid_scopes"
    unknown = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "x",
        "--scopes",
        "data:read,root:everything",
        "--json",
        ok=False,
    )
    assert unknown.error["code"] == "invalid_scope" and "root:everything" in unknown.error["message"]
    bad_preset = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "x",
        "--preset",
        "god_mode",
        "--json",
        ok=False,
    )
    assert bad_preset.error["code"] == "invalid_preset"

    ids = {k["id"] for k in tg("keys", "list", "--org", "Acme", "--json").json}
    assert {data["id"], explicit["id"], acme["key_id"]} <= ids and len(ids) == 4


def test_member_cannot_create_a_key_with_an_admin_only_scope(tg):
    init_org(tg)
    tg("users", "create", "--org", "Acme", "--email", "mo@acme.example", "--role", "member")
    before = len(tg("keys", "list", "--org", "Acme", "--json").json)

    refused = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "mo@acme.example",
        "--name",
        "sneaky",
        "--scopes",
        "data:read,admin:users:read",
        "--json",
        ok=False,
    )
    assert refused.error["code"] == "insufficient_scope" and "admin:users:read" in refused.error["message"]
    wildcard = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "mo@acme.example",
        "--name",
        "star",
        "--scopes",
        "*",
        "--json",
        ok=False,
    )
    assert wildcard.error["code"] == "insufficient_scope"
    assert len(tg("keys", "list", "--org", "Acme", "--json").json) == before

    # Full Access for a member is the member's permissions, nothing admin-only.
    full = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "mo@acme.example",
        "--name",
        "mine",
        "--preset",
        "full_access",
        "--json",
    ).json
    assert "data:read" in full["scopes"] and "admin:keys:manage" in full["scopes"]
    assert not {"admin:users:read", "admin:audit:read", "admin:org:write"} & set(full["scopes"])

    tg("users", "deactivate", "--org", "Acme", "--email", "mo@acme.example")
    inactive = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "mo@acme.example",
        "--name",
        "late",
        "--preset",
        "data_access",
        "--json",
        ok=False,
    )
    assert inactive.error["code"] == "user_inactive"


def test_keys_list_and_revoke(tg):
    acme = init_org(tg)
    made = tg(
        "keys",
        "create",
        "--org",
        "Acme",
        "--user",
        "admin@acme.example",
        "--name",
        "temp",
        "--preset",
        "data_access",
        "--json",
    ).json
    statuses = {k["id"]: k["status"] for k in tg("keys", "list", "--org", "Acme", "--json").json}
    assert statuses == {acme["key_id"]: "active", made["id"]: "active"}

    revoked = tg("keys", "revoke", made["id"], "--org", "Acme", "--json").json
    assert revoked == {"id": made["id"], "status": "revoked"}
    statuses = {k["id"]: k["status"] for k in tg("keys", "list", "--org", "Acme", "--json").json}
    assert statuses == {acme["key_id"]: "active", made["id"]: "revoked"}
    assert tg("keys", "revoke", made["id"], "--org", "Acme", "--json").json["status"] == "revoked"  # idempotent

    human = tg("keys", "list", "--org", "Acme").stdout
    assert made["id"] in human and "revoked" in human and made["secret"] not in human
    missing = tg("keys", "revoke", "key_doesnotexist", "--org", "Acme", "--json", ok=False)
    assert missing.error["code"] == "api_key_not_found"

    # A key is only found in its own organization.
    init_org(tg, "Other")
    cross = tg("keys", "revoke", acme["key_id"], "--org", "Other", "--json", ok=False)
    assert cross.error["code"] == "api_key_not_found"
    assert {k["id"]: k["status"] for k in tg("keys", "list", "--org", "Acme", "--json").json}[
        acme["key_id"]
    ] == "active"


def test_keys_rotate_with_and_without_grace(tg):
    init_org(tg)
    made = tg(
        "keys", "create", "--org", "Acme", "--user", "admin@acme.example", "--name", "etl",
        "--scopes", "data:read", "--rate-limit-per-minute", "33", "--json",
    ).json  # fmt: skip
    rotated = tg("keys", "rotate", made["id"], "--org", "Acme", "--grace", "600", "--json").json
    assert rotated["rotated_from"] == made["id"] and rotated["secret"].startswith("qk_")
    assert rotated["secret"] != made["secret"] and rotated["key_prefix"] == rotated["secret"][:12]
    assert rotated["scopes"] == ["data:read"] and rotated["rate_limit_per_minute"] == 33
    assert rotated["created_by"] == made["created_by"]  # made as the key's creator, not the operator
    old = rotated["replaced_key"]
    assert old["status"] == "active" and old["rotated_to"] == rotated["id"] and old["expires_at"] is not None
    # The old key is being retired: rotating it again is refused; its replacement rotates, at once.
    again = tg("keys", "rotate", made["id"], "--org", "Acme", "--grace", "600", "--json", ok=False)
    assert again.error["code"] == "api_key_already_rotated" and rotated["key_prefix"] in again.error["message"]
    now = tg("keys", "rotate", rotated["id"], "--org", "Acme")
    assert "revoked now" in now.stdout and rotated["id"] in now.stdout
    statuses = {k["id"]: k["status"] for k in tg("keys", "list", "--org", "Acme", "--json").json}
    assert statuses[rotated["id"]] == "revoked" and statuses[made["id"]] == "active"
    assert (
        tg("keys", "rotate", rotated["id"], "--org", "Acme", "--json", ok=False).error["code"] == "api_key_not_active"
    )
    assert tg("keys", "rotate", made["id"], "--org", "Acme", "--grace", "604801", ok=False).code == 2
    listed = tg("keys", "list", "--org", "Acme", "--json").stdout
    assert rotated["secret"] not in listed and made["secret"] not in listed


# -- org settings, with a running server ------------------------------------------------------


@pytest.mark.slow
def test_switching_off_key_creation_blocks_new_keys_but_existing_keys_keep_working(tmp_path):
    srv = init_home(tmp_path)
    srv.start()
    try:
        existing = json.loads(
            srv.cli(
                "keys",
                "create",
                "--org",
                srv.org_id,
                "--user",
                srv.admin_email,
                "--name",
                "before",
                "--preset",
                "full_access",
                "--json",
            ).stdout
        )

        bad = srv.cli("org", "settings", "--org", srv.org_id, "--api-key-creation", "maybe", "--json", check=False)
        assert bad.returncode != 0 and json.loads(bad.stderr)["error"]["code"] == "invalid_value"

        off = json.loads(srv.cli("org", "settings", "--org", srv.org_id, "--api-key-creation", "off", "--json").stdout)
        assert off["api_key_creation_enabled"] is False
        shown = json.loads(srv.cli("org", "settings", "--org", srv.org_id, "--json").stdout)
        assert shown["api_key_creation_enabled"] is False

        refused = srv.cli(
            "keys",
            "create",
            "--org",
            srv.org_id,
            "--user",
            srv.admin_email,
            "--name",
            "after",
            "--preset",
            "data_access",
            "--json",
            check=False,
        )
        assert refused.returncode != 0 and "qk_" not in refused.stdout
        assert json.loads(refused.stderr)["error"]["code"] == "api_key_creation_disabled"
        human = srv.cli(
            "keys",
            "create",
            "--org",
            srv.org_id,
            "--user",
            srv.admin_email,
            "--name",
            "after",
            "--preset",
            "data_access",
            check=False,
        )
        assert human.returncode != 0 and "api_key_creation_disabled" in human.stderr

        # The running server sees the switch at once, and refuses over the API too...
        with srv.client() as http:
            api = http.post("/keys", json={"name": "api-after", "scopes": ["data:read"]})
            assert api.status_code == 403, api.text
            assert api.json()["error"]["code"] == "api_key_creation_disabled"
            assert http.get("/org/settings").json()["api_key_creation_enabled"] is False
        # ...while keys that already exist keep working.
        for key in (srv.admin_key, existing["secret"]):
            with srv.client(key) as http:
                resp = http.get("/keys")
                assert resp.status_code == 200, resp.text
        names = [k["name"] for k in json.loads(srv.cli("keys", "list", "--org", srv.org_id, "--json").stdout)]
        assert "after" not in names and "api-after" not in names

        srv.cli("org", "settings", "--org", srv.org_id, "--api-key-creation", "on")
        with srv.client() as http:
            assert http.post("/keys", json={"name": "back-on", "scopes": ["data:read"]}).status_code == 201
        events = srv.audit_events(action="org.settings_updated")
        assert len(events) == 2  # off, then on; the invalid value changed nothing
    finally:
        srv.stop()
    assert existing["secret"] not in srv.logs()


def test_cli_help_lists_the_command_groups(tg):
    out = tg("--help").stdout
    for word in ("init", "serve", "users", "keys", "org"):
        assert word in out


def test_a_database_that_is_down_is_a_clean_exit_75(tmp_path):
    env = base_env(tmp_path / "home", database_url="postgresql://nobody@127.0.0.1:9/nowhere")
    done = run_cli(env, "org", "list", "--json", check=False)
    assert done.returncode == 75, done.stderr
    assert '"database_unavailable"' in done.stderr and "Traceback" not in done.stderr


def test_audit_status_shows_the_backlog(tmp_path):
    from tidegate.audit.journal import Journal
    from tidegate.audit.record import event_row

    home = tmp_path / "home"
    journal = Journal(home / "audit", "postgresql://nobody@127.0.0.1:9/nowhere")
    for _ in range(3):
        journal.append(event_row(org_id="org_x", actor_type="api_key", actor_id="key_x", action="api.request"))
    journal.rotate()
    env = base_env(home)
    status = json.loads(run_cli(env, "audit", "status", "--json").stdout)
    assert status["pending_events"] == 3 and status["segments"] == 1 and status["set_aside_events"] == 0
    assert status["oldest_pending_age_seconds"] >= 0 and status["torn_records"] == 0
    assert "pending events     3" in run_cli(env, "audit", "status").stdout


def test_the_cli_does_not_load_the_web_framework():
    """The CLI prints the API's shapes (tidegate.wire) without importing the API: FastAPI and
    Starlette cost a third of its start-up."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tidegate.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette') "
            "or m.startswith('tidegate.api')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout.strip()
    assert loaded == "[]"


def test_org_settings_unused_key_days_and_keys_flagged_unused(tg):
    init_org(tg)
    assert tg("org", "settings", "--org", "Acme", "--json").json["unused_key_days"] == 90
    bad = tg("org", "settings", "--org", "Acme", "--unused-key-days", "0", "--json", ok=False)
    assert bad.code == 1 and "invalid_unused_key_days" in bad.stderr
    assert tg("org", "settings", "--org", "Acme", "--unused-key-days", "1", "--json").json["unused_key_days"] == 1
    made = tg(
        "keys", "create", "--org", "Acme", "--user", "admin@acme.example", "--name", "idle",
        "--scopes", "data:read", "--json",
    ).json  # fmt: skip
    assert made["unused"] is False  # a new key is not unused
    listed = {k["name"]: k for k in tg("keys", "list", "--org", "Acme", "--json").json}
    assert listed["idle"]["unused"] is False  # created less than a day ago


def test_keys_insights(tg):
    init_org(tg)
    made = tg(
        "keys", "create", "--org", "Acme", "--user", "admin@acme.example", "--name", "bi",
        "--scopes", "data:read,admin:users:read", "--json",
    ).json  # fmt: skip
    found = tg("keys", "insights", made["id"], "--org", "Acme", "--json").json
    assert found["key_id"] == made["id"] and found["requests_90d"] == 0
    assert {u["scope"] for u in found["scopes"]} == {"data:read", "admin:users:read"}
    assert found["suggestion"]["patch"] is None and "revoke" in found["suggestion"]["reason"]
    text = tg("keys", "insights", made["id"], "--org", "Acme").stdout
    assert "0 requests in 30 days" in text and "suggestion:" in text
    missing = tg("keys", "insights", "key_nope", "--org", "Acme", ok=False)
    assert missing.code == 1 and "api_key_not_found" in missing.stderr


def test_org_settings_audit_stream(tg, monkeypatch):
    init_org(tg)
    refused = tg(
        "org", "settings", "--org", "Acme", "--audit-stream-url", "http://127.0.0.1:9/siem", "--json", ok=False
    )
    assert refused.code == 1 and "webhook_url_not_allowed" in refused.stderr  # loopback not allowed by default
    assert tg("org", "settings", "--org", "Acme", "--audit-stream", "maybe", "--json", ok=False).code == 1
    monkeypatch.setenv("TIDEGATE_CONNECTOR_ALLOW", "127.0.0.1")
    try:
        made = tg(
            "org", "settings", "--org", "Acme", "--audit-stream-url", "http://127.0.0.1:9/siem",
            "--audit-stream", "on", "--json",
        ).json  # fmt: skip
    finally:
        egress.configure("")
    assert made["audit_stream_secret"].startswith("whsec_") and made["audit_stream_enabled"] is True
    shown = tg("org", "settings", "--org", "Acme", "--json")
    assert (
        made["audit_stream_secret"] not in shown.stdout and shown.json["audit_stream_url"] == "http://127.0.0.1:9/siem"
    )
    cleared = tg("org", "settings", "--org", "Acme", "--audit-stream-url", "", "--json").json
    assert (cleared["audit_stream_url"], cleared["audit_stream_enabled"]) == (None, False)
