"""The `tidegate` operator CLI: setup, serving, and console-style user and key admin.

It works on the database directly (it is the operator's tool, like a console), but every
change goes through the same services, rules and audit records as the API.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import typer
from sqlalchemy import select

from tidegate.config import get_settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import PRESETS, preset_scopes, requested_scopes
from tidegate.credentials import service as keys_service
from tidegate.credentials.hygiene import DEFAULT_UNUSED_KEY_DAYS
from tidegate.credentials.insights import key_insights
from tidegate.db.engine import migrate, session_scope
from tidegate.errors import InvalidRequest, ServiceUnavailable, TidegateError
from tidegate.notifications import audit_stream as audit_streams
from tidegate.orgs import service as orgs
from tidegate.orgs.models import Organization
from tidegate.outages import unavailable_error
from tidegate.wire.keys import KeyInsightsOut, KeyOut
from tidegate.wire.orgs import OrgSettingsOut
from tidegate.wire.users import UserOut

app = typer.Typer(help="tidegate: governed, auditable API keys for your organization's data.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users (operator console).", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys (operator console).", no_args_is_help=True)
org_app = typer.Typer(help="Organization admin controls.", no_args_is_help=True)
audit_app = typer.Typer(
    help="The audit log: its journal backlog, refused events, verification and retention.", no_args_is_help=True
)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(org_app, name="org")
app.add_typer(audit_app, name="audit")

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


def emit(as_json: bool, payload: dict | list, human: str) -> None:
    typer.echo(json.dumps(payload, indent=2) if as_json else human)


@contextmanager
def database(as_json: bool = False):
    """A migrated database transaction; service errors become a clean non-zero exit."""
    settings = get_settings()
    with refusals_reported(as_json):
        migrate(settings.database_url)
        with session_scope(settings.database_url) as session:
            yield settings, session


# Exit status when a dependency is down: sysexits' EX_TEMPFAIL, "try again later".
EXIT_UNAVAILABLE = 75


@contextmanager
def refusals_reported(as_json: bool):
    """Service refusals exit 1, a database or disk that is down exits 75, each with a clean
    message (a JSON envelope with --json) instead of a traceback."""
    try:
        yield
    except TidegateError as exc:
        _report(as_json, exc)
        raise typer.Exit(code=EXIT_UNAVAILABLE if isinstance(exc, ServiceUnavailable) else 1) from None
    except Exception as exc:
        down = unavailable_error(exc)
        if down is None:
            raise
        _report(as_json, down)
        raise typer.Exit(code=EXIT_UNAVAILABLE) from None


def _report(as_json: bool, exc: TidegateError) -> None:
    if as_json:
        typer.echo(json.dumps(exc.body()), err=True)
    else:
        typer.echo(f"error: {exc.message} ({exc.code})", err=True)


@app.command()
def init(
    org_name: str = typer.Option("Default", "--org-name", help="Name of the organization to create."),
    admin_email: str = typer.Option("admin@example.com", "--admin-email"),
    admin_password: str | None = typer.Option(None, "--admin-password", help="Generated and printed if omitted."),
    if_needed: bool = typer.Option(False, "--if-needed", help="Do nothing if any organization exists."),
    as_json: bool = JsonOpt,
):
    """Create an organization, its first admin, and one Full Access key (shown once)."""
    with database(as_json) as (settings, session):
        if if_needed and session.scalar(select(Organization.id).limit(1)):
            emit(as_json, {"initialized": False}, "Already initialized; nothing to do.")
            return
        generated = admin_password is None
        password = admin_password or secrets.token_urlsafe(15)
        created = orgs.create_organization(session, org_name, admin_email, password)
        admin = Principal.for_user(created.org.id, created.admin.id, created.admin.role)
        key = keys_service.create_key(
            session,
            admin,
            keys_service.KeyRequest(name="Initial admin key", scopes=preset_scopes("full_access", admin.role)),
            pepper=settings.pepper,
            via="cli",
        )
    payload = {
        "initialized": True,
        "org_id": created.org.id,
        "org_name": created.org.name,
        "admin_user_id": created.admin.id,
        "admin_email": created.admin.email,
        "key_id": key.key.id,
        "key": key.secret,
    }
    if generated:
        payload["admin_password"] = password
    emit(
        as_json,
        payload,
        "\n".join(
            [
                f"Organization  {created.org.name}  ({created.org.id})",
                f"Admin         {created.admin.email}  ({created.admin.id})",
                *([f"Password      {password}   (generated; shown once)"] if generated else []),
                f"API key       {key.secret}",
                "              Shown once: copy it now. It is stored only as a keyed hash.",
                "",
                f"Sign in at http://127.0.0.1:8000/ as {created.admin.email}"
                + (" with the password above." if generated else "."),
                "",
                "Try it:",
                f"  curl -H 'Authorization: Bearer {key.secret}' -H 'X-Tenant-ID: {created.org.id}' \\",
                "       http://127.0.0.1:8000/api/v1/keys",
            ]
        ),
    )


@app.command()
def migrate_db():
    """Bring the database schema up to date."""
    migrate(get_settings().database_url)
    typer.echo("Database is up to date.")


@app.command()
def gc(as_json: bool = JsonOpt):
    """Drop superseded source versions and delete data files nothing references."""
    from tidegate.data.maintenance import collect_now
    from tidegate.db.jobs import LockBusy

    settings = get_settings()
    migrate(settings.database_url)
    try:  # the configured store: disk or object store; never beside another node's round
        report = collect_now(settings.database_url, None, min_age_seconds=settings.data.gc_min_age_seconds)
    except LockBusy:
        raise SystemExit(
            "Another node has been collecting garbage for a minute and still is; try again later."
        ) from None
    emit(as_json, {"deleted_files": report.deleted_files}, f"Deleted {len(report.deleted_files)} unreferenced file(s).")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(1, "--workers", min=1, max=64),
    pg_port: int | None = typer.Option(
        None, "--pg-port", min=1, max=65535, help="Also serve the PostgreSQL wire protocol (default: TIDEGATE_PG_PORT)."
    ),
    pg_allow_plain_loopback: bool = typer.Option(
        False, "--pg-allow-plain-loopback", help="Accept PostgreSQL passwords without TLS from loopback clients."
    ),
):
    """Run the HTTP server (and the PostgreSQL endpoint, when a port is given)."""
    from tidegate.audit import shipper
    from tidegate.credentials.usage import record_key_use
    from tidegate.data import egress

    settings = get_settings()
    try:  # read here, so that a bad allowlist stops the start, not each worker in turn
        egress.parse_allowlist(settings.data.connector_allow)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    with refusals_reported(False):
        migrate(settings.database_url)
    if settings.metrics_token:  # /metrics is off otherwise: nothing to share between processes
        _metrics_in_files(settings.metrics_dir)
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "warning: without TIDEGATE_REDIS_URL, rate limits and sign-in throttling are counted per worker process.",
            err=True,
        )
    forwarded = ",".join(settings.trusted_proxies) or None
    # uvicorn, after a graceful shutdown, re-raises the SIGTERM/SIGINT it caught with the
    # handler it found installed. The default one would kill this process on the spot
    # (single worker) and skip stopping the shipper below; this one unwinds through it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)
    # Workers append audit events; one process beside them ships them (see audit.shipper).
    audit_shipper = shipper.ShipperProcess(
        settings.audit_dir,
        settings.database_url,
        after_insert=record_key_use,
        chain_key=(str(settings.home), settings.audit_signing_key),
    )
    audit_shipper.start()
    os.environ[shipper.ENV_FLAG] = "process"
    pg = _start_pg(settings, host, pg_port, pg_allow_plain_loopback)
    stopped_by = None
    try:
        _run_uvicorn(settings, host, port, workers, forwarded)
    except StoppedBySignal as stop:
        stopped_by = stop.signum
    finally:
        if pg is not None:
            pg.stop()
        audit_shipper.stop()
    if stopped_by is not None:
        # Now die by that signal, as uvicorn would have: what a service manager expects.
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.raise_signal(stopped_by)


def _metrics_in_files(directory) -> None:
    """Every process of this node (workers, the PostgreSQL endpoint) keeps its metrics in
    `directory`, emptied now: what an earlier run counted is not this run's."""
    import atexit
    import shutil

    from tidegate import metrics

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, directory, ignore_errors=True)  # memory, not disk: freed at exit
    os.environ[metrics.MULTIPROCESS_ENV] = str(directory)  # read by prometheus-client in each worker
    metrics.enable_multiprocess()  # this process (the single-worker server runs here)


