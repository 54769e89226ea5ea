"""Connectors: pull a table from an external database into a source.

Registry (`CONNECTORS`, `list_connectors()`):
- `postgresql`: config {host, port?, database, user, sslmode?, schema?, table | query,
  connect_timeout?}; secret {password?}. Table mode reads one table (identifiers quoted
  by psycopg); query mode runs one read-only query (READ ONLY transaction, statement
  timeout, server-side cursor so only SELECT-like queries work). The host must be allowed
  by the egress policy (data/egress.py, TIDEGATE_CONNECTOR_ALLOW) and the connection goes
  to the address that was checked; every connection failure answers the same
  `connector_unreachable` message (no port scan by error message). The whole read is
  limited to TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS (default 300).
- `sqlite`: config {path, table | query}. The file must lie under a directory allowed by
  `configure(sqlite_dirs=...)` / TIDEGATE_SQLITE_CONNECTOR_DIRS, never inside the
  tidegate home, and never be tidegate's own database (by path or hard link); it is
  opened read-only, and an authorizer allows only reads (no ATTACH, PRAGMA or writes),
  with a time limit.

Credentials are write-only: `split_config` moves secret fields out of the config, and they
are stored only as a Fernet token (`encrypt_secret`) whose key is derived (HKDF-SHA256)
from Settings.session_key. Errors never contain the password: connection parameters are
passed as keywords, messages are built from the non-secret fields, and any occurrence of a
secret value is scrubbed from driver messages.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import pyarrow as pa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tidegate.config import DataSettings
from tidegate.data import egress, ingest
from tidegate.errors import InvalidRequest

if TYPE_CHECKING:
    from tidegate.catalog.models import Source

FETCH_BATCH = 10_000
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IDENT = re.compile(r"^[^\x00-\x1f]{1,128}$")


@dataclass(frozen=True)
class ConnectorType:
    id: str
    name: str
    description: str
    config_fields: tuple[str, ...]
    required: tuple[str, ...]
    secret_fields: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "service": self.id,
            "status": "available",
            "description": self.description,
            "config_fields": list(self.config_fields),
            "secret_fields": list(self.secret_fields),
        }


CONNECTORS: dict[str, ConnectorType] = {
    "postgresql": ConnectorType(
        id="postgresql",
        name="PostgreSQL",
        description="A table or a read-only query of a PostgreSQL database.",
        config_fields=("host", "port", "database", "user", "sslmode", "schema", "table", "query", "connect_timeout"),
        required=("host", "database", "user"),
        secret_fields=("password",),
    ),
    "sqlite": ConnectorType(
        id="sqlite",
        name="SQLite",
        description="A table or a read-only query of a SQLite file on the server.",
        config_fields=("path", "table", "query"),
        required=("path",),
        secret_fields=(),
    ),
}


def list_connectors() -> list[dict[str, Any]]:
    return [c.public() for c in CONNECTORS.values()]


def get_connector(connector_type: str) -> ConnectorType:
    connector = CONNECTORS.get(connector_type) if isinstance(connector_type, str) else None
    if connector is None:
        raise InvalidRequest(
            "unknown_connector",
            f"Unknown connector {connector_type!r}; available: {', '.join(CONNECTORS)}.",
        )
    return connector


# ---------------------------------------------------------------------------------------
# Secrets at rest
# ---------------------------------------------------------------------------------------


def _fernet(session_key: bytes) -> Fernet:
    if isinstance(session_key, str):
        session_key = session_key.encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tidegate connector credentials v1").derive(
        session_key
    )
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: dict[str, Any], session_key: bytes) -> str:
    return _fernet(session_key).encrypt(orjson.dumps(secret)).decode()


def decrypt_secret(token: str | None, session_key: bytes) -> dict[str, Any]:
    if not token:
        return {}
    try:
        secret: dict[str, Any] = orjson.loads(_fernet(session_key).decrypt(token.encode()))
        return secret
    except (InvalidToken, orjson.JSONDecodeError):
        raise InvalidRequest(
            "connector_secret_unreadable",
            "The stored connector credentials cannot be decrypted (was the session key changed?); set them again.",
        ) from None


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


def _text(config: dict[str, Any], name: str, *, required: bool = False, max_length: int = 1000) -> str | None:
    value = config.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest("invalid_connector_config", f'The connector setting "{name}" is required.')
        return None
    if not isinstance(value, str):
        raise InvalidRequest("invalid_connector_config", f'The connector setting "{name}" must be text.')
    if len(value) > max_length or "\x00" in value:
        raise InvalidRequest("invalid_connector_config", f'The connector setting "{name}" is not valid.')
    return value


def split_config(
    connector_type: str, config: Any, secret: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a connector configuration; return (public config, secret).

    Secret fields found in `config` (e.g. a `password` sent with the rest) are moved to the
    secret, so they are never stored in clear. Unknown fields are refused.
    """
    connector = get_connector(connector_type)
    if not isinstance(config, dict):
        raise InvalidRequest("invalid_connector_config", "config must be an object.")
    public: dict[str, Any] = {}
    secrets: dict[str, Any] = dict(secret or {})
    for key, value in config.items():
        if value is None:
            continue  # null = unset (lets an update drop "table" when switching to "query")
        if key in connector.secret_fields:
            secrets[key] = value
        elif key in connector.config_fields:
            public[key] = value
        else:
            raise InvalidRequest(
                "invalid_connector_config", f'Unknown setting "{key}" for the {connector.name} connector.'
            )
    for key in list(secrets):
        if key not in connector.secret_fields:
            raise InvalidRequest(
                "invalid_connector_config", f'Unknown secret "{key}" for the {connector.name} connector.'
            )
        if secrets[key] is not None and not isinstance(secrets[key], str):
            raise InvalidRequest("invalid_connector_config", f'The secret "{key}" must be text.')
    for name in connector.required:
        _text(public, name, required=True)
    table, query = _text(public, "table"), _text(public, "query", max_length=100_000)
    if bool(table) == bool(query):
        raise InvalidRequest("invalid_connector_config", 'Give exactly one of "table" or "query".')
    if table and not _IDENT.match(table):
        raise InvalidRequest("invalid_connector_config", 'The "table" setting is not a valid name.')
    if connector.id == "postgresql":
        for name in ("host", "database", "user", "schema"):
            _text(public, name, max_length=255)
        if public["host"].startswith(("/", "@")) or "," in public["host"]:
            # A local socket would log in as the server's own OS user; one host only.
            raise InvalidRequest("invalid_connector_config", 'The "host" must be one network host name or address.')
        if public.get("schema") and not _IDENT.match(public["schema"]):
            raise InvalidRequest("invalid_connector_config", 'The "schema" setting is not a valid name.')
        port = public.get("port", 5432)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidRequest("invalid_connector_config", 'The "port" setting must be a number from 1 to 65535.')
        public["port"] = port
        if public.get("sslmode") is not None and public["sslmode"] not in _SSL_MODES:
            raise InvalidRequest("invalid_connector_config", f'"sslmode" must be one of: {", ".join(_SSL_MODES)}.')
        timeout = public.get("connect_timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 60:
            raise InvalidRequest("invalid_connector_config", '"connect_timeout" must be 1 to 60 seconds.')
        public["connect_timeout"] = timeout
    return public, {k: v for k, v in secrets.items() if v is not None}


# ---------------------------------------------------------------------------------------
# Pulling
# ---------------------------------------------------------------------------------------

_sqlite_dirs: list[Path] = []  # nowhere, until configure()
_statement_timeout_seconds = DataSettings.connector_statement_timeout_seconds


def configure(
    *, sqlite_dirs: Sequence[str | os.PathLike[str]] | None = None, statement_timeout_seconds: int | None = None
) -> None:
    """This process's connector bounds, from Settings.data: the directories SQLite connector
    files may live in (TIDEGATE_SQLITE_CONNECTOR_DIRS; none: nowhere) and the wall-clock
    limit of one read (TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS). None leaves a value as is."""
    global _sqlite_dirs, _statement_timeout_seconds
    if sqlite_dirs is not None:
        _sqlite_dirs = [Path(d).resolve() for d in sqlite_dirs]
    if statement_timeout_seconds is not None:
        _statement_timeout_seconds = int(statement_timeout_seconds)


def _allowed_sqlite_dirs() -> list[Path]:
    return _sqlite_dirs


def _scrub(message: str, secret: dict[str, Any]) -> str:
    for value in secret.values():
        if isinstance(value, str) and value:
            message = message.replace(value, "***")
    return message.strip().splitlines()[0][:400] if message.strip() else "unknown error"


def pull(connector_type: str, config: dict[str, Any], secret: dict[str, Any] | None) -> pa.Table:
    """Read the configured table or query into a canonical Arrow table.

    Any failure (connection, permissions, bad query, unsupported data) is InvalidRequest
    `connector_error` (or `invalid_connector_config`) whose message holds no secret.
    """
    public, secrets = split_config(connector_type, config, secret)
    if connector_type == "postgresql":
        names, columns, declared = _pull_postgresql(public, secrets)
    else:
        names, columns, declared = _pull_sqlite(public)
    return _to_table(names, columns, declared)


def _to_table(names: list[str], columns: list[list[Any]], declared: list[str | None]) -> pa.Table:
    try:
        ingest.validate_column_names(names)
    except InvalidRequest as exc:
        raise InvalidRequest("connector_error", f"The pulled data cannot be a source: {exc.message}") from None
    arrays = []
    for name, values, kind in zip(names, columns, declared, strict=True):
        if kind is not None:
            try:
                arrays.append(ingest.convert_values(values, kind, name))
                continue
            except InvalidRequest:
                pass
        arrays.append(ingest.infer_values(values))
    return pa.Table.from_arrays(arrays, names=names) if names else pa.table({})


# PostgreSQL type names -> canonical types (others are inferred from the values).
_PG_TYPES = {
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "float4": "float",
    "float8": "float",
    "real": "float",
    "double precision": "float",
    "numeric": "float",
    "bool": "boolean",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
    "text": "string",
    "varchar": "string",
    "bpchar": "string",
    "name": "string",
    "uuid": "string",
    "json": "string",
    "jsonb": "string",
}


def canonical_pg_type(name: str) -> str | None:
    """The canonical type of a PostgreSQL type name (None: inferred from the values)."""
    return _PG_TYPES.get(name)


def statement_timeout_seconds() -> int:
    """The wall-clock limit of one connector read (see configure)."""
    return _statement_timeout_seconds


def _pull_postgresql(
    config: dict[str, Any], secret: dict[str, Any]
) -> tuple[list[str], list[list[Any]], list[str | None]]:
    import psycopg
    from psycopg import sql as pgsql

    where = f"{config['host']}:{config['port']}/{config['database']}"
    destination = egress.check_destination(config["host"], config["port"])
    timeout = statement_timeout_seconds()
    params = {
        # hostaddr: connect to the address the egress policy checked, never to a second
        # DNS answer; host stays the name (TLS verification, messages).
        "host": config["host"],
        "hostaddr": destination.address,
        "port": config["port"],
        "dbname": config["database"],
        "user": config["user"],
        "connect_timeout": config["connect_timeout"],
        "application_name": "tidegate-connector",
        # No fallback to the server's own credentials or environment.
        "passfile": os.devnull,
        "sslmode": config.get("sslmode") or "prefer",
        "options": f"-c default_transaction_read_only=on -c statement_timeout={timeout * 1000}",
    }
    if secret.get("password"):
        params["password"] = secret["password"]
    try:
        connection = psycopg.connect(**params)
    except psycopg.Error:
        raise egress.unreachable(config["host"], config["port"]) from None
    # statement_timeout bounds each statement on the server; this bounds the whole read
    # (every FETCH), even if the query changed its own settings.
    watchdog = threading.Timer(timeout, connection.cancel_safe)
    watchdog.daemon = True
    watchdog.start()
    try:
        with connection.transaction():
            connection.execute("SET TRANSACTION READ ONLY")
            if config.get("table"):
                target = (
                    pgsql.Identifier(config["schema"], config["table"])
                    if config.get("schema")
                    else pgsql.Identifier(config["table"])
                )
                statement: pgsql.Composed | pgsql.SQL = pgsql.SQL("SELECT * FROM {}").format(target)
            else:
                statement = pgsql.SQL(config["query"])  # the owner's own query, read-only
            with connection.cursor(name="tidegate_pull") as cursor:
                cursor.itersize = FETCH_BATCH
                cursor.execute(statement)
                names = [d.name for d in cursor.description or []]
                declared = []
                for d in cursor.description or []:
                    info = connection.adapters.types.get(d.type_code)
                    declared.append(_PG_TYPES.get(info.name if info else ""))
                columns = _fetch_columns(cursor, len(names))
    except psycopg.errors.QueryCanceled:
        raise InvalidRequest(
            "connector_timeout", f"The read from PostgreSQL at {where} took longer than {timeout} seconds."
        ) from None
    except psycopg.Error as exc:
        raise InvalidRequest(
            "connector_error", f"PostgreSQL at {where} refused the read: {_scrub(str(exc), secret)}"
        ) from None
    finally:
        watchdog.cancel()
        connection.close()
    return names, columns, declared


_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
if hasattr(sqlite3, "SQLITE_RECURSIVE"):
    _SQLITE_READ_ACTIONS.add(sqlite3.SQLITE_RECURSIVE)
_SQLITE_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "fts3_tokenizer", "edit"}


