"""Schema-driven robustness: every operation of the OpenAPI schema the app serves, fuzzed.

schemathesis generates requests (valid and invalid, from the schema's own types and limits)
for each operation of /api/openapi.json; each is sent, authenticated with an admin Full
Access key, to the real app on a real SQLite database. Whatever was sent:

- the answer is never a 5xx;
- a 4xx body is exactly the error envelope `{"error": {type, code, message}}`, its type the
  one of its status (never "api_error", the server-fault type);
- every response carries X-Request-ID;
- the body conforms to the response schema declared for its status, in the declared content type.

Each operation gets a fresh organization holding one object of every kind (a member with
an external id, a second key, a policy, a group, a source with rows, a file). Generated path
parameters and id fields in bodies are, in about two examples of three, swapped for those
real ids, so the requests reach the code behind the 404s too.

Bounded for CI: at most MAX_EXAMPLES generated examples per operation (plus schemathesis's
deterministic coverage cases), derandomized, no example database. No operation is excluded.
"""

from __future__ import annotations

import csv
import io
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import content_type_conformance, response_schema_conformance

from tidegate.api.app import create_app
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.data import storage
from tidegate.db.engine import migrate, session_scope
from tidegate.orgs import service as orgs

MAX_EXAMPLES = 20
SCHEMA_PATH = "/api/openapi.json"
ROWS = [
    {"region": "US", "tier": "gold", "amount": 10},
    {"region": "EU", "tier": "silver", "amount": 20},
    {"region": "APAC", "tier": "gold", "amount": 30},
]


def _settings(home: Path, database_url: str) -> Settings:
    return Settings(
        home=home,
        database_url=database_url,
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=(),
    )


def _served_schema() -> dict[str, Any]:
    """The schema the app serves at SCHEMA_PATH, read at import time (test collection needs
    it). create_app touches no database; it does point the data layer's process-wide
    directory at its settings, so that is put back."""
    saved = storage._data_dir
    with tempfile.TemporaryDirectory() as home:
        try:
            app = create_app(_settings(Path(home), f"sqlite:///{home}/unused.db"))
            response = TestClient(app).get(SCHEMA_PATH)  # no lifespan: nothing but the schema is needed
        finally:
            storage._data_dir = saved
    assert response.status_code == 200, response.text
    return response.json()


RAW_SCHEMA = _served_schema()
schema = schemathesis.openapi.from_dict(
    RAW_SCHEMA,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20240611,  # each operation derives its own seed from this: same cases on every run
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
            "output": {"sanitization": {"enabled": False}},  # failure reports show what was really sent
        }
    ),
)


# -- the app under test --------------------------------------------------------------------


