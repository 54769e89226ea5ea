"""Two `tidegate serve` nodes behind HAProxy (deploy/haproxy.cfg, as compose.yaml runs it),
on one PostgreSQL database and one Redis: what holds on one node holds across them.

Each node has its own TIDEGATE_HOME and port; node1 runs two worker processes (its /metrics
must add both up). They share the pepper (as every node of a deployment must) and one bucket
of an S3-compatible store (moto on loopback, tests/s3.py; MinIO in compose.yaml), each
reaching it through its own proxy (a test cuts one) and reading it through its own part
cache, so that rows written through one node are read through the other.

Background jobs: data garbage collection runs every 2 s here (TIDEGATE_GC_INTERVAL_SECONDS),
raced for by the three worker processes of the two nodes; each round is run by one of them.

Every change is made through the balancer or by another process, and checked by the very
next request on *each* node, sent to that node directly (no hoping roundrobin picked it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from s3 import MotoS3, StoreProxy, running_moto, s3_env
from server import REDIS_URL, Server, WorkerPool, base_env, free_port, run_cli, scratch_postgres_database, unavailable
from sqlalchemy import text

from scale.tcpforward import Forwarder
from tidegate.access import ratelimit
from tidegate.catalog.analysis import ProjectRun
from tidegate.config import metrics_dir_for, normalize_database_url
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.db import jobs
from tidegate.db.base import utcnow
from tidegate.db.engine import get_engine, session_scope
from tidegate.orgs import service as orgs

pytestmark = pytest.mark.slow

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
METRICS_TOKEN = "scale-" + secrets.token_hex(16)
WAIT = 30.0
GC_INTERVAL, GC_MIN_AGE = 2, 5  # seconds: a round every 2 s; objects younger than 5 s are spared
# Unreferenced objects of our own layout, planted in the bucket when the cluster starts: the
# periodic collection must delete each of them once, whichever node wins each round.
ORPHANS = [f"org_orphans/src_orphan{n}/ver_orphan{n}/part-0000.parquet" for n in range(4)]


class Cluster:
    def __init__(
        self,
        nodes: list[Server],
        lb_url: str,
        database_url: str,
        pepper: bytes,
        forwarders: list[Forwarder],
        store: tuple[MotoS3, str, list[StoreProxy]],
    ):
        self.nodes, self.lb_url, self.database_url, self.pepper = nodes, lb_url, database_url, pepper
        self.database_of_node2, self.redis_of_node2 = forwarders
        self.moto, self.bucket, self.store_proxies = store
        self.org_id = nodes[0].org_id

    def headers(self, key: str | None = None) -> dict[str, str]:
        return self.nodes[0].headers(key)

    def lb(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.lb_url + "/api/v1", headers=self.headers(key), timeout=30.0)

    def each_node(self, method: str, path: str, key: str, **options) -> list[httpx.Response]:
        """The same request sent to node1, then node2, directly (fresh connections)."""
        return [
            httpx.request(method, node.url + "/api/v1" + path, headers=self.headers(key), timeout=30.0, **options)
            for node in self.nodes
        ]

    def user(self, role: str = "member") -> tuple[str, str]:
        """(user id, email) of a new user, written by this process (another writer)."""
        email = f"u-{uuid.uuid4().hex[:8]}@example.com"
        with session_scope(self.database_url) as session:
            return orgs.create_user(session, None, self.org_id, email=email, role=role).id, email

    def key_for(self, user_id: str, *, preset: str = "full_access", **options) -> tuple[str, str]:
        """(key id, secret) of a key of `user_id`, made directly in the database."""
        with session_scope(self.database_url) as session:
            user = orgs.get_user(session, self.org_id, user_id)
            principal = Principal.for_user(self.org_id, user.id, user.role)
            created = keys_service.create_key(
                session,
                principal,
                keys_service.KeyRequest(
                    name=f"k-{uuid.uuid4().hex[:6]}", scopes=preset_scopes(preset, user.role), **options
                ),
                pepper=self.pepper,
            )
            return created.key.id, created.secret


def _start_haproxy(base: Path, nodes: list[Server]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"),
        "TIDEGATE_LB_BIND": f"127.0.0.1:{port}",
        "TIDEGATE_NODE1": f"127.0.0.1:{nodes[0].port}",
        "TIDEGATE_NODE2": f"127.0.0.1:{nodes[1].port}",
    }
    log_path = base / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [shutil.which("haproxy") or "haproxy", "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited {proc.returncode}: {log_path.read_text(errors='replace')}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return proc, url, log_path
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"haproxy not answering after {WAIT}s: {log_path.read_text(errors='replace')}")


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (6379 if parts.scheme == "redis" else 5432)


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(credentials + "@" if credentials else "") + f"127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("haproxy") is None:
        unavailable("haproxy (make haproxy installs Debian's)", FileNotFoundError("haproxy"))
    base = tmp_path_factory.mktemp("scale")
    secrets_env = {
        "TIDEGATE_PEPPER": secrets.token_hex(32),
        "TIDEGATE_SESSION_KEY": secrets.token_hex(32),
        "TIDEGATE_TRUSTED_PROXIES": "127.0.0.1",
        "TIDEGATE_METRICS_TOKEN": METRICS_TOKEN,
        "TIDEGATE_QUERY_WORKERS": "1",  # fewer processes on a small machine
    }
    forwarders: list[Forwarder] = []
    started = time.monotonic()
    with scratch_postgres_database("tidegate_scale") as database_url, running_moto(base) as moto:
        bucket = moto.new_bucket()
        for orphan in ORPHANS:
            moto.put(bucket, f"data/{orphan}", b"PAR1 not referenced by any version")
        store_proxies = [StoreProxy(moto.port), StoreProxy(moto.port)]  # one per node
        homes = [base / "node1", base / "node2"]
        for home in homes:
            home.mkdir()
        # node2 reaches PostgreSQL and Redis through forwarders a test can close.
        database_forward, redis_forward = (Forwarder(*_address(url)).open() for url in (database_url, REDIS_URL))
        forwarders.extend((database_forward, redis_forward))
        shared = [
            secrets_env
            | s3_env(proxy.url, bucket)
            | {"TIDEGATE_GC_INTERVAL_SECONDS": str(GC_INTERVAL), "TIDEGATE_GC_MIN_AGE_SECONDS": str(GC_MIN_AGE)}
            for proxy in store_proxies
        ]
        envs = [
            base_env(homes[0], database_url=database_url, redis_url=REDIS_URL, extra=shared[0]),
            base_env(
                homes[1],
                database_url=_with_port(database_url, database_forward.port),
                redis_url=_with_port(REDIS_URL, redis_forward.port),
                extra=shared[1],
            ),
        ]
        info = json.loads(run_cli(envs[0], "init", "--json", "--org-name", "Scale").stdout)
        nodes = [
            Server(
                home=home,
                env=env,
                org_id=info["org_id"],
                admin_user_id=info["admin_user_id"],
                admin_email=info["admin_email"],
                admin_key=info["key"],
                admin_key_id=info["key_id"],
                workers=workers,
            )
            for home, env, workers in zip(homes, envs, (2, 1), strict=True)
        ]
        errors: list[BaseException] = []

        def start(node: Server) -> None:
            try:
                node.start()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        starters = [threading.Thread(target=start, args=(node,)) for node in nodes]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        haproxy = None
        try:
            assert not errors, errors
            haproxy, lb_url, _ = _start_haproxy(base, nodes)
            sqlalchemy_url = normalize_database_url(database_url)
            cluster = Cluster(
                nodes,
                lb_url,
                sqlalchemy_url,
                secrets_env["TIDEGATE_PEPPER"].encode(),
                forwarders,
                (moto, bucket, store_proxies),
            )
            cluster.started = started
            # The admin's requests in this module (polls included) would pass the default
            # 60 a minute: the module's admin key is one with the highest limit.
            busy_key_id, busy_key = cluster.key_for(info["admin_user_id"], rate_limit_per_minute=10_000)
            for node in nodes:
                node.admin_key, node.admin_key_id = busy_key, busy_key_id
            yield cluster
            get_engine(sqlalchemy_url).dispose()
        finally:
            if haproxy is not None:
                haproxy.terminate()
                try:
                    haproxy.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    haproxy.kill()
            stoppers = [threading.Thread(target=node.stop) for node in nodes]  # at once: half the wait
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join()
            for forwarder in forwarders:
                forwarder.close()
            for proxy in store_proxies:
                proxy.down()


def codes(responses: list[httpx.Response]) -> list[tuple[int, str | None]]:
    return [
        (r.status_code, (r.json().get("error") or {}).get("code") if r.status_code >= 400 else None) for r in responses
    ]


# -- the balancer reaches both nodes ---------------------------------------------------------


def test_the_balancer_alternates_between_the_nodes(cluster):
    with cluster.lb() as lb:
        answered = [lb.get("/keys") for _ in range(8)]
    assert [r.status_code for r in answered] == [200] * 8, [(r.headers, r.text) for r in answered]
    nodes = [r.headers["x-tidegate-node"] for r in answered]
    assert set(nodes) == {"node1", "node2"}
    assert max(nodes.count("node1"), nodes.count("node2")) <= 6, nodes  # roundrobin (a check may blink)


def test_readyz_of_each_node_and_metrics_not_through_the_balancer(cluster):
    for node in cluster.nodes:
        ready = httpx.get(node.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "database": "ok",
            "redis": "ok",
            "object_store": "ok",
            "storage": "ok",
            "audit": "ok",
        }
    blocked = httpx.get(cluster.lb_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert blocked.status_code == 403 and "tidegate_" not in blocked.text


# -- changes are seen by the first request after they returned, on every node ------------------


def test_every_server_process_holds_an_epoch_lease(cluster):
    """The tests below run with leases on (the default): warm keys are validated against each
    process's own copy of the epochs, and every write through tidegate (the balancer, or this
    process's own service calls) waits for all three processes to apply it."""
    deadline = time.monotonic() + 20
    while True:
        with get_engine(cluster.database_url).connect() as conn:
            live = conn.execute(text("SELECT count(*) FROM epoch_leases WHERE expires_at > clock_timestamp()"))
            count = live.scalar()
        if count == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert count == 3  # node1's two workers and node2's one


