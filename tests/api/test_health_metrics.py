"""/healthz, /readyz and /metrics in one process (the multi-worker and multi-node cases:
tests/scale/test_two_nodes.py).

/metrics is a door into the server's behaviour: these try to read it without its token, and
look for any id, path or secret in what it says."""

from __future__ import annotations

import re
import secrets
import shutil

import pytest
from fastapi.testclient import TestClient
from server import free_port

from tidegate.api.app import create_app
from tidegate.config import Settings, load_settings

TOKEN = "metrics-test-token-6f1c0e9a2b7d4c38"  # fixed: test ids (xdist) are made from it


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory, sqlite_url) -> Settings:
    home = tmp_path_factory.mktemp("metrics-home")
    for sub in ("data", "audit"):
        (home / sub).mkdir(mode=0o700)
    return Settings(
        home=home,
        database_url=sqlite_url,
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=(),
        metrics_token=TOKEN,
    )


@pytest.fixture(scope="module")
def served(module_settings):
    with TestClient(create_app(module_settings), client=("127.0.0.1", 50000)) as client:
        yield client


@pytest.fixture
def settings(module_settings):  # make_org (tests/conftest.py) builds organizations in this database
    return module_settings


def scrape(client) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series (0 when absent), labels matched exactly."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', series.partition("{")[2]))
        if series.split("{")[0] == name and found == labels:
            return float(value)
    return 0.0


# -- /metrics: who may read it --------------------------------------------------------------


def test_metrics_are_off_unless_a_token_is_set(module_settings):
    off = Settings(**{**module_settings.__dict__, "metrics_token": None})
    client = TestClient(create_app(off))
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer "}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "metrics_disabled"
        assert "tidegate_" not in response.text


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
        "Bearer " + "x" * len(TOKEN),
    ],
)
def test_metrics_cannot_be_read_without_the_token(served, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = served.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_metrics_token"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "tidegate_" not in response.text


def test_metrics_from_loopback_still_need_the_token(module_settings):
    # Behind a reverse proxy on the same host, every client arrives from loopback.
    with TestClient(create_app(module_settings), client=("127.0.0.1", 1)) as local:
        assert local.get("/metrics").status_code == 401


@pytest.mark.parametrize("token", ["short", "x" * 15, " " * 3 + "y" * 10])
def test_a_guessable_metrics_token_stops_the_start(tmp_path, token):
    with pytest.raises(SystemExit, match="TIDEGATE_METRICS_TOKEN"):
        load_settings({"TIDEGATE_HOME": str(tmp_path), "TIDEGATE_METRICS_TOKEN": token})
    assert load_settings({"TIDEGATE_HOME": str(tmp_path), "TIDEGATE_METRICS_TOKEN": ""}).metrics_token is None


# -- /metrics: what it says -----------------------------------------------------------------


def test_requests_are_counted_by_route_template_never_by_id(served, make_org):
    org = make_org()
    keys = served.get("/api/v1/keys", headers=org.headers()).json()["data"]
    key_id = keys[0]["id"]
    before = scrape(served)
    route = "/api/v1/keys/{key_id}"
    assert served.get(f"/api/v1/keys/{key_id}", headers=org.headers()).status_code == 200
    assert served.get("/api/v1/keys/key_doesnotexist", headers=org.headers()).status_code == 404
    assert served.get(f"/nowhere/{org.id}/{key_id}").status_code == 404
    assert served.delete("/healthz").status_code == 405
    after = scrape(served)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("tidegate_http_requests_total", route=route, method="GET", status="2xx") == 1
    assert delta("tidegate_http_requests_total", route=route, method="GET", status="4xx") == 1
    assert delta("tidegate_http_requests_total", route="unmatched", method="GET", status="4xx") == 1
    assert delta("tidegate_http_requests_total", route="/healthz", method="DELETE", status="4xx") == 1
    assert delta("tidegate_http_request_duration_seconds_count", route=route) == 2
    assert delta("tidegate_http_request_duration_seconds_bucket", route=route, le="+Inf") == 2
    assert delta("tidegate_key_checks_total", credential="api_key", outcome="ok", reason="") == 2
    # No id, path or secret in any label, whatever was asked.
    for secret in (org.id, key_id, org.admin_id, org.admin_key, "key_doesnotexist", "/nowhere"):
        assert secret not in after


def test_refused_key_checks_are_counted_by_reason(served, make_org):
    org = make_org()
    before = scrape(served)
    assert served.get("/api/v1/keys").status_code == 401  # no credential
    assert served.get("/api/v1/keys", headers=org.headers("qk_not_a_key")).status_code == 401
    forged = {"Authorization": f"Bearer {org.admin_key}", "X-Tenant-ID": "org_someoneelse"}
    assert served.get("/api/v1/keys", headers=forged).status_code == 401
    after = scrape(served)
    for reason, count in (("missing_credentials", 1), ("invalid_api_key", 2)):
        labels = {"credential": "api_key", "outcome": "refused", "reason": reason}
        assert (
            sample(after, "tidegate_key_checks_total", **labels) - sample(before, "tidegate_key_checks_total", **labels)
            == count
        ), reason
    assert "org_someoneelse" not in after and org.admin_key not in after


def test_cache_lookups_count_hits_and_misses(served, make_org):
    org = make_org()
    source = served.post(
        "/api/v1/sources", headers=org.headers(), json={"name": "metered", "rows": [{"a": 1}, {"a": 2}]}
    ).json()
    before = scrape(served)
    for _ in range(3):
        assert served.get(f"/api/v1/sources/{source['id']}/data", headers=org.headers()).status_code == 200
    after = scrape(served)

    def delta(cache, result):
        labels = {"cache": cache, "result": result}
        return sample(after, "tidegate_cache_lookups_total", **labels) - sample(
            before, "tidegate_cache_lookups_total", **labels
        )

    assert delta("pages", "hit") == 2 and delta("pages", "miss") >= 1  # the first read renders it
    assert delta("source_access", "hit") == 2 and delta("source_access", "miss") == 1
    assert delta("keys", "hit") + delta("keys", "miss") == 3  # SQLite: hits once read
    assert delta("keys", "hit") >= 2
    assert source["id"] not in after


def test_audit_backlog_and_query_pool_are_reported(served):
    text = scrape(served)
    for name in (
        "tidegate_audit_backlog_events",
        "tidegate_audit_backlog_oldest_age_seconds",
        "tidegate_audit_set_aside_events",
        "tidegate_query_pool_admitted",
        "tidegate_query_pool_capacity",
    ):
        assert re.search(rf"^{name} \d", text, re.M), name
    assert sample(text, "tidegate_query_pool_capacity") >= 1


# -- /healthz and /readyz -------------------------------------------------------------------


def test_healthz_checks_nothing_but_the_process(module_settings):
    down = Settings(**{**module_settings.__dict__, "database_url": f"postgresql+psycopg://x@127.0.0.1:{free_port()}/x"})
    response = TestClient(create_app(down)).get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_when_every_dependency_answers(served):
    response = served.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok", "audit": "ok"}}


def test_readyz_names_an_unreachable_database_without_its_url(module_settings):
    # A closed loopback port: refused at once, as a stopped server would.
    port = free_port()
    url = f"postgresql+psycopg://tidegate:pw-{secrets.token_hex(8)}@127.0.0.1:{port}/tidegate"
    down = Settings(**{**module_settings.__dict__, "database_url": url})
    response = TestClient(create_app(down)).get("/readyz")  # (no lifespan: nothing else starts)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["error"]["code"] == "database_unavailable"
    assert body["error"]["unavailable"] == ["database"]
    assert body["checks"] == {"database": "unavailable", "storage": "ok", "audit": "ok"}
    for secret in (url, "pw-", str(port), "127.0.0.1", "tidegate:"):
        assert secret not in response.text


def test_readyz_names_unreachable_redis_without_its_url(module_settings):
    port = free_port()
    redis_url = f"redis://:hunter-{secrets.token_hex(6)}@127.0.0.1:{port}/15"
    down = Settings(**{**module_settings.__dict__, "redis_url": redis_url})
    response = TestClient(create_app(down)).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "rate_limiter_unavailable"
    assert body["error"]["unavailable"] == ["redis"]
    assert body["checks"] == {"database": "ok", "redis": "unavailable", "storage": "ok", "audit": "ok"}
    for secret in (redis_url, "hunter-", str(port)):
        assert secret not in response.text


def test_readyz_names_every_failed_dependency(module_settings, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    broken = Settings(
        **{
            **module_settings.__dict__,
            "home": home,
            "database_url": f"postgresql+psycopg://x@127.0.0.1:{free_port()}/x",
        }
    )
    app = create_app(broken)
    for gone in (broken.data_dir, broken.audit_dir):  # (the journal made its directory)
        shutil.rmtree(gone, ignore_errors=True)
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "database_unavailable"  # the first, in a fixed order
    assert body["error"]["unavailable"] == ["database", "storage", "audit"]
    assert "the database, the data directory, the audit journal" in body["error"]["message"]
