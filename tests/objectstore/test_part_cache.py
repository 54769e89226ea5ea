"""The node's part cache (bounded, LRU by bytes, downloads published whole) and the
object-store settings (a bad one stops the start with a message naming it, never the secret)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tidegate.config import load_settings
from tidegate.data.partcache import TMP_MARK, PartCache

PART = 1000  # bytes per fake part


def fetcher(calls: list[str]):
    def fetch(relative: str, handle) -> None:
        calls.append(relative)
        handle.write(relative.encode().ljust(PART, b"."))

    return fetch


def age(cache: PartCache, seconds: float) -> None:
    """Make every cached copy look last used `seconds` ago."""
    for path in cache.root.rglob("*"):
        if path.is_file():
            then = time.time() - seconds
            os.utime(path, (then, then))


def read(cache: PartCache, names: list[str], fetch) -> list[Path]:
    with cache.pin(names, fetch) as pinned:
        return pinned.paths


def test_the_cache_stays_within_its_bound_evicting_the_least_recently_used(tmp_path):
    cache = PartCache(tmp_path / "parts", max_bytes=int(2.5 * PART))
    calls: list[str] = []
    fetch = fetcher(calls)
    names = [f"org_a/src_b/ver_{i}/part-0000.parquet" for i in range(4)]
    read(cache, names[:2], fetch)
    age(cache, 100)
    read(cache, [names[0]], fetch)  # a hit: ver_0 is now the most recently used
    assert calls == names[:2]
    read(cache, [names[2]], fetch)  # 3 parts > 2.5: the least recently used (ver_1) goes
    assert cache.total_bytes() <= cache.max_bytes
    assert not cache.path(names[1]).exists() and cache.path(names[0]).exists()
    assert not (tmp_path / "parts" / "org_a" / "src_b" / "ver_1").exists()  # its empty directory too
    read(cache, [names[1]], fetch)  # evicted parts come back on demand
    assert calls[-1] == names[1] and cache.path(names[1]).read_bytes().startswith(names[1].encode())


def test_the_parts_a_read_needs_are_never_evicted_by_it_even_past_the_bound(tmp_path):
    cache = PartCache(tmp_path / "parts", max_bytes=PART)
    names = [f"org_a/src_b/ver_x/part-{i:04d}.parquet" for i in range(3)]
    with cache.pin(names, fetcher([])) as pinned:
        assert all(p.exists() for p in pinned.paths)  # a version larger than the cache is still readable
    age(cache, 100)
    read(cache, ["org_a/src_b/ver_y/part-0000.parquet"], fetcher([]))
    assert cache.total_bytes() <= cache.max_bytes


def test_a_part_pinned_by_a_reader_survives_another_process_eviction_until_released(tmp_path):
    reader = PartCache(tmp_path / "parts", max_bytes=PART)
    other = PartCache(tmp_path / "parts", max_bytes=PART)  # another worker process of the node
    oldest = "org_a/src_b/ver_x/part-0000.parquet"
    with reader.pin([oldest], fetcher([])) as pinned:
        age(reader, 100)  # the least recently used copy, and the cache is over its bound
        read(other, ["org_a/src_b/ver_y/part-0000.parquet"], fetcher([]))
        assert pinned.paths[0].exists() and pinned.paths[0].read_bytes().startswith(oldest.encode())
    assert other.evict() == PART and not reader.path(oldest).exists()  # released: now it goes
    assert other.total_bytes() <= other.max_bytes


def test_a_reader_never_gets_a_copy_evicted_between_its_open_and_its_pin(tmp_path):
    cache = PartCache(tmp_path / "parts", max_bytes=PART)
    name = "org_a/src_b/ver_x/part-0000.parquet"
    read(cache, [name], fetcher([]))
    calls: list[str] = []
    real_open = os.open

    def evicting_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        if str(path) == str(cache.path(name)) and not calls:  # evicted right after our open
            os.unlink(path)
        return fd

    os.open = evicting_open
    try:
        with cache.pin([name], fetcher(calls)) as pinned:
            assert calls == [name] and pinned.paths[0].exists()  # noticed (st_nlink 0) and fetched again
    finally:
        os.open = real_open


def test_a_failed_download_leaves_nothing_and_a_dead_ones_temp_file_is_swept(tmp_path):
    cache = PartCache(tmp_path / "parts", max_bytes=10 * PART)

    def broken(relative: str, handle) -> None:
        handle.write(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        read(cache, ["org_a/src_b/ver_x/part-0000.parquet"], broken)
    assert not [p for p in (tmp_path / "parts").rglob("*") if p.is_file()]
    leftover = tmp_path / "parts" / "org_a" / "src_b" / "ver_z" / f".part-0000.parquet{TMP_MARK}dead"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x")  # a download cut by kill -9
    age(cache, 3600)
    read(cache, ["org_a/src_b/ver_y/part-0000.parquet"], fetcher([]))
    assert not leftover.exists()


def env(tmp_path, **values: str) -> dict[str, str]:
    return {"TIDEGATE_HOME": str(tmp_path / "home"), **values}


GOOD = {"TIDEGATE_DATA_URL": "s3://tidegate-data/prod", "TIDEGATE_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}


def test_object_store_settings_are_read(tmp_path):
    settings = load_settings(
        env(
            tmp_path,
            **GOOD,
            TIDEGATE_S3_ACCESS_KEY_ID="id",
            TIDEGATE_S3_SECRET_ACCESS_KEY="s3cr3t",
            TIDEGATE_S3_REGION="eu-west-3",
            TIDEGATE_PART_CACHE_BYTES="123456",
        )
    )
    store = settings.object_store
    assert (store.bucket, store.prefix, store.region, store.part_cache_bytes) == (
        "tidegate-data",
        "prod",
        "eu-west-3",
        123456,
    )
    assert "s3cr3t" not in repr(settings)
    local = load_settings(env(tmp_path))
    assert not local.object_store.enabled and local.object_store.part_cache_bytes == 10 * 1024**3


@pytest.mark.parametrize(
    "values,named",
    [
        ({"TIDEGATE_DATA_URL": "https://bucket/prefix"}, "TIDEGATE_DATA_URL"),
        ({"TIDEGATE_DATA_URL": "s3://Bad_Bucket/x"}, "TIDEGATE_DATA_URL"),
        ({"TIDEGATE_DATA_URL": "s3://bucket/a/../b"}, "TIDEGATE_DATA_URL"),
        (GOOD | {"TIDEGATE_S3_ENDPOINT_URL": "ftp://127.0.0.1"}, "TIDEGATE_S3_ENDPOINT_URL"),
        (GOOD | {"TIDEGATE_S3_ENDPOINT_URL": "http://minio.internal:9000"}, "TIDEGATE_S3_ALLOW_HTTP"),
        (GOOD | {"TIDEGATE_S3_ENDPOINT_URL": "http://user:pw@127.0.0.1"}, "TIDEGATE_S3_ENDPOINT_URL"),
        (GOOD | {"TIDEGATE_S3_SECRET_ACCESS_KEY": "s3cr3t"}, "TIDEGATE_S3_ACCESS_KEY_ID"),
        (GOOD | {"TIDEGATE_S3_ALLOW_HTTP": "yes"}, "TIDEGATE_S3_ALLOW_HTTP"),
        (GOOD | {"TIDEGATE_S3_REGION": "EU WEST"}, "TIDEGATE_S3_REGION"),
        ({"TIDEGATE_PART_CACHE_BYTES": "10GB"}, "TIDEGATE_PART_CACHE_BYTES"),
        ({"TIDEGATE_PART_CACHE_BYTES": "0"}, "TIDEGATE_PART_CACHE_BYTES"),
    ],
)
def test_a_bad_object_store_setting_stops_the_start_naming_it(tmp_path, values, named):
    with pytest.raises(SystemExit) as stopped:
        load_settings(env(tmp_path, **values))
    assert named in str(stopped.value) and "s3cr3t" not in str(stopped.value)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000", "http://127.8.9.10:9000", "http://[::1]:9000", "http://localhost"]
)
def test_plain_http_to_loopback_needs_no_switch(tmp_path, endpoint):
    assert (
        load_settings(env(tmp_path, **GOOD | {"TIDEGATE_S3_ENDPOINT_URL": endpoint})).object_store.endpoint_url
        == endpoint
    )


@pytest.mark.parametrize("endpoint", ["http://10.0.0.5:9000", "http://[fd00::1]:9000", "http://127.0.0.1.nip.io"])
def test_plain_http_elsewhere_is_refused(tmp_path, endpoint):
    with pytest.raises(SystemExit, match="TIDEGATE_S3_ALLOW_HTTP"):
        load_settings(env(tmp_path, **GOOD | {"TIDEGATE_S3_ENDPOINT_URL": endpoint}))


def test_plain_http_to_another_host_is_allowed_only_when_said(tmp_path):
    settings = load_settings(
        env(
            tmp_path, **GOOD | {"TIDEGATE_S3_ENDPOINT_URL": "http://minio.internal:9000", "TIDEGATE_S3_ALLOW_HTTP": "1"}
        )
    )
    assert settings.object_store.allow_http and settings.object_store.endpoint_url == "http://minio.internal:9000"


def test_tidegate_serve_refuses_to_start_on_a_bad_data_url(tmp_path):
    from server import TIDEGATE, base_env

    home = tmp_path / "home"
    done = subprocess.run(
        [TIDEGATE, "serve", "--port", "1"],
        env=base_env(home, extra={"TIDEGATE_DATA_URL": "s3://x", "TIDEGATE_S3_SECRET_ACCESS_KEY": "s3cr3t"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TIDEGATE_DATA_URL" in done.stderr and "s3cr3t" not in done.stdout + done.stderr


def test_object_names_cannot_leave_the_prefix_and_an_unreachable_store_is_a_503(tmp_path):
    from tidegate.catalog.models import File
    from tidegate.config import ObjectStoreSettings
    from tidegate.data import storage
    from tidegate.data.objectstore import ObjectStore
    from tidegate.errors import ServiceUnavailable

    dead = ObjectStoreSettings(
        url="s3://tidegate-data/p", endpoint_url="http://127.0.0.1:1", access_key_id="k", secret_access_key="s3cr3t"
    )
    for name in ("../other/x", "org_a/files/../../x", "/abs", "org_a//x", ""):
        with pytest.raises(ValueError):
            ObjectStore(dead).read_bytes(name)
    storage.configure(tmp_path / "data", object_store=dead, part_cache_dir=tmp_path / "cache")
    try:
        for corrupt in (
            "org_a/files/../../org_b/files/file_x",
            "org_b/files/file_x",
            "org_a/src_y/ver_z/part-0000.parquet",
        ):
            with pytest.raises(ValueError):
                storage.read_file_table(File(id="file_x", org_id="org_a", name="a.csv", storage_path=corrupt))
        with pytest.raises(ServiceUnavailable) as down:
            storage.read_file_table(File(id="file_x", org_id="org_a", name="a.csv", storage_path="org_a/files/file_x"))
        assert down.value.code == "object_store_unavailable" and "s3cr3t" not in str(down.value.body())
    finally:
        storage.configure(None)
