"""The verifiable audit log over the API, the CLI and the web page: GET /audit/export
(streamed NDJSON), GET /audit/public-key, `tidegate audit verify` (database and offline
export), the retention setting, and the Audit log page's "verified up to"."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from tidegate.audit.chainer import chain_round
from tidegate.audit.models import AuditEvent
from tidegate.cli.main import app as cli
from tidegate.config import get_settings
from tidegate.db.base import utcnow
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.web.sessions import SESSION_COOKIE, start_session

API = "/api/v1"


def signer_of(client):
    return client.app.state.audit_signer


def chain_and_sign(client, settings) -> None:
    client.app.state.journal.flush()
    chain_round(settings.database_url, signer_of(client), force_sign=True)


def export(client, org, **params) -> bytes:
    r = client.get(f"{API}/audit/export", params=params, headers=org.headers())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return r.content


def public_key(client, org) -> str:
    r = client.get(f"{API}/audit/public-key", headers=org.headers())
    assert r.status_code == 200, r.text
    return r.json()["public_key"]


def run_cli(*args: str, env: dict[str, str] | None = None):
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("TIDEGATE_")}
    os.environ.update(env or {})
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()
        for name in env or {}:
            os.environ.pop(name, None)
        os.environ.update(saved)


def verify_file(path: Path, key: str):
    return run_cli("audit", "verify", "--file", str(path), "--public-key", key)


def lines_of(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines()]


def test_export_streams_events_checkpoints_and_a_seal(client, org, settings):
    for _ in range(3):
        client.get(f"{API}/keys", headers=org.headers())
    chain_and_sign(client, settings)
    lines = lines_of(export(client, org))
    assert lines[0]["type"] == "header" and lines[0]["org_id"] == org.id
    assert lines[-1]["type"] == "seal" and lines[-1]["org_id"] == org.id
    events = [line for line in lines if line["type"] == "event"]
    assert [e["chain_seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["action"] == "api.request" for e in events) >= 3
    assert any(line["type"] == "checkpoint" for line in lines)
    assert lines[-1]["events"] == len(events) and lines[-1]["last_hash"] == events[-1]["hash"]
    assert all(e["org_id"] == org.id for e in events)


def test_export_verifies_offline_and_a_tampered_line_fails(client, org, settings, tmp_path):
    client.get(f"{API}/keys", headers=org.headers())
    chain_and_sign(client, settings)
    key = public_key(client, org)
    body = export(client, org)
    good = tmp_path / "export.ndjson"
    good.write_bytes(body)
    result = verify_file(good, key)
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "verified up to" in result.output

    lines = body.splitlines()
    target = next(i for i, line in enumerate(lines) if json.loads(line).get("chain_seq") == 2 and b'"event"' in line)
    edited = json.loads(lines[target])
    edited["actor_id"] = "someone-else"
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(b"\n".join([*lines[:target], json.dumps(edited).encode(), *lines[target + 1 :]]) + b"\n")
    result = verify_file(tampered, key)
    assert result.exit_code == 1
    assert "altered" in result.output and edited["id"] in result.output and "position 2" in result.output

    dropped = tmp_path / "dropped.ndjson"
    dropped.write_bytes(b"\n".join([*lines[:target], *lines[target + 1 :]]) + b"\n")
    result = verify_file(dropped, key)
    assert result.exit_code == 1 and "missing" in result.output

    unsealed = tmp_path / "unsealed.ndjson"
    unsealed.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    result = verify_file(unsealed, key)
    assert result.exit_code == 1 and "unsealed" in result.output

    cut_tail = tmp_path / "cut.ndjson"  # the last event removed, the seal kept
    last_event = max(i for i, line in enumerate(lines) if b'"type":"event"' in line)
    cut_tail.write_bytes(b"\n".join([*lines[:last_event], lines[-1]]) + b"\n")
    result = verify_file(cut_tail, key)
    assert result.exit_code == 1 and "missing" in result.output

    checkpoint_at = next(i for i, line in enumerate(lines) if b'"type":"checkpoint"' in line)
    forged_checkpoint = json.loads(lines[checkpoint_at])
    forged_checkpoint["signed_at"] = "2001-01-01T00:00:00.000000Z"
    refiled = tmp_path / "checkpoint.ndjson"
    refiled.write_bytes(
        b"\n".join([*lines[:checkpoint_at], json.dumps(forged_checkpoint).encode(), *lines[checkpoint_at + 1 :]])
        + b"\n"
    )
    result = verify_file(refiled, key)
    assert result.exit_code == 1 and "forged_checkpoint" in result.output

    garbled = tmp_path / "garbled.ndjson"
    garbled.write_bytes(b"\n".join([*lines[:2], b"{not json", *lines[2:]]) + b"\n")
    result = verify_file(garbled, key)
    assert result.exit_code == 1 and "line 3" in result.output

    for field, value in (("chain_seq", "x"), ("details", float("nan")), ("chain_seq", None)):
        odd = json.loads(lines[checkpoint_at if field == "chain_seq" and value == "x" else target])
        odd[field] = value
        weird = tmp_path / "weird.ndjson"
        position = checkpoint_at if field == "chain_seq" and value == "x" else target
        weird.write_bytes(b"\n".join([*lines[:position], json.dumps(odd).encode(), *lines[position + 1 :]]) + b"\n")
        result = verify_file(weird, key)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (field, result.output)
        assert "FAILED" in result.output, (field, result.output)

    forged_seal = json.loads(lines[-1])
    forged_seal["events"] += 1
    resealed = tmp_path / "resealed.ndjson"
    resealed.write_bytes(b"\n".join([*lines[:-1], json.dumps(forged_seal).encode()]) + b"\n")
    result = verify_file(resealed, key)
    assert result.exit_code == 1 and "forged_seal" in result.output


def test_export_fails_with_another_key(client, org, settings, tmp_path):
    from tidegate.audit.signing import encode_public, load_signer

    chain_and_sign(client, settings)
    path = tmp_path / "export.ndjson"
    path.write_bytes(export(client, org))
    (tmp_path / "other").mkdir()
    result = verify_file(path, encode_public(load_signer(tmp_path / "other").public))
    assert result.exit_code == 1 and "forged_seal" in result.output
    result = verify_file(path, "not-a-key")
    assert result.exit_code == 2 and "public key" in result.output


def test_date_range_export_starts_mid_chain_and_verifies(client, org, settings, tmp_path):
    chain_and_sign(client, settings)
    with session_scope(settings.database_url) as session:  # the earliest events: a week ago
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.org_id == org.id, AuditEvent.chain_seq <= 2)
            .values(timestamp=utcnow() - timedelta(days=7))
        )
    # (moving timestamps breaks those two events' hashes: the range below leaves them out)
    client.get(f"{API}/keys", headers=org.headers())
    chain_and_sign(client, settings)
    since = (utcnow() - timedelta(days=1)).isoformat()
    lines = lines_of(export(client, org, start_date=since))
    events = [line for line in lines if line["type"] == "event"]
    assert events[0]["chain_seq"] == 3 and lines[-1]["first_seq"] == 3
    assert lines[-1]["first_prev_hash"] == events[0]["prev_hash"] != "0" * 64
    path = tmp_path / "range.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = verify_file(path, public_key(client, org))
    assert result.exit_code == 0, result.output
    # The first event's link is what the seal signs: changing it fails.
    events[0]["prev_hash"] = "1" * 64
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert verify_file(path, public_key(client, org)).exit_code == 1
    # An empty range is a sealed, empty export.
    empty = lines_of(export(client, org, start_date="2001-01-01", end_date="2001-01-02"))
    assert [line["type"] for line in empty] == ["header", "seal"] and empty[-1]["events"] == 0


def test_export_and_public_key_need_audit_read(client, org):
    member = org.add_user("reader@example.com")
    key = org.key_for(member, scopes=["data:read"])
    for path in ("/audit/export", "/audit/public-key"):
        r = client.get(f"{API}{path}", headers=org.headers(key))
        assert r.status_code == 403, (path, r.text)
        assert client.get(f"{API}{path}").status_code == 401


def test_export_rejects_bad_parameters(client, org):
    r = client.get(f"{API}/audit/export", params={"format": "csv"}, headers=org.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_format"
    r = client.get(f"{API}/audit/export", params={"start_date": "yesterday"}, headers=org.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_date"


def test_export_is_audited_and_org_isolated(client, make_org, settings):
    a, b = make_org(), make_org()
    chain_and_sign(client, settings)
    lines = lines_of(export(client, a))
    assert {line["org_id"] for line in lines if line["type"] == "event"} == {a.id}
    r = client.get(f"{API}/audit/events", params={"action": "audit.exported"}, headers=a.headers())
    assert r.json()["data"] and r.json()["data"][0]["details"]["format"] == "ndjson"
    assert not client.get(f"{API}/audit/events", params={"action": "audit.exported"}, headers=b.headers()).json()[
        "data"
    ]


def test_public_key_endpoint(client, org):
    from tidegate.audit.signing import key_id_of, parse_public

    body = client.get(f"{API}/audit/public-key", headers=org.headers()).json()
    key = parse_public(body["public_key"])
    assert body["algorithm"] == "Ed25519" and body["key_id"] == key_id_of(key) == signer_of(client).key_id
    assert key_id_of(parse_public(body["public_key_pem"])) == body["key_id"]
    assert "PRIVATE" not in json.dumps(body)


def test_signing_key_file_is_private(client, settings):
    path = settings.home / "audit-signing-key.pem"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600


def test_cli_verify_database(client, org, settings):
    client.get(f"{API}/keys", headers=org.headers())
    chain_and_sign(client, settings)
    env = {"TIDEGATE_HOME": str(settings.home), "TIDEGATE_DATABASE_URL": settings.database_url}
    result = run_cli("audit", "verify", "--org", org.id, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["ok"] is True
    with session_scope(settings.database_url) as session:
        target = session.query(AuditEvent).filter_by(org_id=org.id, chain_seq=2).one()
        target.status = 200 if target.status != 200 else 201
    result = run_cli("audit", "verify", "--org", org.id, env=env)
    assert result.exit_code == 1
    assert "altered" in result.output and target.id in result.output


def test_retention_setting(client, org):
    r = client.get(f"{API}/org/settings", headers=org.headers())
    assert r.json()["audit_retention_days"] == 365
    for bad in (0, 2191, -5, "30", True):
        r = client.patch(f"{API}/org/settings", json={"audit_retention_days": bad}, headers=org.headers())
        assert r.status_code == 400, (bad, r.text)
    assert client.get(f"{API}/org/settings", headers=org.headers()).json()["audit_retention_days"] == 365
    r = client.patch(f"{API}/org/settings", json={"audit_retention_days": 2190}, headers=org.headers())
    assert r.status_code == 200 and r.json()["audit_retention_days"] == 2190
    changed = client.get(
        f"{API}/audit/events", params={"action": "org.settings_updated"}, headers=org.headers()
    ).json()["data"]
    assert changed[0]["details"]["audit_retention_days"] == {"old": 365, "new": 2190}


def test_audit_page_shows_verified_up_to(client, org, settings):
    with session_scope(settings.database_url) as session:
        user = orgs.get_user(session, org.id, org.admin_id)
        client.cookies.set(SESSION_COOKIE, start_session(session, settings.session_key, user, ip=None, user_agent=None))
    chain_and_sign(client, settings)
    page = client.get("/audit")
    assert page.status_code == 200
    assert "Hash chain verified up to 20" in page.text
    with session_scope(settings.database_url) as session:
        session.execute(
            update(AuditEvent).where(AuditEvent.org_id == org.id, AuditEvent.chain_seq == 1).values(action="x")
        )
    client.app.state.audit_verified.clear()  # a fresh process verifies the whole chain again
    page = client.get("/audit")
    assert "Chain check failed" in page.text and "position 1" in page.text


@pytest.mark.parametrize("value", ["not base64!", "AAAA"])
def test_bad_signing_key_setting_stops_start(value):
    from tidegate.config import load_settings

    with pytest.raises(SystemExit, match="TIDEGATE_AUDIT_SIGNING_KEY"):
        load_settings({"TIDEGATE_HOME": "/tmp/tidegate-chain-test-home", "TIDEGATE_AUDIT_SIGNING_KEY": value})


def test_an_independent_implementation_of_the_readme_verifies_an_export(client, org, settings):
    """What README "A log you can verify" specifies is enough: hashes, links, checkpoint
    signatures and the seal checked here with hashlib, json and cryptography only."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    fields = (
        "v org_id chain_seq prev_hash chained_at id timestamp actor_type actor_id action target_type target_id "
        "key_id method path status ip_address user_agent request_id details"
    ).split()

    def canonical(value: dict) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    client.get(f"{API}/keys", headers=org.headers())
    chain_and_sign(client, settings)
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key(client, org)))
    lines = lines_of(export(client, org))
    events = [line for line in lines if line["type"] == "event"]
    checkpoints = [line for line in lines if line["type"] == "checkpoint"]
    seal = lines[-1]
    previous = "0" * 64
    for event in events:
        assert event["prev_hash"] == previous
        assert hashlib.sha256(canonical({name: event[name] for name in fields})).hexdigest() == event["hash"]
        previous = event["hash"]
    hashes = {event["chain_seq"]: event["hash"] for event in events}
    assert checkpoints
    for checkpoint in checkpoints:
        signed = {name: checkpoint[name] for name in ("org_id", "chain_seq", "head_hash", "signed_at", "kind")}
        key.verify(
            base64.b64decode(checkpoint["signature"]),
            canonical({"type": "tidegate.audit.checkpoint", "v": 1, **signed}),
        )
        assert hashes[checkpoint["chain_seq"]] == checkpoint["head_hash"]
    sealed = ("org_id start_date end_date exported_at first_seq first_prev_hash last_seq last_hash events").split()
    key.verify(
        base64.b64decode(seal["signature"]),
        canonical({"type": "tidegate.audit.export-seal", "v": 1, **{name: seal[name] for name in sealed}}),
    )
    assert (seal["first_seq"], seal["last_seq"], seal["last_hash"]) == (1, events[-1]["chain_seq"], previous)