def _start_pg(settings, host: str, port: int | None, allow_plain_loopback: bool):
    """The PostgreSQL endpoint's process, if a port is set (flag or TIDEGATE_PG_PORT)."""
    port = port or settings.pg.port
    if not port:
        return None
    from tidegate.pgwire import runner, tls

    cert, _ = runner.tls_files(settings)  # generated now (once), so its fingerprint can be shown
    typer.echo(f"PostgreSQL endpoint on {host}:{port}, TLS certificate {cert}", err=True)
    typer.echo(f"  SHA-256 fingerprint {tls.fingerprint(cert)}", err=True)
    plain = allow_plain_loopback or settings.pg.allow_plain_loopback
    if plain:
        typer.echo("  passwords without TLS are accepted from loopback clients", err=True)
    process = runner.PgProcess(host, port, plain)
    process.start()
    return process


class StoppedBySignal(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _exit_on_signal(signum, frame):
    raise StoppedBySignal(signum)


def _run_uvicorn(settings, host: str, port: int, workers: int, forwarded: str | None) -> None:
    import uvicorn

    limits = settings.limits  # read (and checked) with the settings, before any worker starts
    uvicorn.run(
        "tidegate.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Only believe X-Forwarded-For/-Proto from configured proxies (default: none, so a
        # client cannot claim another address to pass a key's IP allowlist).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=forwarded,
        server_header=False,
        # A worker that has not answered the supervisor's ping within this is killed and
        # replaced. uvicorn's 5 s is less than a worker's start-up (imports: 2.5 s of CPU) on
        # a busy machine, where every replacement was killed in turn: never serving again.
        timeout_worker_healthcheck=30,
        # Header, body and connection-count limits per worker (see tidegate.api.connections).
        http="tidegate.api.connections:GuardedHttpToolsProtocol",
        timeout_keep_alive=limits.keepalive_timeout_seconds,
        # uvicorn answers 503 once as many requests run as this; our protocol already refuses
        # connections past max_connections, so this bounds only the requests still running
        # for clients that went away.
        limit_concurrency=limits.max_connections + 1,
        h11_max_incomplete_event_size=limits.max_header_bytes,  # if the h11 protocol is chosen
        log_level=settings.log_level,
        # uvicorn's access log prints query strings; ours (tidegate.access) prints paths only.
        access_log=False,
        log_config=_log_config(settings.access_log),
    )


def _log_config(access: bool) -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    config["loggers"]["tidegate"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["tidegate.access"] = {
        "handlers": ["default"] if access else [],
        "level": "INFO" if access else "WARNING",
        "propagate": False,
    }
    return config


# -- users -------------------------------------------------------------------------------


def _user_payload(user) -> dict:
    """The API's user, and the organization (the CLI spans organizations)."""
    return {**UserOut.of(user).model_dump(), "org_id": user.org_id}


@users_app.command("create")
def users_create(
    org: str = typer.Option(..., "--org", help="Organization id or name."),
    email: str = typer.Option(..., "--email"),
    role: str = typer.Option("member", "--role", help="admin or member"),
    password: str | None = typer.Option(None, "--password"),
    as_json: bool = JsonOpt,
):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        user = orgs.create_user(session, None, organization.id, email=email, role=role, password=password)
        payload = _user_payload(user)
    emit(as_json, payload, f"Created {user.role} {user.email} ({user.id}).")


@users_app.command("set-role")
def users_set_role(
    org: str = typer.Option(..., "--org"),
    email: str = typer.Option(..., "--email"),
    role: str = typer.Option(..., "--role"),
    as_json: bool = JsonOpt,
):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        user = orgs.get_user_by_email(session, organization.id, email)
        orgs.update_user(session, None, user, role=role)
        payload = _user_payload(user)
    emit(as_json, payload, f"{user.email} is now {user.role}.")


@users_app.command("deactivate")
def users_deactivate(
    org: str = typer.Option(..., "--org"),
    email: str = typer.Option(..., "--email"),
    as_json: bool = JsonOpt,
):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        user = orgs.get_user_by_email(session, organization.id, email)
        orgs.deactivate_user(session, None, user)
        payload = _user_payload(user)
    emit(as_json, payload, f"Deactivated {user.email}; keys they created no longer work.")


@users_app.command("list")
def users_list(org: str = typer.Option(..., "--org"), as_json: bool = JsonOpt):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        users = orgs.list_users(session, organization.id, limit=10_000, after=None, external_id=None)
        payload = [_user_payload(u) for u in users]
    emit(as_json, payload, "\n".join(f"{u['id']}  {u['role']:6}  {u['email']}" for u in payload) or "No users.")


# -- keys --------------------------------------------------------------------------------


def _key_payload(key, unused_key_days: int = DEFAULT_UNUSED_KEY_DAYS) -> dict:
    """The API's key, and the organization (the CLI spans organizations)."""
    return {**KeyOut.of(key, unused_key_days).model_dump(), "org_id": key.org_id}


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., "--org"),
    user: str = typer.Option(..., "--user", help="Email of the user the key acts for."),
    name: str = typer.Option(..., "--name"),
    preset: str | None = typer.Option(None, "--preset", help=" or ".join(PRESETS)),
    scopes: str | None = typer.Option(None, "--scopes", help="Comma-separated scopes."),
    expires_in_days: int | None = typer.Option(None, "--expires-in-days"),
    rate_limit_per_minute: int | None = typer.Option(None, "--rate-limit-per-minute"),
    as_json: bool = JsonOpt,
):
    """Create a key on behalf of a user; refused wherever the API would refuse that user."""
    with database(as_json) as (settings, session):
        organization = orgs.find_org(session, org)
        owner = orgs.get_user_by_email(session, organization.id, user)
        if not owner.is_active:
            raise InvalidRequest("user_inactive", f"{owner.email} is deactivated.")
        principal = Principal.for_user(organization.id, owner.id, owner.role)
        scope_list = None if scopes is None else [s.strip() for s in scopes.split(",") if s.strip()]
        scope_list = requested_scopes(scope_list, preset, owner.role)
        created = keys_service.create_key(
            session,
            principal,
            keys_service.KeyRequest(
                name=name,
                scopes=scope_list,
                expires_in_days=expires_in_days,
                rate_limit_per_minute=rate_limit_per_minute,
            ),
            pepper=settings.pepper,
            via="cli",
        )
        payload = {**_key_payload(created.key), "secret": created.secret}
    emit(as_json, payload, f"{created.secret}\n(key {created.key.id}; shown once, copy it now)")


