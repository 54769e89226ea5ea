"""Benchmark: what recording the Prometheus metrics costs a key-authenticated page read.

In one process, the ASGI app is called directly (no network, no HTTP parser) for a cached
100-row page: the whole request path, key check, access decision, page cache, audit journal
and response. The same requests are timed with the metrics recorded as `tidegate serve`
records them (prometheus-client's multiprocess files), and with the recording functions
replaced by no-ops: the yardstick. Prints microseconds per request (the best of ten
interleaved rounds each) and the ratio.

    .venv/bin/python bench/metrics_cost.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tidegate-bench-metrics-"))

from tidegate import metrics  # noqa: E402
from tidegate.api.app import create_app  # noqa: E402
from tidegate.config import Settings  # noqa: E402
from tidegate.core.principal import Principal  # noqa: E402
from tidegate.core.scopes import preset_scopes  # noqa: E402
from tidegate.credentials import service as keys_service  # noqa: E402
from tidegate.db.engine import migrate, session_scope  # noqa: E402
from tidegate.orgs import service as orgs  # noqa: E402

RECORDERS = ("request_done", "key_check", "cache_lookup")


def build() -> tuple[object, object]:
    home = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    url = f"sqlite:///{home / 'tidegate.db'}"
    migrate(url)
    settings = Settings(
        home=home,
        database_url=url,
        redis_url=None,
        pepper=secrets.token_hex(32).encode(),
        session_key=secrets.token_hex(32).encode(),
        trusted_proxies=(),
    )
    with session_scope(url) as session:
        created = orgs.create_organization(session, "bench", "admin@example.com", None)
        admin = Principal.for_user(created.org.id, created.admin.id, created.admin.role)

    def fresh_headers() -> dict[str, str]:
        """A new key's headers: a key may make 10,000 requests a minute, a round at most that."""
        with session_scope(url) as session:
            key = keys_service.create_key(
                session,
                admin,
                keys_service.KeyRequest(
                    name=f"bench-{secrets.token_hex(3)}",
                    scopes=preset_scopes("full_access", "admin"),
                    rate_limit_per_minute=10_000,
                ),
                pepper=settings.pepper,
            )
        return {"authorization": f"Bearer {key.secret}", "x-tenant-id": created.org.id}

    return create_app(settings), fresh_headers


async def call(app, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"page=1&page_size=100",
        "headers": [(k.encode(), v.encode()) for k, v in {**headers, "content-type": "application/json"}.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status, chunks = 0, []

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def timed(app, path: str, headers: dict[str, str], requests: int) -> float:
    await call(app, "GET", path, headers)  # the key read once (then cached, as in a warm server)
    began = time.perf_counter()
    for _ in range(requests):
        status, _ = await call(app, "GET", path, headers)
        assert status == 200, status
    return (time.perf_counter() - began) / requests * 1e6


async def main(requests: int) -> None:
    app, fresh_headers = build()
    headers = fresh_headers()
    import orjson

    rows = orjson.dumps({"name": "bench", "rows": [{"region": "US", "n": i} for i in range(1000)]})
    status, body = await call(app, "POST", "/api/v1/sources", headers, rows)
    assert status == 201, body
    path = f"/api/v1/sources/{orjson.loads(body)['id']}/data"
    await timed(app, path, headers, 500)  # warm: caches, code paths
    recorded = {name: getattr(metrics, name) for name in RECORDERS}
    with_metrics, without = [], []
    for _ in range(10):  # interleaved rounds: the machine's load shifts under both alike
        for name, fn in recorded.items():
            setattr(metrics, name, fn)
        with_metrics.append(await timed(app, path, fresh_headers(), requests // 20))
        for name in RECORDERS:
            setattr(metrics, name, lambda *args, **kwargs: None)
        without.append(await timed(app, path, fresh_headers(), requests // 20))
    on, off = min(with_metrics), min(without)  # the least disturbed round of each
    print(f"multiprocess metrics: {metrics.is_multiprocess()}")
    print(f"cached page read, metrics recorded : {on:8.1f} us/request")
    print(f"cached page read, metrics no-ops   : {off:8.1f} us/request (yardstick)")
    print(f"ratio (recorded / yardstick)       : {on / off:8.3f}   (+{on - off:.1f} us per request)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000, help="in all (at most 50,000: 10,000 a key)")
    asyncio.run(main(parser.parse_args().requests))