class _AsServed:
    """The app as schemathesis's ASGI transport reaches it: HTTP from a real-looking client
    address; lifespan refused (the TestClient in `app_client` runs the app's lifespan, once)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan is run by the TestClient")  # = "no lifespan support"
        if scope["type"] == "http":
            scope = {**scope, "client": ("127.0.0.1", 50000)}
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    home = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{home / 'tidegate.db'}"
    migrate(url)
    app = create_app(_settings(home, url))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        yield _AsServed(app), client


@dataclass
class World:
    app: Any
    headers: dict[str, str]
    ids: dict[str, list[str]]  # path-parameter / body-field name -> real ids of this org


# Read by the hooks below while the current operation's examples are drawn.
CURRENT: dict[str, World] = {}


@pytest.fixture
def world(app_client) -> World:
    """A fresh organization (so no operation sees what another one did) with one object of
    every kind, made through the API as a client would."""
    proxy, client = app_client
    settings_ = client.app.state.settings
    with session_scope(settings_.database_url) as session:
        created = orgs.create_organization(
            session, f"org-{uuid.uuid4().hex[:12]}", f"admin-{uuid.uuid4().hex[:6]}@example.com", None
        )
        principal = Principal.for_user(created.org.id, created.admin.id, created.admin.role)
        secret = keys_service.create_key(
            session,
            principal,
            # The highest rate limit: a run must exercise the operation, not the limiter.
            keys_service.KeyRequest(
                name="admin key",
                scopes=preset_scopes("full_access", "admin"),
                rate_limit_per_minute=keys_service.MAX_RATE_LIMIT,
            ),
            pepper=settings_.pepper,
        ).secret
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-ID": created.org.id}

    def ok(response, status=(200, 201)):
        assert response.status_code in status, response.text
        return response.json()

    member = ok(
        client.post("/api/v1/users", json={"email": "member@example.com", "external_id": "ext-member"}, headers=headers)
    )["id"]
    key = ok(client.post("/api/v1/keys", json={"name": "second", "scopes": ["data:read"]}, headers=headers))["id"]
    source = ok(client.post("/api/v1/sources", json={"name": "sales", "rows": ROWS}, headers=headers))["id"]
    ok(client.post(f"/api/v1/sources/{source}/shares", json={"user_id": member}, headers=headers))
    policy = ok(
        client.post(
            "/api/v1/access/policies",
            json={"name": "us", "row_filters": [{"column": "region", "values": ["US"]}]},
            headers=headers,
        )
    )["id"]
    ok(client.post(f"/api/v1/access/policies/{policy}/users", json={"user_ids": [member]}, headers=headers))
    group = ok(client.post("/api/v1/access/groups", json={"name": "team"}, headers=headers))["id"]
    dashboard = ok(client.post("/api/v1/dashboards", json={"name": "board"}, headers=headers))["id"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROWS[0]))
    writer.writeheader()
    writer.writerows(ROWS)
    file = ok(
        client.post(
            "/api/v1/files/upload",
            files={"file": ("sales.csv", buffer.getvalue().encode(), "text/csv")},
            headers=headers,
        )
    )["id"]
    project = ok(client.post("/api/v1/projects", json={"name": "p", "user_id": member}, headers=headers))["id"]
    attached = ok(
        client.post(f"/api/v1/projects/{project}/sources", json={"source_id": source, "run": False}, headers=headers)
    )
    # Never the admin or the admin's key: deleting those would make the rest of the
    # examples plain 401s.
    ids = {
        "user_id": [member],
        "external_id": ["ext-member"],
        "key_id": [key],
        "source_id": [source],
        "policy_id": [policy],
        "group_id": [group],
        "file_id": [file],
        "dashboard_id": [dashboard],
        "column": ["region", "amount"],
        "user_ids": [[member]],
        "policy_ids": [[policy]],
        "project_id": [project],
        "step_id": [attached["step_id"]],
        "project_source_id": [attached["project_source_id"]],
    }
    CURRENT["world"] = World(proxy, headers, ids)
    yield CURRENT["world"]
    CURRENT.pop("world", None)


# -- steering generated values toward real objects -----------------------------------------


def _with_real_ids(values: Any, choice: int) -> Any:
    """`values` with every known id field replaced by a real id (choice picks which), or as
    generated when choice is 0."""
    world = CURRENT.get("world")
    if choice == 0 or world is None or not isinstance(values, dict):
        return values
    return {
        name: (world.ids[name][choice % len(world.ids[name])] if name in world.ids else value)
        for name, value in values.items()
    }


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    return st.integers(0, 2).map(lambda choice: _with_real_ids(path_parameters, choice))


@schema.hook
def flatmap_body(context, body):
    return st.integers(0, 2).map(lambda choice: _with_real_ids(body, choice))


# -- the test ------------------------------------------------------------------------------


# The error type each 4xx status carries ("api_error" is the server's own fault: never a 4xx).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    429: "rate_limit_error",
    501: "not_implemented_error",
}


def check_response(case, response) -> None:
    curl = case.as_curl_command(headers=CURRENT["world"].headers)
    where = f"{case.operation.label}\n{curl}\n-> {response.status_code} {response.text_lossy()[:2000]}"  # a body may be Parquet
    if response.status_code == 501:  # only the AI features tidegate does not have, documented as such
        assert "not implemented" in case.operation.definition.raw.get("tags", []), f"unexpected 501\n{where}"
        assert response.json()["error"]["code"] == "not_implemented", where
    else:
        assert response.status_code < 500, f"server error\n{where}"
    assert response.headers.get("x-request-id"), f"no X-Request-ID\n{where}"
    if 400 <= response.status_code < 500 or response.status_code == 501:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, f"not the error envelope\n{where}"
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"type", "code", "message"}, f"bad envelope\n{where}"
        assert all(isinstance(error[k], str) and error[k] for k in ("type", "code", "message")), where
        assert error["type"] == ERROR_TYPES.get(response.status_code), f"wrong error type for the status\n{where}"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # `world` is made once per operation on purpose: its examples share one organization.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_operation_is_robust(case, world):
    response = case.call(headers=world.headers, app=world.app)
    check_response(case, response)
    # And the body is what the schema declares for its status (the wire models of tidegate.wire).
    case.validate_response(response, checks=[response_schema_conformance, content_type_conformance])


def test_the_schema_covers_the_api(app_client):
    """What is fuzzed above is what the app serves, and it is the whole /api/v1 (and the
    public API routes beside it): every route of every API router is documented, and
    schemathesis made a test of every operation."""
    from tidegate.api.app import API_MODULES, PUBLIC_ROUTERS

    _, client = app_client
    assert client.get(SCHEMA_PATH).json() == RAW_SCHEMA
    routes = {
        (method, "/api/v1" + route.path_format)  # (the schema's form of `{rest:path}`)
        for module in API_MODULES
        for route in module.router.routes
        for method in route.methods
    } | {(method, route.path) for router in PUBLIC_ROUTERS for route in router.routes for method in route.methods}
    documented = {(method.upper(), path) for path, ops in RAW_SCHEMA["paths"].items() for method in ops}
    assert routes == documented
    operations = [result.ok() for result in schema.get_all_operations()]  # .ok() raises on a schema error
    assert {(op.method.upper(), op.path) for op in operations} == documented
