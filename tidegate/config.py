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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tidegate.limits import from_environment

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


_QUERY_ENV = {
    "timeout_seconds": "TIDEGATE_QUERY_TIMEOUT_SECONDS",
    "memory_limit_bytes": "TIDEGATE_QUERY_MEMORY_LIMIT_BYTES",
    "max_result_bytes": "TIDEGATE_QUERY_MAX_RESULT_BYTES",
    "max_value_bytes": "TIDEGATE_QUERY_MAX_VALUE_BYTES",
    "workers": "TIDEGATE_QUERY_WORKERS",
    "per_key": "TIDEGATE_QUERY_MAX_PER_KEY",
    "per_org": "TIDEGATE_QUERY_MAX_PER_ORG",
}


def load_query_limits() -> QueryLimits:
    try:
        return from_environment(QueryLimits, _QUERY_ENV)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


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


def load_settings() -> Settings:
    home = Path(os.environ.get("TIDEGATE_HOME", "./.tidegate")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    # The home, its data and audit directories are the server's alone (also when an older
    # version created them with wider modes).
    for directory in (home, home / "data", home / "audit"):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    database_url = os.environ.get("TIDEGATE_DATABASE_URL") or f"sqlite:///{home / 'tidegate.db'}"
    pepper_env = os.environ.get("TIDEGATE_PEPPER")
    session_env = os.environ.get("TIDEGATE_SESSION_KEY")
    stored = {} if (pepper_env and session_env) else _load_or_create_secrets(home)
    proxies = os.environ.get("TIDEGATE_TRUSTED_PROXIES", "")
    return Settings(
        home=home,
        database_url=normalize_database_url(database_url),
        redis_url=os.environ.get("TIDEGATE_REDIS_URL") or None,
        pepper=(pepper_env or stored["pepper"]).encode(),
        session_key=(session_env or stored["session_key"]).encode(),
        trusted_proxies=tuple(p.strip() for p in proxies.split(",") if p.strip()),
        query_limits=load_query_limits(),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
