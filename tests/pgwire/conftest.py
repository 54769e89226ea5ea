"""A world for the PostgreSQL endpoint: an organization with users, keys, sources and
policies made through the services, and the endpoint serving it on a free loopback port
(`serving`, in a thread of the test process; TLS on, with a certificate generated into the
test's home)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import tidegate.tables  # noqa: F401  (registers every table)
from tidegate.access import policies
from tidegate.catalog.models import Source
from tidegate.config import PgSettings, Settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.credentials.models import ApiKey
from tidegate.data import engine as data_engine
from tidegate.data import service as data_service
from tidegate.data import storage
from tidegate.db.engine import session_scope
from tidegate.orgs import service as orgs
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.pgwire import runner

SALES = [
    {"region": "US", "product": "a", "amount": 10},
    {"region": "US", "product": "b", "amount": 20},
    {"region": "EU", "product": "a", "amount": 5},
    {"region": "EU", "product": "c", "amount": 7},
    {"region": "APAC", "product": "b", "amount": 1},
]
PRODUCTS = [
    {"product": "a", "label": "Apples"},
    {"product": "b", "label": "Bananas"},
    {"product": "c", "label": "Cherries"},
]


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url  # (test_governance.py runs on PostgreSQL too)


@pytest.fixture(autouse=True)
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir(exist_ok=True)
    data_engine.configure(data_dir=path)
    yield path
    data_engine.clear_cache()
    storage.configure(None)


@dataclass
class World:
    settings: Settings
    org_id: str
    org_name: str
    admin_id: str
    port: int = 0
    keys: dict[str, str] = field(default_factory=dict)

    def tx(self):
        return session_scope(self.settings.database_url)

    @property
    def admin(self) -> Principal:
        return Principal.for_user(self.org_id, self.admin_id, "admin")

    def user(self, role: str = "member") -> str:
        with self.tx() as s:
            return orgs.create_user(s, None, self.org_id, email=f"u-{uuid.uuid4().hex[:8]}@example.com", role=role).id

    def source(self, rows: list[dict[str, Any]], name: str, shared_with=()) -> str:
        with self.tx() as s:
            source = data_service.create_source(s, self.admin, self.settings, name=name, rows=list(rows))
            for user_id in shared_with:
                data_service.share_source(s, self.admin, source.id, user_id, "view")
            return source.id

    def big_source(self, rows: int, name: str = "big") -> str:
        """`rows` rows {n, label}, written as one Arrow table (a million in about a second)."""
        source_id = self.source([{"n": 0, "label": "row 0"}], name)
        numbers = pa.array(range(rows), pa.int64())
        labels = pc.binary_join_element_wise("row ", pc.cast(numbers, pa.string()), "")
        with self.tx() as s:
            storage.write_new_version(
                s, s.get(Source, source_id), pa.table({"n": numbers, "label": labels}), append=False
            )
            bump_access_epoch(s, self.org_id)
        return source_id

    def key(self, user_id: str | None = None, scopes: list[str] | None = None, **options) -> str:
        user_id = user_id or self.admin_id
        with self.tx() as s:
            user = orgs.get_user(s, self.org_id, user_id)
            creator = Principal.for_user(self.org_id, user.id, user.role)
            created = keys_service.create_key(
                s,
                creator,
                keys_service.KeyRequest(
                    name=f"k-{uuid.uuid4().hex[:6]}",
                    scopes=scopes or preset_scopes("full_access", user.role),
                    **options,
                ),
                pepper=self.settings.pepper,
            )
            self.keys[created.secret] = created.key.id
            return created.secret

    def set_role(self, user_id: str, role: str) -> None:
        with self.tx() as s:
            orgs.update_user(s, self.admin, orgs.get_user(s, self.org_id, user_id), role=role)

    def deactivate(self, user_id: str) -> None:
        with self.tx() as s:
            orgs.deactivate_user(s, self.admin, orgs.get_user(s, self.org_id, user_id))

    def revoke(self, secret: str) -> None:
        with self.tx() as s:
            keys_service.revoke_key(s, self.admin, s.get(ApiKey, self.keys[secret]))

    def policy(self, column: str, values: list[str], users=()) -> str:
        with self.tx() as s:
            p = policies.create_policy(
                s,
                self.admin,
                self.org_id,
                name=f"p-{uuid.uuid4().hex[:8]}",
                row_filters=[{"column": column, "values": values}],
            )
            if users:
                policies.assign_users(s, self.admin, p, list(users))
            return p.id

    def edit_policy(self, policy_id: str, column: str, values: list[str]) -> None:
        with self.tx() as s:
            p = policies.get_policy(s, self.org_id, policy_id)
            policies.update_policy(s, self.admin, p, row_filters=[{"column": column, "values": values}])

    def dsn(self, secret: str, *, database: str | None = None, sslmode: str = "require", **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": "bi",
            "password": secret,
            "dbname": database or self.org_id,
            "sslmode": sslmode,
            **extra,
        }
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connect(self, secret: str, **options: Any) -> psycopg.Connection:
        autocommit = options.pop("autocommit", True)
        return psycopg.connect(self.dsn(secret, **options), autocommit=autocommit, connect_timeout=10)


def make_world(settings: Settings, name: str | None = None) -> World:
    name = name or f"org-{uuid.uuid4().hex[:10]}"
    with session_scope(settings.database_url) as s:
        created = orgs.create_organization(s, name, f"admin-{uuid.uuid4().hex[:6]}@example.com", None)
        return World(settings, created.org.id, name, created.admin.id)


@pytest.fixture
def pg_settings(settings: Settings) -> Settings:
    return replace(
        settings,
        pg=PgSettings(max_connections_per_key=3, auth_attempts_per_minute=1000),
        query_limits=replace(settings.query_limits, timeout_seconds=20.0, workers=2),
    )


@pytest.fixture
def endpoint(pg_settings: Settings):
    with runner.serving(pg_settings) as server:
        yield server


@pytest.fixture
def world(pg_settings: Settings, endpoint) -> World:
    w = make_world(pg_settings)
    w.port = endpoint.port
    return w


def startup_error(port: int, password: str | bytes, database: str, *, tls_on: bool = True) -> dict[str, str]:
    """The fields of the ErrorResponse a raw protocol v3 start-up gets (libpq does not
    report the SQLSTATE of a failed connection): {"S": severity, "C": code, "M": message}."""
    import socket
    import ssl
    import struct

    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if tls_on:
            sock.sendall(struct.pack("!II", 8, 80877103))
            assert sock.recv(1) == b"S"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        params = b"user\x00bi\x00database\x00" + database.encode() + b"\x00\x00"
        sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        reader = sock.makefile("rb")
        while True:
            kind = reader.read(1)
            (length,) = struct.unpack("!I", reader.read(4))
            body = reader.read(length - 4)
            if kind == b"R" and body[:4] == struct.pack("!I", 3):
                secret = (password.encode() if isinstance(password, str) else password) + b"\x00"
                sock.sendall(b"p" + struct.pack("!I", 4 + len(secret)) + secret)
            elif kind == b"E":
                return {f[:1]: f[1:] for f in body.decode().split("\x00") if f}
            elif kind == b"Z":
                return {}
    finally:
        sock.close()
