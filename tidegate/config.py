"""Server settings, read from the environment once per process.

The server's own secrets (the key-hashing pepper and the session signing key) are never
stored in the database: a copy of the database alone must not be enough to forge or verify
a key. They come from the environment or from `$TIDEGATE_HOME/secrets.json` (mode 0600),
generated on first use.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from tidegate.limits import Limits, from_environment, load_limits

SECRETS_FILE = "secrets.json"


@dataclass(frozen=True)
class QueryLimits:
    """What one SQL query (`POST .../query`) may cost. Counted per server process."""

    timeout_seconds: float = 30.0  # wall clock, from admission to the answer
    memory_limit_bytes: int = 512 * 1024 * 1024  # DuckDB memory of one running query
    max_result_bytes: int = 64 * 1024 * 1024  # the page of results, as data and as JSON
    max_value_bytes: int = 16 * 1024 * 1024  # any one value of the result
    workers: int = 4  # queries running at once; more wait in line (within the per-key/org caps)
    per_key: int = 4  # queries of one key running or waiting at once
    per_org: int = 8  # queries of one organization running or waiting at once


QUERY_LIMIT_VARIABLES = {
    "timeout_seconds": "TIDEGATE_QUERY_TIMEOUT_SECONDS",
    "memory_limit_bytes": "TIDEGATE_QUERY_MEMORY_LIMIT_BYTES",
    "max_result_bytes": "TIDEGATE_QUERY_MAX_RESULT_BYTES",
    "max_value_bytes": "TIDEGATE_QUERY_MAX_VALUE_BYTES",
    "workers": "TIDEGATE_QUERY_WORKERS",
    "per_key": "TIDEGATE_QUERY_MAX_PER_KEY",
    "per_org": "TIDEGATE_QUERY_MAX_PER_ORG",
}


@dataclass(frozen=True)
class DataSettings:
    """The data engine's process-wide DuckDB and cache sizes, and the connectors' bounds."""

    cache_bytes: int = 1024 * 1024 * 1024  # filtered results kept per (source version, row filter)
    threads: int = 2  # DuckDB threads of the engine's connection
    memory_limit: str = "2GB"  # DuckDB's own syntax, passed through
    connector_statement_timeout_seconds: int = 300  # one connector read, wall clock
    sqlite_connector_dirs: tuple[Path, ...] = ()  # where SQLite connector files may live (none: nowhere)
    connector_allow: str = ""  # egress allowlist, parsed by data.egress (empty: public addresses)


DATA_VARIABLES = {
    "cache_bytes": "TIDEGATE_DATA_CACHE_BYTES",
    "threads": "TIDEGATE_DATA_THREADS",
    "connector_statement_timeout_seconds": "TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS",
}


@dataclass(frozen=True)
class PgSettings:
    """The PostgreSQL wire endpoint (tidegate.pgwire); off unless a port is set."""

    port: int = 0  # 0: off
    max_connections_per_key: int = 10
    auth_attempts_per_minute: int = 30  # per client IP, failed or not
    tls_cert: Path | None = None  # with tls_key; unset: generated into TIDEGATE_HOME
    tls_key: Path | None = None
    allow_plain_loopback: bool = False  # cleartext passwords without TLS from 127.0.0.0/8, ::1
    # The most one statement may send (Arrow bytes of its rows): streamed, not held, so large.
    max_result_bytes: int = 16 * 1024 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.port > 0


PG_VARIABLES = {
    "port": "TIDEGATE_PG_PORT",
    "max_connections_per_key": "TIDEGATE_PG_MAX_CONNECTIONS_PER_KEY",
    "auth_attempts_per_minute": "TIDEGATE_PG_AUTH_ATTEMPTS_PER_MINUTE",
    "max_result_bytes": "TIDEGATE_PG_MAX_RESULT_BYTES",
}

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    redis_url: str | None
    pepper: bytes
    session_key: bytes
    # Client addresses from which X-Forwarded-For is believed. Empty = never: otherwise a
    # client could claim any address and walk past a key's IP allowlist.
    trusted_proxies: tuple[str, ...]
    query_limits: QueryLimits = field(default_factory=QueryLimits)
    limits: Limits = field(default_factory=Limits)  # request bodies, ingest, connections
    data: DataSettings = field(default_factory=DataSettings)
    audit_fsync: bool = False  # fsync each audit line (survives power loss, not only a crash)
    log_level: str = "info"
    access_log: bool = True  # tidegate.access's one line per request (paths only)
    pg: PgSettings = field(default_factory=PgSettings)

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


def _read_secrets(path: Path) -> dict[str, str]:
    values: dict[str, str] = json.loads(path.read_text())
    return values


def _load_or_create_secrets(home: Path) -> dict[str, str]:
    path = home / SECRETS_FILE
    if path.exists():
        return _read_secrets(path)
    values = {"pepper": secrets.token_hex(32), "session_key": secrets.token_hex(32)}
    tmp = path.with_suffix(".tmp")
    # O_EXCL + 0600 from the start: the file is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps(values).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race; then use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secrets(path)


def normalize_database_url(url: str) -> str:
    """Accept the plain `postgresql://` form and pick the psycopg 3 driver for it."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of this process: every TIDEGATE_* variable the server reads is read
    here (README, "Configuration", lists them). A value that cannot be read stops start-up
    with a message naming the variable (SystemExit)."""
    environ = os.environ if environ is None else environ
    home = Path(environ.get("TIDEGATE_HOME", "./.tidegate")).resolve()
    try:
        query_limits = from_environment(QueryLimits, QUERY_LIMIT_VARIABLES, environ)
        limits = load_limits(environ)
        numbers = from_environment(DataSettings, DATA_VARIABLES, environ)
        data = replace(
            numbers,
            memory_limit=environ.get("TIDEGATE_DATA_MEMORY_LIMIT", DataSettings.memory_limit),
            sqlite_connector_dirs=_directories(environ.get("TIDEGATE_SQLITE_CONNECTOR_DIRS", "")),
            connector_allow=environ.get("TIDEGATE_CONNECTOR_ALLOW", ""),
        )
        audit_fsync = _switch(environ, "TIDEGATE_AUDIT_FSYNC", default=False)
        access_log = _switch(environ, "TIDEGATE_ACCESS_LOG", default=True)
        log_level = _log_level(environ.get("TIDEGATE_LOG_LEVEL", "info"))
        pg = _pg_settings(environ)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    home.mkdir(parents=True, exist_ok=True)
    # The home, its data and audit directories are the server's alone (also when an older
    # version created them with wider modes).
    for directory in (home, home / "data", home / "audit"):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    database_url = environ.get("TIDEGATE_DATABASE_URL") or f"sqlite:///{home / 'tidegate.db'}"
    pepper_env = environ.get("TIDEGATE_PEPPER")
    session_env = environ.get("TIDEGATE_SESSION_KEY")
    stored = {} if (pepper_env and session_env) else _load_or_create_secrets(home)
    proxies = environ.get("TIDEGATE_TRUSTED_PROXIES", "")
    return Settings(
        home=home,
        database_url=normalize_database_url(database_url),
        redis_url=environ.get("TIDEGATE_REDIS_URL") or None,
        pepper=(pepper_env or stored["pepper"]).encode(),
        session_key=(session_env or stored["session_key"]).encode(),
        trusted_proxies=tuple(p.strip() for p in proxies.split(",") if p.strip()),
        query_limits=query_limits,
        limits=limits,
        data=data,
        audit_fsync=audit_fsync,
        log_level=log_level,
        access_log=access_log,
        pg=pg,
    )


def _pg_settings(environ: Mapping[str, str]) -> PgSettings:
    numbers = from_environment(PgSettings, PG_VARIABLES, environ)
    cert = environ.get("TIDEGATE_PG_TLS_CERT", "").strip()
    key = environ.get("TIDEGATE_PG_TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        raise ValueError("TIDEGATE_PG_TLS_CERT and TIDEGATE_PG_TLS_KEY must be set together")
    return replace(
        numbers,
        tls_cert=Path(cert).resolve() if cert else None,
        tls_key=Path(key).resolve() if key else None,
        allow_plain_loopback=_switch(environ, "TIDEGATE_PG_ALLOW_PLAIN_LOOPBACK", default=False),
    )


def _switch(environ: Mapping[str, str], variable: str, *, default: bool) -> bool:
    """`1` on, `0` off, unset or empty the default; anything else is a mistake, not "off"."""
    raw = environ.get(variable, "").strip()
    if raw in ("0", "1"):
        return raw == "1"
    if raw:
        raise ValueError(f"{variable} must be 0 or 1, not {raw!r}")
    return default


def _log_level(raw: str) -> str:
    if raw not in LOG_LEVELS:
        raise ValueError(f"TIDEGATE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return raw


def _directories(raw: str) -> tuple[Path, ...]:
    """An os.pathsep-separated list (as PATH is); empty entries are skipped."""
    return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
