"""Server settings, read from the environment once per process.

The server's own secrets (the key-hashing pepper and the session signing key) are never
stored in the database: a copy of the database alone must not be enough to forge or verify
a key. They come from the environment or from `$TIDEGATE_HOME/secrets.json` (mode 0600),
generated on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from tidegate.limits import Limits, from_environment, load_limits

SECRETS_FILE = "secrets.json"


def metrics_dir_for(home: Path) -> Path:
    """The metrics directory of the server whose home this is: in memory (/dev/shm) where there
    is one, since prometheus-client writes through mmap and a page it cannot get on a full
    disk is a SIGBUS that kills the worker at once."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"tidegate-metrics-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]}"
    return home / "metrics"


@dataclass(frozen=True)
class QueryLimits:
    """What one SQL query (`POST .../query`) may cost. Counted per server process."""

    timeout_seconds: float = 30.0  # wall clock, from admission to the answer
    memory_limit_bytes: int = 512 * 1024 * 1024  # DuckDB memory of one running query
    max_result_bytes: int = 64 * 1024 * 1024  # the page of results, as data and as JSON
    max_value_bytes: int = 16 * 1024 * 1024  # any one value of the result
    workers: int = 4  # queries running at once; more wait in line (within the per-key/org caps)
    warm_workers: int = 1  # worker processes started with the server; the rest on demand
    per_key: int = 4  # queries of one key running or waiting at once
    per_org: int = 8  # queries of one organization running or waiting at once