@keys_app.command("list")
def keys_list(org: str = typer.Option(..., "--org"), as_json: bool = JsonOpt):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        system = Principal.for_user(organization.id, "cli", "admin")
        keys = keys_service.list_keys(session, system, limit=100_000, after=None)
        payload = [_key_payload(k, organization.unused_key_days) for k in keys]
    emit(
        as_json,
        payload,
        "\n".join(f"{k['id']}  {k['key_prefix']}  {k['status']:8} {k['name']}" for k in payload) or "No keys.",
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str, org: str = typer.Option(..., "--org"), as_json: bool = JsonOpt):
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        system = Principal.for_user(organization.id, "cli", "admin")
        key = keys_service.get_key(session, system, key_id)
        keys_service.revoke_key(session, None, key, via="cli")
        payload = {"id": key.id, "status": "revoked"}
    emit(as_json, payload, f"Revoked {key.id}.")


@keys_app.command("insights")
def keys_insights(key_id: str, org: str = typer.Option(..., "--org"), as_json: bool = JsonOpt):
    """What a key did over 30 and 90 days (per scope, source and client IP) and the smallest
    scopes and source restriction covering it (as GET /keys/{id}/insights)."""
    with database(as_json) as (_, session):
        organization = orgs.find_org(session, org)
        key = keys_service.get_key(session, Principal.for_user(organization.id, "cli", "admin"), key_id)
        payload = KeyInsightsOut.of(key_insights(session, key)).model_dump()
    suggestion = payload["suggestion"]
    lines = [f"{key_id}: {payload['requests_30d']} requests in 30 days, {payload['requests_90d']} in 90"]
    lines += [f"  {u['scope']}: {u['requests_30d']} / {u['requests_90d']}" for u in payload["scopes"]]
    lines.append(f"suggestion: {suggestion['reason']}")
    if suggestion["patch"]:
        lines.append(f"  PATCH /keys/{key_id} {json.dumps(suggestion['patch'])}")
    emit(as_json, payload, "\n".join(lines))


