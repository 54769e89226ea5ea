"""Two `tidegate serve` nodes (two TIDEGATE_HOMEs) sharing one PostgreSQL database and one
bucket of a real S3-compatible server (moto, on loopback, behind a proxy the tests cut):
writes land in the bucket, either node reads what the other wrote through its own part
cache, the store down is a 503 that heals without a restart, and a node killed between its
upload and its commit leaves the old version readable and an orphan that GC removes."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
from s3 import SECRET_KEY, s3_env
from server import Server, base_env, init_home, scratch_postgres_database

from tidegate.config import ObjectStoreSettings
from tidegate.data import storage
from tidegate.db.engine import session_scope

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto, store_proxy):
    """(node1, node2, bucket, database_url): both nodes up, same database, same bucket."""
    base = tmp_path_factory.mktemp("nodes")
    bucket = moto.new_bucket()
    shared = s3_env(store_proxy.url, bucket) | {
        "TIDEGATE_PEPPER": secrets.token_hex(32),
        "TIDEGATE_SESSION_KEY": secrets.token_hex(32),
    }
    with scratch_postgres_database("tg_objstore") as database_url:
        node1 = init_home(base, database_url=database_url, extra_env=shared)
        home2 = base / "node2-home"
        home2.mkdir()
        node2 = replace(
            node1,
            home=home2,
            env=base_env(home2, database_url=database_url, extra=shared),
            proc=None,
            port=0,
            _log_files=[],
        )
        with ThreadPoolExecutor(2) as pool:  # both at once: each start takes seconds
            started = [pool.submit(node.start) for node in (node1, node2)]
        try:
            for future in started:
                future.result()
            yield node1, node2, bucket, database_url
        finally:
            node1.stop()
            node2.stop()
            for node in (node1, node2):
                assert SECRET_KEY not in node.logs(), "the S3 secret key was logged"


@pytest.fixture(scope="module")
def admin(cluster):
    node1, _, _, _ = cluster
    return node1.admin_key  # this module sends well under its rate limit


def rows_of(node: Server, key: str, source_id: str) -> list[dict]:
    with node.client(key) as http:
        answer = http.get(f"/sources/{source_id}/data", params={"page_size": 1000})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]


def cached_parts(node: Server) -> set[str]:
    root = node.home / "cache" / "parts"
    return {str(p.relative_to(root)) for p in root.rglob("part-*.parquet")}


def test_upload_replace_append_and_files_live_in_the_bucket(cluster, admin, moto):
    node1, _, bucket, _ = cluster
    with node1.client(admin) as http:
        created = http.post("/sources", json={"name": "s3-ledger", "rows": [{"n": 1}, {"n": 2}]})
        assert created.status_code == 201, created.text
        source = created.json()["id"]
        assert http.post(f"/sources/{source}/rows", json={"rows": [{"n": 3}]}).status_code == 200
        assert [r["n"] for r in rows_of(node1, admin, source)] == [1, 2, 3]
        assert http.put(f"/sources/{source}/data", json={"rows": [{"n": 10}, {"n": 11}]}).status_code == 200
        uploaded = http.post(
            "/files/upload", files={"file": ("people.csv", b"name,age\nada,36\nalan,41\n", "text/csv")}
        )
        assert uploaded.status_code == 201, uploaded.text
        from_file = http.post("/sources", json={"name": "s3-people", "file_id": uploaded.json()["id"]})
        assert from_file.status_code == 201, from_file.text
    assert [r["n"] for r in rows_of(node1, admin, source)] == [10, 11]
    assert rows_of(node1, admin, from_file.json()["id"]) == [{"name": "ada", "age": 36}, {"name": "alan", "age": 41}]

    keys = moto.keys(bucket, "data/")
    parts = [k for k in keys if f"/{source}/" in k]
    # v1 (1 part), the append (+1 part), the replace (1 part): three immutable objects.
    assert len(parts) == 3 and all(re.fullmatch(r"data/org_\w+/src_\w+/ver_\w+/part-\d{4}\.parquet", k) for k in parts)
    assert f"data/{node1.org_id}/files/{uploaded.json()['id']}" in keys
    assert not list((node1.home / "data").rglob("*")), "nothing written to local data with an object store"


def test_the_second_node_reads_what_the_first_wrote_through_its_own_cache(cluster, admin):
    node1, node2, _, _ = cluster
    with node1.client(admin) as http:
        source = http.post("/sources", json={"name": "s3-shared", "rows": [{"k": "a"}, {"k": "b"}]}).json()["id"]
    assert not any(source in p for p in cached_parts(node2))
    assert rows_of(node2, admin, source) == [{"k": "a"}, {"k": "b"}]
    first = {p for p in cached_parts(node2) if source in p}
    assert len(first) == 1

    with node1.client(admin) as http:  # a new version: the next read on node 2 sees it
        assert http.post(f"/sources/{source}/rows", json={"rows": [{"k": "c"}]}).status_code == 200
    assert [r["k"] for r in rows_of(node2, admin, source)] == ["a", "b", "c"]
    assert len({p for p in cached_parts(node2) if source in p}) == 2  # only the new part was fetched
    assert not list((node2.home / "data").rglob("*"))


def test_a_part_missing_from_the_store_is_a_clear_503_not_a_500(cluster, admin, moto):
    node1, node2, bucket, _ = cluster
    with node1.client(admin) as http:
        source = http.post("/sources", json={"name": "s3-lost", "rows": [{"k": "a"}]}).json()["id"]
    (part,) = [k for k in moto.keys(bucket, "data/") if f"/{source}/" in k]
    moto.delete(bucket, part)  # lost behind tidegate's back
    with node2.client(admin) as http:  # node 2 never cached it
        answer = http.get(f"/sources/{source}/data")
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "source_data_missing" and "missing from the object store" in error["message"]
    assert answer.headers["Retry-After"] == "60"


def test_the_store_down_is_a_503_with_the_envelope_and_heals_without_a_restart(cluster, admin, store_proxy):
    node1, node2, _, _ = cluster
    with node1.client(admin) as http:
        source = http.post("/sources", json={"name": "s3-outage", "rows": [{"v": 1}]}).json()["id"]
    store_proxy.down()
    try:
        # Node 2 has never read this version: it must fetch it, and cannot.
        with node2.client(admin) as http:
            read = http.get(f"/sources/{source}/data")
        assert read.status_code == 503, read.text
        error = read.json()["error"]
        assert error["code"] == "object_store_unavailable" and error["retry_after"] > 0
        assert read.headers["Retry-After"] == str(error["retry_after"])
        with node1.client(admin) as http:
            write = http.put(f"/sources/{source}/data", json={"rows": [{"v": 2}]})
        assert write.status_code == 503 and write.json()["error"]["code"] == "object_store_unavailable"
        assert rows_of(node1, admin, source) == [{"v": 1}]  # what node 1 holds stays readable
        ready = httpx.get(node2.url + "/readyz", timeout=15)
        assert ready.status_code == 503 and ready.json()["checks"]["object_store"] != "ok", ready.text
        assert ready.json()["error"]["code"] == "object_store_unavailable"
    finally:
        store_proxy.up()
    ready = httpx.get(node2.url + "/readyz", timeout=15)
    assert ready.status_code == 200 and ready.json()["checks"]["object_store"] == "ok", ready.text
    assert rows_of(node2, admin, source) == [{"v": 1}]
    with node1.client(admin) as http:
        assert http.put(f"/sources/{source}/data", json={"rows": [{"v": 3}]}).status_code == 200
    assert rows_of(node2, admin, source) == [{"v": 3}]


def test_a_node_killed_between_upload_and_commit_leaves_the_old_version_and_gc_collects_the_orphan(
    cluster, admin, moto, store_proxy, tmp_path
):
    node1, node2, bucket, database_url = cluster
    with node1.client(admin) as http:
        source = http.post("/sources", json={"name": "s3-crash", "rows": [{"v": "old"}]}).json()["id"]
    before = set(moto.keys(bucket, f"data/{node1.org_id}/{source}/"))
    assert node1.proc is not None
    group = node1.proc.pid
    # The request that completes the new part's upload: kill -9 the node as it passes (the
    # store still gets it, the node never gets to commit the version listing it).
    store_proxy.when(
        rb"(POST|PUT) /"
        + bucket.encode()
        + rb"/data/\w+/"
        + source.encode()
        + rb"/ver_\w+/part-\d+\.parquet(\?uploadId=| )",
        lambda: os.killpg(group, signal.SIGKILL),
    )
    with node1.client(admin) as http, pytest.raises(Exception):  # noqa: B017, PT011 - the node died mid-answer
        http.put(f"/sources/{source}/data", json={"rows": [{"v": "new"}] * 3})
    node1.kill()  # reap
    deadline = time.monotonic() + 10
    while len(moto.keys(bucket, f"data/{node1.org_id}/{source}/")) == len(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = set(moto.keys(bucket, f"data/{node1.org_id}/{source}/")) - before
    assert len(orphans) == 1, "the upload completed before the kill took effect"

    assert rows_of(node2, admin, source) == [{"v": "old"}]  # the old version, whole
    gc = node2.cli("gc", "--json")  # orphans younger than the grace period are spared
    assert not orphans & {f"data/{name}" for name in json.loads(gc.stdout)["deleted_files"]}
    assert orphans <= set(moto.keys(bucket, "data/"))

    settings = ObjectStoreSettings(
        url=f"s3://{bucket}/data",
        endpoint_url=moto.url,
        access_key_id="k",
        secret_access_key="s",
    )
    storage.configure(tmp_path / "unused", object_store=settings, part_cache_dir=tmp_path / "cache")
    try:
        with session_scope(database_url) as session:
            report = storage.collect_garbage(session, min_age_seconds=0)
    finally:
        storage.configure(None)
    assert {f"data/{name}" for name in report.deleted_files} == orphans
    remaining = set(moto.keys(bucket, "data/"))
    assert not orphans & remaining and before <= remaining
    assert rows_of(node2, admin, source) == [{"v": "old"}]
    with node2.client(admin) as http:  # and the source takes writes again
        assert http.put(f"/sources/{source}/data", json={"rows": [{"v": "newer"}]}).status_code == 200
    assert rows_of(node2, admin, source) == [{"v": "newer"}]


def test_gc_leaves_foreign_objects_under_the_prefix_alone(cluster, moto, tmp_path):
    _, _, bucket, database_url = cluster
    import httpx

    httpx.put(f"{moto.url}/{bucket}/data/README.txt", content=b"not ours").raise_for_status()
    settings = ObjectStoreSettings(
        url=f"s3://{bucket}/data", endpoint_url=moto.url, access_key_id="k", secret_access_key="s"
    )
    storage.configure(tmp_path / "unused", object_store=settings, part_cache_dir=tmp_path / "cache")
    try:
        with session_scope(database_url) as session:
            report = storage.collect_garbage(session, min_age_seconds=0)
    finally:
        storage.configure(None)
    assert "README.txt" not in report.deleted_files
    assert "data/README.txt" in moto.keys(bucket, "data/")
