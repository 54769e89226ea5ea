"""`tidegate keys scan`: keys found in files by format and checksum (no database), shown by
prefix only, a non-zero exit when found, and `--report` to a leaks endpoint (loopback)."""

from __future__ import annotations

import json
import threading

import httpx
import uvicorn
from typer.testing import CliRunner

from tidegate.api.app import create_app
from tidegate.cli.main import app
from tidegate.credentials.keyformat import generate_key


def scan(*args: str):
    return CliRunner().invoke(app, ["keys", "scan", *args])


def look_alike(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def test_a_real_key_is_found_by_its_checksum_and_shown_by_prefix_only(tmp_path):
    key, fake = generate_key(), look_alike(generate_key())
    (tmp_path / "settings.py").write_text(f'DEBUG = True\nAPI_KEY = "{key}"\nOTHER = "{fake}"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text(f"pasted:{key}.\n")
    (tmp_path / "sub" / "clean.txt").write_text("qk_short and qk_" + "a" * 60 + "\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "objects").write_text(key)  # skipped

    result = scan(str(tmp_path))

    assert result.exit_code == 1
    assert key not in result.output and fake[:12] not in result.output
    lines = sorted(result.output.strip().splitlines())
    assert lines == [
        f"{tmp_path / 'settings.py'}:2: {key[:12]}... (tidegate API key)",
        f"{tmp_path / 'sub' / 'notes.md'}:1: {key[:12]}... (tidegate API key)",
    ]


def test_no_key_exits_0_and_json_lists_prefixes(tmp_path):
    (tmp_path / "a.txt").write_text(look_alike(generate_key()))
    result = scan(str(tmp_path), "--json")
    assert result.exit_code == 0 and json.loads(result.output) == {"found": [], "reported": None}
    key = generate_key()
    (tmp_path / "b.env").write_text(f"KEY={key}\n")
    found = scan(str(tmp_path / "b.env"), "--json")
    assert found.exit_code == 1
    assert json.loads(found.output)["found"] == [{"file": str(tmp_path / "b.env"), "line": 1, "key_prefix": key[:12]}]


def test_an_unreadable_path_exits_2(tmp_path):
    assert scan(str(tmp_path / "missing.txt")).exit_code == 2


def test_report_posts_the_keys_to_a_leaks_endpoint_which_revokes_them(tmp_path, org, loopback_settings):
    """--report against a real server on loopback: the key found is revoked."""
    key = org.key_for(org.admin_id, ["data:read"])
    (tmp_path / "leaky.py").write_text(f"TOKEN = '{key}'\n")
    config = uvicorn.Config(create_app(loopback_settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        result = scan(str(tmp_path), "--report", f"http://127.0.0.1:{port}/api/v1/keys/leaks", "--json")
        assert result.exit_code == 1
        assert json.loads(result.output)["reported"] == 1
        answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/sources", headers=org.headers(key))
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "api_key_revoked"
    finally:
        server.should_exit = True
        thread.join(10)


def test_report_refuses_plain_http_beyond_loopback(tmp_path):
    """The report carries whole keys: never in clear text over a network (nothing is sent)."""
    key = generate_key()
    (tmp_path / "settings.py").write_text(f'TOKEN = "{key}"\n')
    result = scan(str(tmp_path), "--report", "http://10.0.0.1/api/v1/keys/leaks", "--json")
    assert result.exit_code == 1 and "needs an https:// URL" in result.output  # (found, not reported)
    assert key not in result.output