SCAN_MAX_FILE_BYTES = 20 * 1024 * 1024
SCAN_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"})


def _scan_files(paths: list[Path]):
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SCAN_SKIP_DIRS)
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


@keys_app.command("scan")
def keys_scan(
    paths: list[Path] = typer.Argument(..., help="Files or directories (searched recursively) to scan."),
    report: str | None = typer.Option(
        None, "--report", help="POST what is found to this leaks endpoint, e.g. https://host/api/v1/keys/leaks."
    ),
    as_json: bool = JsonOpt,
):
    """Find tidegate API keys in files by their format and checksum (no database needed).

    Prints file:line and each key's prefix, never the whole key; exits 1 if any is found
    (2 if a path cannot be read or the report fails), 0 if none."""
    from tidegate.credentials.leaks import find_keys, prefix_of

    found: list[tuple[str, int, str]] = []
    unreadable = False
    for file in _scan_files(paths):
        try:
            if file.stat().st_size > SCAN_MAX_FILE_BYTES:
                continue
            text = file.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            typer.echo(f"error: cannot read {file} ({exc.strerror})", err=True)
            unreadable = True
            continue
        found += [(str(file), line, key) for line, key in find_keys(text)]
    labels: list[dict] | None = None
    if report and found:
        labels = _report_found(report, found)
        if labels is None:
            unreadable = True
    payload = {
        "found": [{"file": f, "line": line, "key_prefix": prefix_of(key)} for f, line, key in found],
        "reported": None if labels is None else sum(1 for x in labels if x.get("label") == "true_positive"),
    }
    human = "\n".join(f"{f}:{line}: {prefix_of(key)}... (tidegate API key)" for f, line, key in found)
    if labels is not None:
        human += f"\nReported {len(found)} key(s): {payload['reported']} confirmed as live or past keys and revoked if active."
    emit(as_json, payload, human or "No tidegate API keys found.")
    if found:
        raise typer.Exit(code=1)
    if unreadable:
        raise typer.Exit(code=2)