def _sqlite_path(raw: str) -> Path:
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidRequest("invalid_connector_config", 'The SQLite "path" must be absolute.')
    resolved = path.resolve()
    allowed = _allowed_sqlite_dirs()
    if not any(resolved == d or d in resolved.parents for d in allowed):
        raise InvalidRequest(
            "connector_error", "This SQLite file is not in a directory the server allows connectors to read."
        )
    if _is_own_file(resolved):  # before the existence check: nothing told about the server's files
        raise InvalidRequest("connector_error", "The server's own files cannot be read by a connector.")
    if not resolved.is_file():
        raise InvalidRequest("connector_error", "The SQLite file does not exist.")
    return resolved


def _is_own_file(resolved: Path) -> bool:
    """Inside the tidegate home, or the metadata database file itself (by path or, for a
    hard link elsewhere, by inode): a connector on it would read every tenant."""
    try:
        from sqlalchemy.engine import make_url

        from tidegate.config import get_settings

        settings = get_settings()
    except Exception:  # noqa: BLE001 - no settings in this process: nothing more to protect
        return False
    home = settings.home.resolve()
    if resolved == home or home in resolved.parents:
        return True
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return False
    database = Path(url.database).resolve()
    if resolved == database or (
        resolved.parent == database.parent and resolved.name.startswith(database.name + "-")
    ):  # -wal, -shm, -journal
        return True
    try:
        return os.path.samefile(resolved, database)
    except OSError:
        return False