QUERY_LIMIT_VARIABLES = {
    "timeout_seconds": "TIDEGATE_QUERY_TIMEOUT_SECONDS",
    "memory_limit_bytes": "TIDEGATE_QUERY_MEMORY_LIMIT_BYTES",
    "max_result_bytes": "TIDEGATE_QUERY_MAX_RESULT_BYTES",
    "max_value_bytes": "TIDEGATE_QUERY_MAX_VALUE_BYTES",
    "workers": "TIDEGATE_QUERY_WORKERS",
    "warm_workers": "TIDEGATE_QUERY_WARM_WORKERS",
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
    live_timeout_seconds: int = 30  # one read of a live source (page, count, query), then 504
    live_pool_size: int = 4  # open connections per live source and process
    sqlite_connector_dirs: tuple[Path, ...] = ()  # where SQLite connector files may live (none: nowhere)
    connector_allow: str = ""  # egress allowlist, parsed by data.egress (empty: public addresses)
    # Data garbage collection: one round per interval across all nodes (tidegate.db.jobs);
    # objects younger than the minimum age are spared (a write may be about to commit them).
    gc_interval_seconds: float = 900.0
    gc_min_age_seconds: float = 60.0


DATA_VARIABLES = {
    "cache_bytes": "TIDEGATE_DATA_CACHE_BYTES",
    "threads": "TIDEGATE_DATA_THREADS",
    "connector_statement_timeout_seconds": "TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS",
    "gc_interval_seconds": "TIDEGATE_GC_INTERVAL_SECONDS",
    "gc_min_age_seconds": "TIDEGATE_GC_MIN_AGE_SECONDS",
    "live_timeout_seconds": "TIDEGATE_LIVE_TIMEOUT_SECONDS",
    "live_pool_size": "TIDEGATE_LIVE_POOL_SIZE",
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


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Where source versions and uploaded files live: local disk (url empty, the default)
    or an S3-compatible store (`s3://bucket/prefix`), read through a bounded local cache."""

    url: str = ""  # "" = $TIDEGATE_HOME/data
    endpoint_url: str = ""  # e.g. http://127.0.0.1:9000 (MinIO); empty = AWS for the region
    region: str = "us-east-1"
    access_key_id: str = ""  # both empty: the AWS default chain (env, profile, instance role)
    secret_access_key: str = field(default="", repr=False)
    allow_http: bool = False  # plain HTTP to a non-loopback endpoint: only when set
    part_cache_bytes: int = 10 * 1024**3  # this node's copies of parts, LRU by bytes

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def bucket(self) -> str:
        return self.url[len("s3://") :].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        rest = self.url[len("s3://") :].split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _object_store_settings(environ: Mapping[str, str]) -> ObjectStoreSettings:
    """TIDEGATE_DATA_URL and the S3 settings, checked (ValueError names the variable)."""
    url = environ.get("TIDEGATE_DATA_URL", "").strip()
    raw_cache = environ.get("TIDEGATE_PART_CACHE_BYTES", "").strip()
    endpoint = environ.get("TIDEGATE_S3_ENDPOINT_URL", "").strip().rstrip("/")
    allow_http = _switch(environ, "TIDEGATE_S3_ALLOW_HTTP", default=False)
    key_id = environ.get("TIDEGATE_S3_ACCESS_KEY_ID", "").strip()
    secret = environ.get("TIDEGATE_S3_SECRET_ACCESS_KEY", "").strip()
    region = environ.get("TIDEGATE_S3_REGION", "").strip() or ObjectStoreSettings.region
    cache_bytes = ObjectStoreSettings.part_cache_bytes
    if raw_cache:
        if not raw_cache.isdigit() or int(raw_cache) <= 0:
            raise ValueError(f"TIDEGATE_PART_CACHE_BYTES must be a whole number greater than 0, not {raw_cache!r}")
        cache_bytes = int(raw_cache)
    if not url:
        return ObjectStoreSettings(part_cache_bytes=cache_bytes)
    if not url.startswith("s3://"):
        raise ValueError(f"TIDEGATE_DATA_URL must be s3://bucket[/prefix] (or unset for local disk), not {url!r}")
    store = ObjectStoreSettings(url=url, part_cache_bytes=cache_bytes)
    if not _BUCKET_RE.match(store.bucket) or ".." in store.bucket:
        raise ValueError(f"TIDEGATE_DATA_URL: {store.bucket!r} is not a valid S3 bucket name")
    if any(part in (".", "..") for part in store.prefix.split("/")) or "//" in store.prefix:
        raise ValueError("TIDEGATE_DATA_URL: the prefix must not contain '.', '..' or empty segments")
    if endpoint:
        scheme, _, host_port = endpoint.partition("://")
        if scheme not in ("http", "https") or not host_port or "/" in host_port or "@" in host_port:
            raise ValueError(f"TIDEGATE_S3_ENDPOINT_URL must be http(s)://host[:port], not {endpoint!r}")
        host = host_port if host_port.endswith("]") else host_port.rsplit(":", 1)[0]
        if scheme == "http" and not _is_loopback(host) and not allow_http:
            raise ValueError(
                "TIDEGATE_S3_ENDPOINT_URL is plain http to a non-loopback host: credentials and data would "
                "cross the network unencrypted; use https, or set TIDEGATE_S3_ALLOW_HTTP=1 to accept that"
            )
    if bool(key_id) != bool(secret):
        raise ValueError("TIDEGATE_S3_ACCESS_KEY_ID and TIDEGATE_S3_SECRET_ACCESS_KEY must be set together")
    if not re.fullmatch(r"[a-z0-9-]{1,40}", region):
        raise ValueError(f"TIDEGATE_S3_REGION must look like us-east-1, not {region!r}")
    return replace(
        store,
        endpoint_url=endpoint,
        region=region,
        access_key_id=key_id,
        secret_access_key=secret,
        allow_http=allow_http,
    )


@dataclass(frozen=True)
class NotifySettings:
    """Leaked-key reports, webhooks and security notifications (tidegate.notifications)."""

    leak_reports_per_minute: int = 30  # POST /api/v1/keys/leaks, per client address
    # Secret-scanning providers' ECDSA public keys, (identifier, PEM): when any is set, every
    # leak report must carry a valid signature by one of them (GitHub's headers).
    leak_public_keys: tuple[tuple[str, str], ...] = ()
    interval_seconds: float = 5.0  # how often each process scans for events and delivers
    webhook_retry_base_seconds: float = 30.0  # first retry after this, doubling per attempt
    webhook_max_attempts: int = 8  # then the delivery is marked failed
    webhook_timeout_seconds: float = 10.0
    # A burst of failed authentications against one key prefix: this many within the window.
    auth_failure_burst: int = 20
    auth_failure_window_seconds: int = 300


NOTIFY_VARIABLES = {
    "leak_reports_per_minute": "TIDEGATE_LEAK_REPORTS_PER_MINUTE",
    "interval_seconds": "TIDEGATE_NOTIFY_INTERVAL_SECONDS",
    "webhook_retry_base_seconds": "TIDEGATE_WEBHOOK_RETRY_BASE_SECONDS",
    "webhook_max_attempts": "TIDEGATE_WEBHOOK_MAX_ATTEMPTS",
    "webhook_timeout_seconds": "TIDEGATE_WEBHOOK_TIMEOUT_SECONDS",
    "auth_failure_burst": "TIDEGATE_AUTH_FAILURE_BURST",
    "auth_failure_window_seconds": "TIDEGATE_AUTH_FAILURE_WINDOW_SECONDS",
}


def read_public_keys(path: Path) -> tuple[tuple[str, str], ...]:
    """(identifier, PEM) pairs from a file in the format GitHub serves them at
    https://api.github.com/meta/public_keys/secret_scanning (`{"public_keys": [{"key_identifier",
    "key"}]}`), or a bare list of such objects."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"TIDEGATE_LEAK_PUBLIC_KEYS_FILE: cannot read {str(path)!r} ({exc})") from None
    entries = document.get("public_keys") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise ValueError('TIDEGATE_LEAK_PUBLIC_KEYS_FILE: expected {"public_keys": [...]} with at least one key')
    keys = []
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("key_identifier"), str)
            and isinstance(entry.get("key"), str)
            and "BEGIN PUBLIC KEY" in entry["key"]
        ):
            raise ValueError("TIDEGATE_LEAK_PUBLIC_KEYS_FILE: each key needs key_identifier and a PEM key")
        keys.append((entry["key_identifier"], entry["key"]))
    return tuple(keys)


def _notify_settings(environ: Mapping[str, str]) -> NotifySettings:
    numbers = from_environment(NotifySettings, NOTIFY_VARIABLES, environ)
    keys_file = environ.get("TIDEGATE_LEAK_PUBLIC_KEYS_FILE", "").strip()
    return replace(numbers, leak_public_keys=read_public_keys(Path(keys_file)) if keys_file else ())


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
    object_store: ObjectStoreSettings = field(default_factory=ObjectStoreSettings)
    # The bearer token /metrics asks for; None: /metrics is off (404 metrics_disabled).
    metrics_token: str | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)
    # PostgreSQL: each serving process keeps its own copy of the access epochs under a lease of
    # this length (orgs.epochwatch); 0: the epoch is read per request instead.
    epoch_lease_seconds: float = 2.0
    # The Ed25519 seed that signs audit checkpoints; None: the key file in `home` (audit.signing).
    audit_signing_key: bytes | None = None

    @property
    def part_cache_dir(self) -> Path:
        """This node's cache of object-store parts (disposable: names are immutable)."""
        return self.home / "cache" / "parts"

    @property
    def audit_dir(self) -> Path:
        return self.home / "audit"

    @property
    def metrics_dir(self) -> Path:
        """Where `tidegate serve`'s processes keep their metrics (emptied at each start)."""
        return metrics_dir_for(self.home)

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


def seed_from_text(text: str) -> bytes:
    """TIDEGATE_AUDIT_SIGNING_KEY: base64 of a 32-byte Ed25519 seed (ValueError otherwise)."""
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("TIDEGATE_AUDIT_SIGNING_KEY must be base64 (of a 32-byte Ed25519 seed)") from None
    if len(seed) != 32:
        raise ValueError(f"TIDEGATE_AUDIT_SIGNING_KEY must decode to 32 bytes, not {len(seed)}")
    return seed


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
        object_store = _object_store_settings(environ)
        metrics_token = _metrics_token(environ.get("TIDEGATE_METRICS_TOKEN", ""))
        notify = _notify_settings(environ)
        epoch_lease_seconds = _lease_seconds(environ.get("TIDEGATE_EPOCH_LEASE_SECONDS", ""))
        signing_text = environ.get("TIDEGATE_AUDIT_SIGNING_KEY", "").strip()
        audit_signing_key = seed_from_text(signing_text) if signing_text else None
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
        object_store=object_store,
        metrics_token=metrics_token,
        notify=notify,
        epoch_lease_seconds=epoch_lease_seconds,
        audit_signing_key=audit_signing_key,
    )


def _lease_seconds(raw: str) -> float:
    if not raw.strip():
        return Settings.epoch_lease_seconds
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"TIDEGATE_EPOCH_LEASE_SECONDS must be a number of seconds, not {raw!r}") from None
    if value != 0 and not 0.5 <= value <= 60:
        raise ValueError("TIDEGATE_EPOCH_LEASE_SECONDS must be 0 (off) or between 0.5 and 60")
    return value


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


MIN_METRICS_TOKEN_LENGTH = 16


def _metrics_token(raw: str) -> str | None:
    """Unset or empty: /metrics is off. A token anyone could guess is refused, not used."""
    token = raw.strip()
    if token and len(token) < MIN_METRICS_TOKEN_LENGTH:
        raise ValueError(f"TIDEGATE_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LENGTH} characters")
    return token or None


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