def _report_found(url: str, found: list[tuple[str, int, str]]) -> list[dict] | None:
    """POST the keys to a leaks endpoint; its labels, or None (said on stderr) if it failed.
    The body holds whole keys: only over https, or plain http to this machine (loopback)."""
    import ipaddress
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(url)
    try:
        local = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        local = False
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        typer.echo(f"error: --report needs an https:// URL (plain http only to loopback), not {url}", err=True)
        return None
    body = [
        {
            "token": key,
            "type": "tidegate_api_key",
            "url": f"file://{Path(f).resolve()}#L{line}",
            "source": "tidegate keys scan",
        }
        for f, line, key in found
    ]
    try:
        response = httpx.post(url, json=body, timeout=30, follow_redirects=False)
    except httpx.HTTPError as exc:
        typer.echo(f"error: could not report to {url} ({type(exc).__name__})", err=True)
        return None
    if response.status_code != 200:
        typer.echo(f"error: {url} answered {response.status_code}: {response.text[:300]}", err=True)
        return None
    labels: list[dict] = response.json()
    return labels


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    org: str = typer.Option(..., "--org"),
    grace: int = typer.Option(
        0, "--grace", help="Seconds the old key keeps working (0-604800; 0: revoked now).", min=0, max=604800
    ),
    as_json: bool = JsonOpt,
):
    """Replace a key with a new one of the same settings, made as its creator (refused where
    the API would refuse them); the old key is revoked now or expires after --grace."""
    with database(as_json) as (settings, session):
        organization = orgs.find_org(session, org)
        system = Principal.for_user(organization.id, "cli", "admin")
        old = keys_service.get_key(session, system, key_id)
        owner = orgs.get_user(session, organization.id, old.created_by, include_inactive=True)
        if not owner.is_active:
            raise InvalidRequest("user_inactive", f"{owner.email} is deactivated; revoke the key instead.")
        created = keys_service.rotate_key(
            session,
            Principal.for_user(organization.id, owner.id, owner.role),
            old,
            grace=timedelta(seconds=grace),
            pepper=settings.pepper,
            via="cli",
        )
        payload = {
            **_key_payload(created.key),
            "secret": created.secret,
            "replaced_key": _key_payload(old, organization.unused_key_days),
        }
    until = "revoked now" if grace == 0 else f"works until {payload['replaced_key']['expires_at']}"
    emit(
        as_json,
        payload,
        f"{created.secret}\n(key {created.key.id}, replacing {old.id}: {until}; shown once, copy it now)",
    )