def _pull_sqlite(config: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[str | None]]:
    path = _sqlite_path(config["path"])
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise InvalidRequest("connector_error", f"Could not open the SQLite file: {exc}") from None
    deadline = time.monotonic() + statement_timeout_seconds()

    def authorizer(action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None) -> int:
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQLITE_DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY

    try:
        connection.set_authorizer(authorizer)
        connection.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        if config.get("table"):
            statement = 'SELECT * FROM "' + config["table"].replace('"', '""') + '"'
        else:
            statement = config["query"]
        cursor = connection.execute(statement)
        names = [d[0] for d in cursor.description or []]
        columns = _fetch_columns(cursor, len(names))
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise InvalidRequest("connector_error", f"SQLite refused the read: {str(exc)[:300]}") from None
    finally:
        connection.close()
    return names, columns, [None] * len(names)


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


def configure_source(
    source: Source,
    connector_type: str,
    config: dict[str, Any],
    session_key: bytes,
    secret: dict[str, Any] | None = None,
) -> None:
    """Validate and store a connector setup on a Source (secret encrypted; caller commits).

    A config update without a password keeps the stored one.
    """
    public, secrets = split_config(connector_type, config, secret)
    if not secrets and source.connector_secret_encrypted and source.service == connector_type:
        secrets = decrypt_secret(source.connector_secret_encrypted, session_key)
    source.service = connector_type
    source.connector_id = connector_type
    source.connector_config = public
    source.connector_secret_encrypted = encrypt_secret(secrets, session_key) if secrets else None


def pull_source(source: Source, session_key: bytes) -> pa.Table:
    """Pull a connector source's data with its stored configuration."""
    if source.service not in CONNECTORS:
        raise InvalidRequest("not_a_connector_source", "This source is not fed by a connector.")
    secret = decrypt_secret(source.connector_secret_encrypted, session_key)
    return pull(source.service, source.connector_config or {}, secret)


class _Rows(Protocol):
    """A DB-API cursor (psycopg's or sqlite3's), as far as reading its rows goes."""

    def fetchmany(self, size: int, /) -> Sequence[Sequence[Any]]: ...


def _fetch_columns(cursor: _Rows, width: int) -> list[list[Any]]:
    """Every remaining row of a DB-API cursor, by column, fetched FETCH_BATCH at a time."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    while rows := cursor.fetchmany(FETCH_BATCH):
        for row in rows:
            for i, value in enumerate(row):
                columns[i].append(value)
    return columns