def test_a_revoked_key_is_refused_by_both_nodes_at_once(cluster):
    key_id, secret = cluster.key_for(cluster.nodes[0].admin_user_id)
    for _ in range(2):  # both nodes have served (and could have cached) the key
        assert codes(cluster.each_node("GET", f"/keys/{key_id}", secret)) == [(200, None)] * 2
    with cluster.lb() as lb:
        revoked = lb.delete(f"/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert codes(cluster.each_node("GET", "/keys", secret)) == [(401, "api_key_revoked")] * 2
    with cluster.lb(secret) as lb:
        assert {lb.get("/keys").status_code for _ in range(4)} == {401}


def test_a_deactivated_creator_and_a_demotion_are_seen_by_both_nodes_at_once(cluster):
    admin_id, _ = cluster.user(role="admin")
    _, admin_secret = cluster.key_for(admin_id)
    member_id, _ = cluster.user(role="admin")
    _, member_secret = cluster.key_for(member_id)
    for secret in (admin_secret, member_secret):
        assert codes(cluster.each_node("GET", "/users", secret)) == [(200, None)] * 2

    with cluster.lb() as lb:
        assert lb.patch(f"/users/{member_id}", json={"role": "member"}).status_code == 200
    # Still a key, no longer an admin's: the admin-only listing is refused on both nodes.
    assert [status for status, _ in codes(cluster.each_node("GET", "/users", member_secret))] == [403, 403]

    with cluster.lb() as lb:
        assert lb.delete(f"/users/{admin_id}").status_code == 200
    assert codes(cluster.each_node("GET", "/keys", admin_secret)) == [(401, "api_key_owner_inactive")] * 2


def test_a_policy_edit_a_new_version_and_an_unshare_are_seen_by_both_nodes_at_once(cluster):
    with cluster.lb() as lb:
        rows = [{"region": region, "amount": n} for n, region in enumerate(["US", "EU", "US", "APAC"])]
        source = lb.post("/sources", json={"name": f"s-{uuid.uuid4().hex[:6]}", "rows": rows})
        assert source.status_code == 201, source.text
        source_id = source.json()["id"]
        shared = lb.post(f"/sources/{source_id}/org-share", json={"enabled": True, "permission": "view"})
        assert shared.status_code == 200, shared.text
        reader_id, _ = cluster.user()
        policy = lb.post(
            "/access/policies",
            json={"name": f"p-{uuid.uuid4().hex[:6]}", "row_filters": [{"column": "region", "values": ["US"]}]},
        )
        assert policy.status_code == 201, policy.text
        policy_id = policy.json()["id"]
        assigned = lb.put(f"/access/users/{reader_id}/policies", json={"policy_ids": [policy_id]})
        assert assigned.status_code == 200, assigned.text
    _, reader = cluster.key_for(reader_id, preset="data_access")

    def regions() -> list[list[str]]:
        pages = cluster.each_node("GET", f"/sources/{source_id}/data", reader)
        assert [p.status_code for p in pages] == [200, 200], [p.text for p in pages]
        return [sorted(row["region"] for row in page.json()["data"]) for page in pages]

    for _ in range(2):  # cached on both nodes (access and page caches)
        assert regions() == [["US", "US"]] * 2
    with cluster.lb() as lb:
        edited = lb.patch(
            f"/access/policies/{policy_id}", json={"row_filters": [{"column": "region", "values": ["EU"]}]}
        )
        assert edited.status_code == 200, edited.text
    assert regions() == [["EU"]] * 2
    with cluster.lb() as lb:  # and an unassignment: no policy, deny-by-default off: every row
        assert lb.put(f"/access/users/{reader_id}/policies", json={"policy_ids": []}).status_code == 200
    assert regions() == [["APAC", "EU", "US", "US"]] * 2
    with cluster.lb() as lb:  # a new version of the source
        appended = lb.post(f"/sources/{source_id}/rows", json={"rows": [{"region": "LATAM", "amount": 9}]})
        assert appended.status_code == 200, appended.text
    assert regions() == [["APAC", "EU", "LATAM", "US", "US"]] * 2
    with cluster.lb() as lb:  # and an unshare: the reader no longer sees the source at all
        assert lb.post(f"/sources/{source_id}/org-share", json={"enabled": False}).status_code == 200
    assert codes(cluster.each_node("GET", f"/sources/{source_id}/data", reader)) == [(404, "source_not_found")] * 2


# -- one object store, a part cache per node ---------------------------------------------------


def cached_parts(node: Server, source_id: str) -> list[Path]:
    """The node's own copies of the source's parts (TIDEGATE_HOME/cache/parts)."""
    return sorted((node.home / "cache" / "parts").glob(f"*/{source_id}/*/part-*.parquet"))


def read_rows(node: Server, source_id: str) -> list[dict]:
    page = httpx.get(f"{node.url}/api/v1/sources/{source_id}/data", headers=node.headers(), timeout=30)
    assert page.status_code == 200, page.text
    return page.json()["data"]


def test_a_source_written_through_one_node_is_read_through_the_other_from_its_own_cache(cluster):
    node1, node2 = cluster.nodes
    created = httpx.post(
        f"{node1.url}/api/v1/sources",
        headers=node1.headers(),
        json={"name": f"s-{uuid.uuid4().hex[:6]}", "rows": [{"n": n} for n in range(50)]},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    source_id = created.json()["id"]
    in_bucket = [key for key in cluster.moto.keys(cluster.bucket, "data/") if f"/{source_id}/" in key]
    assert len(in_bucket) == 1  # uploaded before the version was committed
    assert len(cached_parts(node1, source_id)) == 1 and cached_parts(node2, source_id) == []
    assert sorted(row["n"] for row in read_rows(node2, source_id)) == list(range(50))
    assert [p.name for p in cached_parts(node2, source_id)] == ["part-0000.parquet"]  # fetched once, kept

    # A new version written through node2 is what node1's very next request reads.
    appended = httpx.post(
        f"{node2.url}/api/v1/sources/{source_id}/rows", headers=node2.headers(), json={"rows": [{"n": 50}]}, timeout=30
    )
    assert appended.status_code == 200, appended.text
    assert sorted(row["n"] for row in read_rows(node1, source_id)) == list(range(51))
    assert len(cached_parts(node1, source_id)) == 2


# -- rate limits are one count across nodes (Redis) --------------------------------------------


def test_rate_limits_are_counted_across_nodes(cluster):
    limit = 6
    _, secret = cluster.key_for(cluster.nodes[0].admin_user_id, rate_limit_per_minute=limit)
    answered = []
    for i in range(limit):
        node = cluster.nodes[i % 2]
        answered.append(httpx.get(node.url + "/api/v1/keys", headers=cluster.headers(secret), timeout=30).status_code)
    assert answered == [200] * limit  # three on each node: neither alone reached the limit
    refused = cluster.each_node("GET", "/keys", secret)
    assert codes(refused) == [(429, "rate_limit_exceeded")] * 2
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)


# -- /metrics adds up a node's worker processes ---------------------------------------------


def scrape(node: Server) -> str:
    response = httpx.get(node.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def requests_counted(text: str, route: str) -> float:
    prefix = "tidegate_http_requests_total{"
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and f'route="{route}"' in line and 'status="2xx"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_of_a_node_count_every_worker_process(cluster):
    node = cluster.nodes[0]
    route = "/api/v1/users/{user_id}"
    before = requests_counted(scrape(node), route)
    pool = WorkerPool(node, 2)
    try:
        assert len(set(pool.pids)) == 2  # two connections, each held by a different worker
        for i in range(10):
            status, _, _ = pool.request(i % 2, "GET", f"/api/v1/users/{node.admin_user_id}", node.headers())
            assert status == 200
    finally:
        pool.close()
    # Whichever worker answers the scrape, it reports both (the other's within its flush, 1 s).
    deadline = time.monotonic() + 10
    while requests_counted(text := scrape(node), route) - before < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(3):
        assert requests_counted(text, route) - before == 10
        text = scrape(node)
    assert node.admin_user_id not in text and node.org_id not in text and node.admin_key not in text
    assert "tidegate_query_pool_capacity" in text and "tidegate_audit_backlog_events" in text
    # Each worker wrote its own files in the node's metrics directory (in /dev/shm), emptied at start.
    assert len({p.stem.rsplit("_", 1)[-1] for p in metrics_dir_for(node.home).glob("counter_*.db")}) >= 2


# -- a node that is not ready leaves the balancer, and comes back -------------------------------


def served_by(cluster: Cluster, wanted: set[str], timeout: float = 20.0) -> None:
    """Wait until 6 requests in a row through the balancer are served by exactly `wanted`."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        with cluster.lb() as lb:
            seen = {lb.get("/keys").headers.get("x-tidegate-node", "?") for _ in range(6)}
        if seen == wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"the balancer sent requests to {seen}, not {wanted}")


def test_a_node_that_cannot_reach_the_object_store_is_not_ready_until_it_can(cluster):
    node2 = cluster.nodes[1]
    cluster.store_proxies[1].down()  # node2's way to the store is cut (node1's is not)
    try:
        ready = httpx.get(node2.url + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "object_store_unavailable"
        assert ready.json()["checks"]["object_store"] == "unavailable"
        assert httpx.get(node2.url + "/healthz", timeout=10).status_code == 200  # alive, not ready
        assert httpx.get(cluster.nodes[0].url + "/readyz", timeout=30).status_code == 200
    finally:
        cluster.store_proxies[1].up()
    assert httpx.get(node2.url + "/readyz", timeout=30).status_code == 200  # no restart needed


def test_a_node_that_loses_redis_or_the_database_leaves_the_balancer_until_they_return(cluster):
    node2 = cluster.nodes[1]
    cluster.redis_of_node2.close()  # node2's Redis address is now a closed port
    time.sleep(ratelimit.GRANT_SECONDS)  # room it counted ahead before the cut is spent or void by now
    try:
        ready = httpx.get(node2.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["code"] == "rate_limiter_unavailable"
        assert ready.json()["checks"] == {
            "database": "ok",
            "redis": "unavailable",
            "object_store": "ok",
            "storage": "ok",
            "audit": "ok",
        }
        # Its requests fail closed (never unlimited), and the balancer stops sending it any.
        assert codes(cluster.each_node("GET", "/keys", cluster.nodes[0].admin_key)[1:]) == [
            (503, "rate_limiter_unavailable")
        ]
        served_by(cluster, {"node1"})
        cluster.database_of_node2.close()  # and its database too
        ready = httpx.get(node2.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "database_unavailable"  # the first, in a fixed order
        assert ready.json()["error"]["unavailable"] == ["database", "redis"]
        assert str(cluster.database_of_node2.port) not in ready.text and "postgresql" not in ready.text
        with cluster.lb() as lb:  # the clients of the balancer see none of it
            assert {lb.get("/keys").status_code for _ in range(4)} == {200}
    finally:
        cluster.database_of_node2.open()
        cluster.redis_of_node2.open()
    ready = httpx.get(node2.url + "/readyz", timeout=10)  # recovered, without a restart
    assert ready.status_code == 200, ready.text
    served_by(cluster, {"node1", "node2"})


# -- background jobs: once across nodes, and past a node's death -----------------------------


def gc_lines(node: Server) -> list[str]:
    return [line for line in node.logs().splitlines() if "data garbage collection by" in line]


def wait_until_gone(cluster: Cluster, keys: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not set(cluster.moto.keys(cluster.bucket, "data/org_orphans/")) & {f"data/{key}" for key in keys}:
            return
        time.sleep(0.2)
    raise AssertionError(f"still in the bucket after {timeout}s: {keys}")


def test_garbage_collection_runs_once_per_round_across_the_nodes(cluster):
    # The orphans planted at start, old enough by now (or soon), go in one of the rounds.
    wait_until_gone(cluster, ORPHANS, timeout=GC_MIN_AGE + 6 * GC_INTERVAL + 10)
    for orphan in ORPHANS:  # each deleted once: no two processes ever ran the same round
        assert cluster.moto.deletes_of(cluster.bucket, f"data/{orphan}") == 1, orphan

    def logged() -> list[str]:
        return [line for node in cluster.nodes for line in gc_lines(node)]

    deadline = time.monotonic() + 10  # the round logs just after its last DELETE
    while sum(line.count(o) for line in logged() for o in ORPHANS) < len(ORPHANS) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = logged()
    assert sum(line.count(orphan) for line in lines for orphan in ORPHANS) == len(ORPHANS)
    # Three worker processes wake every GC_INTERVAL; rounds are claimed once per interval.
    elapsed = time.monotonic() - cluster.started
    assert 1 <= len(lines) <= elapsed / GC_INTERVAL + 1, (len(lines), elapsed)
    # The job's row shows its latest round: one may have just begun (no outcome yet) on a
    # waking worker; it ends within a round's time.
    deadline = time.monotonic() + 10
    last = jobs.last_round(cluster.database_url, "data-gc")
    while last is not None and last.outcome is None and time.monotonic() < deadline:
        time.sleep(0.1)
        last = jobs.last_round(cluster.database_url, "data-gc")
    assert last is not None and last.outcome == "ok"


def test_a_run_whose_node_died_reads_as_interrupted_on_every_node(cluster):
    with cluster.lb() as lb:
        project = lb.post(
            "/projects", json={"name": f"p-{uuid.uuid4().hex[:6]}", "user_id": cluster.nodes[0].admin_user_id}
        )
        assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    with session_scope(cluster.database_url) as session:  # running, computed by a node gone for 2 hours
        session.add(
            ProjectRun(
                id=f"api_{uuid.uuid4().hex[:12]}",
                project_id=project_id,
                started_by=cluster.nodes[0].admin_user_id,
                status="running",
                started_at=utcnow() - timedelta(hours=2),
            )
        )
    key = cluster.nodes[0].admin_key
    for status in cluster.each_node("GET", f"/projects/{project_id}/run/status", key):
        assert status.status_code == 200, status.text
        assert (status.json()["status"], status.json()["is_running"]) == ("error", False)
        assert "interrupted" in status.json()["message"]
    started = httpx.post(
        f"{cluster.nodes[1].url}/api/v1/projects/{project_id}/run", headers=cluster.headers(), timeout=30
    )
    assert started.status_code in (200, 202), started.text  # a stale run does not block a new one
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # computed on node2, reported alike by node1
        status = cluster.each_node("GET", f"/projects/{project_id}/run/status", key)[0].json()
        if status["status"] != "running":
            break
        time.sleep(0.2)
    assert status["status"] == "complete", status


def test_a_node_killed_in_the_middle_of_a_round_does_not_hold_up_the_next_one(cluster):
    """Run last: a node stays dead. Two orphans; the node that deletes the first is killed
    (kill -9, its whole process group) as it sends that DELETE (which never arrives), holding
    the cluster lock. Its database session dies with it and with the session the lock: the
    other node runs the unfinished round at its next wake-up and deletes both."""
    first, second = (f"org_orphans/src_victim{n}/ver_victim{n}/part-0000.parquet" for n in (1, 2))
    killed: list[Server] = []
    for node, proxy in zip(cluster.nodes, cluster.store_proxies, strict=True):

        def kill(node: Server = node) -> None:
            killed.append(node)
            node.kill()

        pattern = rb"DELETE /" + re.escape(f"{cluster.bucket}/data/{first}".encode()) + rb" "
        proxy.when(pattern, kill, drop=True)  # killed as it sends the DELETE, which never arrives
    for victim in (first, second):
        cluster.moto.put(cluster.bucket, f"data/{victim}", b"PAR1 not referenced by any version")
    deadline = time.monotonic() + GC_MIN_AGE + 4 * GC_INTERVAL + 15
    while not killed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(killed) == 1, "no node was caught deleting the first orphan"
    for proxy in cluster.store_proxies:
        proxy.disarm()
    killed_at = time.monotonic()
    (survivor,) = [node for node in cluster.nodes if node is not killed[0]]
    wait_until_gone(cluster, [first, second], timeout=3 * GC_INTERVAL + 10)
    assert time.monotonic() - killed_at < 3 * GC_INTERVAL + 10
    assert [cluster.moto.deletes_of(cluster.bucket, f"data/{victim}") for victim in (first, second)] == [1, 1]
    # The round logs and records its end just after its last DELETE: wait for that, briefly.
    deadline = time.monotonic() + 10

    # By the survivor, in its rerun of the round or, when the two orphans' store timestamps
    # fall on either side of a second and the younger is not old enough yet, in the next one.
    def by_survivor() -> bool:
        lines = gc_lines(survivor)
        return all(any(victim in line for line in lines) for victim in (first, second))

    while not by_survivor() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert by_survivor()
    assert not any(first in line for line in gc_lines(killed[0]))
    last = jobs.last_round(cluster.database_url, "data-gc")
    while (last is None or last.outcome != "ok") and time.monotonic() < deadline:
        time.sleep(0.1)
        last = jobs.last_round(cluster.database_url, "data-gc")
    assert last is not None and last.outcome == "ok" and last.finished_at >= last.started_at
    served_by(cluster, {survivor.home.name})  # and the balancer serves on with the survivor