# -- organization ------------------------------------------------------------------------


@org_app.command("settings")
def org_settings(
    org: str = typer.Option(..., "--org"),
    api_key_creation: str | None = typer.Option(None, "--api-key-creation", help="on or off"),
    max_keys_per_user: int | None = typer.Option(None, "--max-keys-per-user", help="Active keys one person may hold."),
    user_rate_limit_per_minute: int | None = typer.Option(
        None, "--user-rate-limit-per-minute", help="Requests per minute shared by all of one person's keys."
    ),
    unused_key_days: int | None = typer.Option(
        None, "--unused-key-days", help="Flag active keys unused for this many days (1-3650)."
    ),
    embeds: str | None = typer.Option(None, "--embeds", help="Embed sessions: on or off"),
    embed_origins: list[str] | None = typer.Option(
        None, "--embed-origin", help="An origin allowed to host embeds (repeat; '' clears the list)."
    ),
    embed_ui_config: str | None = typer.Option(
        None, "--embed-ui-config", help='The embed UI config as JSON: {"chrome": {}, "theme": {}, "privacy": {}}'
    ),
    audit_retention_days: int | None = typer.Option(
        None, "--audit-retention-days", help="Days audit events are kept (1 to 2190)."
    ),
    audit_stream_url: str | None = typer.Option(
        None,
        "--audit-stream-url",
        help="HTTPS endpoint that gets the audit chain as signed NDJSON; prints a new secret once ('' clears it).",
    ),
    audit_stream: str | None = typer.Option(None, "--audit-stream", help="Streaming to the SIEM: on or off"),
    as_json: bool = JsonOpt,
):
    """Show, or change, the organization's admin controls."""
    with database(as_json) as (settings, session):
        organization = orgs.find_org(session, org)
        if api_key_creation is not None and api_key_creation not in ("on", "off"):
            raise InvalidRequest("invalid_value", "--api-key-creation takes on or off.")
        if embeds is not None and embeds not in ("on", "off"):
            raise InvalidRequest("invalid_value", "--embeds takes on or off.")
        if audit_stream is not None and audit_stream not in ("on", "off"):
            raise InvalidRequest("invalid_value", "--audit-stream takes on or off.")
        stream_change = audit_stream_url is not None or audit_stream is not None
        stream_url = audit_stream_url.strip() or None if audit_stream_url is not None else None
        stream_enabled = None if audit_stream is None else audit_stream == "on"
        clear_url = audit_stream_url is not None and stream_url is None
        if stream_change:  # checked before anything changes, against the server's egress policy
            from tidegate.data import egress

            egress.configure(settings.data.connector_allow)
            audit_streams.check_update(
                session, organization.id, url=stream_url, clear_url=clear_url, enabled=stream_enabled
            )
        orgs.update_settings(
            session,
            None,
            organization,
            api_key_creation_enabled=None if api_key_creation is None else api_key_creation == "on",
            max_keys_per_user=max_keys_per_user,
            user_rate_limit_per_minute=user_rate_limit_per_minute,
            embeds_enabled=None if embeds is None else embeds == "on",
            embed_allowed_origins=None if not embed_origins else [o for o in embed_origins if o],
            embed_ui_config=None if embed_ui_config is None else _json_object(embed_ui_config, "--embed-ui-config"),
            unused_key_days=unused_key_days,
            audit_retention_days=audit_retention_days,
        )
        secret = None
        if stream_change:
            secret = audit_streams.update_stream(
                session,
                None,
                organization.id,
                url=stream_url,
                clear_url=clear_url,
                enabled=stream_enabled,
                session_key=settings.session_key,
            ).secret
        payload = OrgSettingsOut.of(organization, audit_streams.get_stream(session, organization.id)).model_dump()
        if secret is not None:
            payload["audit_stream_secret"] = secret  # shown this once
    emit(as_json, payload, "\n".join(f"{k}: {v}" for k, v in payload.items()))


