"""Shared fixtures.

The API suite runs against SQLite and against PostgreSQL. PostgreSQL comes from
TIDEGATE_TEST_DATABASE_URL (CI sets it; default: this machine's server). On a machine
without PostgreSQL that half is skipped with a visible reason, except under CI=true,
where it fails instead: CI must exercise it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from tidegate.api.app import create_app
from tidegate.config import Settings, normalize_database_url
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.db.engine import get_engine, migrate, session_scope
from tidegate.orgs import service as orgs

PG_URL = os.environ.get("TIDEGATE_TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI") == "true"


FILE_COSTS = Path(__file__).with_name("file_costs.txt")

# Tests send traffic to loopback only. Addresses such as 10.0.0.1 or 203.0.113.7 appear in tests
# as data (X-Forwarded-For headers, allowlists, refused webhook URLs): no socket of this process
# may ever connect to one. A connection attempted to any other address is refused before a
# packet leaves, and fails the test that made it (even if the code under test swallowed the error).
_refused_connections: list[str] = []
_socket_connect = socket.socket.connect
_socket_connect_ex = socket.socket.connect_ex


def _check_loopback(sock: socket.socket, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix sockets and socket pairs
    host = address[0]
    try:
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:  # a name: resolved by the caller to one of the addresses checked here
        loopback = host == "localhost"
    if not loopback:
        _refused_connections.append(str(host))
        raise PermissionError(f"tests connect to loopback only, not {host}")


def _loopback_connect(sock, address):
    _check_loopback(sock, address)
    return _socket_connect(sock, address)


def _loopback_connect_ex(sock, address):
    _check_loopback(sock, address)
    return _socket_connect_ex(sock, address)


socket.socket.connect = _loopback_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _loopback_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_connection_beyond_loopback():
    seen = len(_refused_connections)
    yield
    attempted = _refused_connections[seen:]
    assert not attempted, f"the test tried to connect beyond loopback: {attempted}"


def pytest_collection_modifyitems(config, items):
    """Slowest files first (tests/file_costs.txt): with whole files handed to workers in
    this order (Makefile: --dist loadfile --no-loadscope-reorder), the long ones overlap
    instead of one starting last and running alone at the end. The order is the same in
    every worker, as xdist requires."""
    rank: dict[str, int] = {}
    for line in FILE_COSTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rank.setdefault(line.split()[1], len(rank))
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def _unavailable(what: str, exc: Exception):
    message = f"{what} unavailable ({exc.__class__.__name__}: {exc}); its tests are SKIPPED"
    if IN_CI:
        pytest.fail(f"{message} -- but CI=true requires them", pytrace=False)
    print(f"\n*** {message} ***")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgresql_url():
    """A throwaway database on the PostgreSQL server, migrated, dropped afterwards."""
    name = f"tidegate_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", exc)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    url = normalize_database_url(f"{base}/{name}")
    migrate(url)
    yield url
    get_engine(url).dispose()
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tidegate.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        home=tmp_path,
        database_url=database_url,
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=(),
    )


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@dataclass
class Org:
    """An organization made for one test, with its admin and an admin Full Access key."""

    id: str
    name: str
    admin_id: str
    admin_key: str
    settings: Settings

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}", "X-Tenant-ID": self.id}

    def add_user(self, email: str, role: str = "member") -> str:
        with session_scope(self.settings.database_url) as session:
            return orgs.create_user(session, None, self.id, email=email, role=role).id

    def key_for(self, user_id: str, scopes: list[str] | None = None, **options) -> str:
        """A key created directly through the service, as that user."""
        with session_scope(self.settings.database_url) as session:
            user = orgs.get_user(session, self.id, user_id)
            principal = Principal.for_user(self.id, user.id, user.role)
            created = keys_service.create_key(
                session,
                principal,
                keys_service.KeyRequest(
                    name=options.pop("name", "test key"),
                    scopes=scopes or preset_scopes("full_access", user.role),
                    **options,
                ),
                pepper=self.settings.pepper,
            )
            return created.secret


def new_org(settings: Settings, name: str | None = None) -> Org:
    """An organization of its own, with its admin and an admin Full Access key."""
    name = name or f"org-{uuid.uuid4().hex[:12]}"
    with session_scope(settings.database_url) as session:
        created = orgs.create_organization(session, name, f"admin-{uuid.uuid4().hex[:6]}@example.com", None)
        principal = Principal.for_user(created.org.id, created.admin.id, created.admin.role)
        key = keys_service.create_key(
            session,
            principal,
            keys_service.KeyRequest(name="admin key", scopes=preset_scopes("full_access", "admin")),
            pepper=settings.pepper,
        )
        return Org(created.org.id, name, created.admin.id, key.secret, settings)


@pytest.fixture
def make_org(settings):
    def make(name: str | None = None) -> Org:
        return new_org(settings, name)

    return make


@pytest.fixture
def org(make_org) -> Org:
    return make_org()