def _json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequest("invalid_value", f"{option} takes a JSON object.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("invalid_value", f"{option} takes a JSON object.")
    return value


@org_app.command("list")
def org_list(as_json: bool = JsonOpt):
    with database(as_json) as (_, session):
        payload = [
            {"id": o.id, "name": o.name} for o in session.scalars(select(Organization).order_by(Organization.id))
        ]
    emit(as_json, payload, "\n".join(f"{o['id']}  {o['name']}" for o in payload) or "No organizations.")


# -- audit journal -------------------------------------------------------------------------


@audit_app.command("status")
def audit_status(as_json: bool = JsonOpt):
    """What is waiting in the audit journal: events not yet in the database, set aside, torn."""
    from tidegate.audit.journal import backlog

    directory = get_settings().audit_dir
    payload = (
        backlog(directory).view(directory)
        if directory.exists()
        else {
            "directory": str(directory),
            "segments": 0,
            "pending_events": 0,
            "oldest_pending_at": None,
            "oldest_pending_age_seconds": None,
            "set_aside_events": 0,
            "torn_records": 0,
        }
    )
    age = payload["oldest_pending_age_seconds"]
    emit(
        as_json,
        payload,
        "\n".join(
            [
                f"journal            {payload['directory']}",
                f"pending events     {payload['pending_events']} in {payload['segments']} segment(s)"
                + (f", oldest {age:.0f} s old" if age is not None else ""),
                f"set aside          {payload['set_aside_events']}"
                + ("  (refused by the database; see `tidegate audit reship`)" if payload["set_aside_events"] else ""),
                f"torn records       {payload['torn_records']}",
            ]
        ),
    )


@audit_app.command("reship")
def audit_reship(as_json: bool = JsonOpt):
    """Ship the events the database refused (kept in rejected.jsonl) again, e.g. after an upgrade."""
    from tidegate.audit.journal import private_directory, reship_set_aside
    from tidegate.credentials.usage import record_key_use

    settings = get_settings()
    with refusals_reported(as_json):
        migrate(settings.database_url)
        shipped, refused = reship_set_aside(
            private_directory(settings.audit_dir), settings.database_url, after_insert=record_key_use
        )
    emit(
        as_json,
        {"shipped": shipped, "still_set_aside": refused},
        f"Shipped {shipped} set-aside event(s); {refused} still refused.",
    )


# -- the verifiable audit chain -------------------------------------------------------------------


def _verifying_keys(texts: list[str] | None) -> dict:
    """--public-key values (base64, PEM, or a file holding either) as {key id: key}."""
    from tidegate.audit.signing import key_id_of, parse_public

    keys = {}
    for text in texts or []:
        candidate = Path(text)
        try:
            value = candidate.read_text() if len(text) < 4096 and candidate.is_file() else text
            key = parse_public(value)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"not an Ed25519 public key ({exc})", param_hint="--public-key") from None
        keys[key_id_of(key)] = key
    return keys


def _verify_line(report) -> str:
    head = f"org {report.org_id}: " if report.org_id else ""
    if report.problem is not None:
        problem = report.problem
        where = f" (position {problem.chain_seq}" + (f", event {problem.event_id})" if problem.event_id else ")")
        return f"{head}FAILED {problem.kind}{where if problem.chain_seq is not None else ''}: {problem.message}"
    span = f"positions {report.first_seq}..{report.last_seq}" if report.events else "no events"
    signed = (
        f"verified up to position {report.verified_seq}, signed {report.verified_at}"
        if report.verified_seq is not None
        else "no checkpoint yet"
    )
    unsigned = f"; {report.unsigned} newer event(s) not signed yet" if report.unsigned else ""
    notes = "".join(f"; {note}" for note in report.notes)
    return f"{head}OK: {report.events} event(s), {span}, {signed}{unsigned}{notes}"


@audit_app.command("verify")
def audit_verify(
    org: str | None = typer.Option(None, "--org", help="One organization (id or name); default: all."),
    file: Path | None = typer.Option(None, "--file", help="Verify an export (NDJSON) offline: no database needed."),
    public_key: list[str] | None = typer.Option(
        None, "--public-key", help="Verifying key: base64, PEM, or a file (repeat for rotated keys)."
    ),
    as_json: bool = JsonOpt,
):
    """Check the hash chain and the signed checkpoints; exit 1 naming the first bad event."""
    keys = _verifying_keys(public_key)
    if file is not None:
        from tidegate.audit.export import verify_export

        if not keys:
            raise typer.BadParameter("offline verification needs the verifying key", param_hint="--public-key")
        try:
            reports = [verify_export(file, keys)]
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="--file") from None
    else:
        from tidegate.audit.signing import load_signer
        from tidegate.audit.verify import org_ids, verify_org

        with database(as_json) as (settings, session):
            signer = load_signer(settings.home, settings.audit_signing_key)
            keys.setdefault(signer.key_id, signer.public)
            targets = [orgs.find_org(session, org).id] if org else org_ids(session)
            reports = [verify_org(session, org_id, keys) for org_id in targets]
    emit(
        as_json,
        [report.view() for report in reports],
        "\n".join(_verify_line(r) for r in reports) or "No audit chains.",
    )
    if any(not report.ok for report in reports):
        raise typer.Exit(code=1)


@audit_app.command("purge")
def audit_purge(as_json: bool = JsonOpt):
    """Delete audit events older than each organization's retention, signing the boundary."""
    from tidegate.audit.signing import load_signer
    from tidegate.db.jobs import LockBusy
    from tidegate.orgs.retention import purge_now

    settings = get_settings()
    with refusals_reported(as_json):
        migrate(settings.database_url)
        try:
            purged = purge_now(settings.database_url, load_signer(settings.home, settings.audit_signing_key))
        except LockBusy:
            raise SystemExit("Another node has been purging for a minute and still is; try again later.") from None
    emit(
        as_json,
        [{"org_id": p.org_id, "events": p.events, "through_chain_seq": p.boundary_seq} for p in purged],
        "\n".join(f"org {p.org_id}: {p.events} event(s) purged, up to position {p.boundary_seq}" for p in purged)
        or "Nothing older than the retention periods.",
    )


@audit_app.command("public-key")
def audit_public_key(as_json: bool = JsonOpt):
    """Print the key that verifies checkpoints and exports (base64 of its 32 raw bytes)."""
    from tidegate.audit.signing import encode_public, load_signer

    settings = get_settings()
    signer = load_signer(settings.home, settings.audit_signing_key)
    emit(as_json, {"key_id": signer.key_id, "public_key": encode_public(signer.public)}, encode_public(signer.public))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
