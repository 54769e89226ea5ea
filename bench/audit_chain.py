"""Benchmark: what the tamper-evident audit chain costs a request, and what chaining costs.

1. Requests. In one process, the ASGI app is called directly (no network, no HTTP parser)
   for `GET /api/v1/keys` with a key: the whole request path, key check, audit journal and
   response, while the journal ships its events every second as in a server. The same
   requests are timed with the chainer running in a thread of this process (its worst
   case: `create_app` on its own; under `tidegate serve` it runs in the shipper process,
   off the workers' GIL entirely) and without it: the yardstick. Interleaved rounds, the
   best of each; prints microseconds per request and the ratio.
2. Chaining. N events inserted, then chained and signed by one `chain_round`: microseconds
   per event, next to the yardstick of inserting them (what shipping them cost).

    .venv/bin/python bench/audit_chain.py [--requests 20000] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from tidegate.api.app import create_app
from tidegate.audit import shipper
from tidegate.audit.chainer import chain_round, run_if_due
from tidegate.audit.models import AuditEvent
from tidegate.audit.record import event_row
from tidegate.audit.signing import load_signer
from tidegate.config import Settings
from tidegate.core.principal import Principal
from tidegate.core.scopes import preset_scopes
from tidegate.credentials import service as keys_service
from tidegate.credentials.usage import record_key_use
from tidegate.db.engine import migrate, session_scope
from tidegate.orgs import service as orgs


def build():
    home = Path(tempfile.mkdtemp(prefix="tidegate-bench-chain-"))
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

    return settings, create_app(settings), fresh_headers, created.org.id


async def call(app, path: str, headers: dict[str, str]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def timed(app, headers: dict[str, str], requests: int) -> float:
    await call(app, "/api/v1/keys", headers)
    began = time.perf_counter()
    for _ in range(requests):
        assert await call(app, "/api/v1/keys", headers) == 200
    return (time.perf_counter() - began) / requests * 1e6


async def requests_bench(requests: int, rounds: int = 4) -> None:
    """Interleaved rounds (the machine's load shifts under both alike), the best of each."""
    per_round = requests // (4 * rounds)
    # As `tidegate serve` runs: the app only appends and rotates its journal; a shipper
    # process ships it, and chains (`chain_key`) or not (the yardstick).
    settings, app, fresh_headers, _ = build()
    app.state.journal.start(ship=False)
    await timed(app, fresh_headers(), 500)  # warm
    served: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for chain in (True, False):
            process = shipper.ShipperProcess(
                settings.audit_dir,
                settings.database_url,
                after_insert=record_key_use,
                chain_key=(str(settings.home), None) if chain else None,
            )
            process.start()
            time.sleep(1.0)  # the child imports and ships once
            served[chain].append(await timed(app, fresh_headers(), per_round))
            process.stop()
    app.state.journal.close()
    # As `create_app` on its own runs: shipping, then chaining, in the journal's thread.
    settings, app, fresh_headers, _ = build()
    signer = load_signer(settings.home)
    chaining = [True]
    app.state.journal.start(ship=True, after_ship=lambda: chaining[0] and run_if_due(settings.database_url, signer))
    await timed(app, fresh_headers(), 500)
    threaded: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for chain in (True, False):
            chaining[0] = chain
            threaded[chain].append(await timed(app, fresh_headers(), per_round))
    app.state.journal.close()
    for label, results in (
        ("shipper process (tidegate serve) ", served),
        ("journal thread (create_app alone)", threaded),
    ):
        on, off = min(results[True]), min(results[False])
        print(f"{label}: GET /api/v1/keys, chainer {on:7.1f} us/request, none (yardstick) {off:7.1f}: ", end="")
        print(f"ratio {on / off:5.3f} ({on - off:+.1f} us)")


def chaining_bench(events: int) -> None:
    settings, _app, _headers, org_id = build()
    signer = load_signer(settings.home)
    rows = [
        event_row(
            org_id=org_id,
            actor_type="api_key",
            actor_id="key_bench",
            key_id="key_bench",
            action="api.request",
            method="GET",
            path="/api/v1/keys",
            status=200,
            ip_address="127.0.0.1",
            user_agent="bench/1",
            request_id=secrets.token_hex(8),
            details={"rows_returned": 100, "source_id": "src_bench"},
        )
        for _ in range(events)
    ]
    began = time.perf_counter()
    with session_scope(settings.database_url) as session:
        for start in range(0, events, 500):  # the shipper's batch size
            session.execute(insert(AuditEvent), rows[start : start + 500])
    inserted = (time.perf_counter() - began) / events * 1e6
    began = time.perf_counter()
    chained = chain_round(settings.database_url, signer, force_sign=True)
    chaining = (time.perf_counter() - began) / events * 1e6
    assert chained >= events, chained
    print(f"inserting {events} events (the shipper's work, yardstick) : {inserted:8.1f} us/event")
    print(f"chaining and signing them (one chain_round)        : {chaining:8.1f} us/event")
    print(f"ratio (chaining / inserting)                       : {chaining / inserted:8.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=20_000)
    arguments = parser.parse_args()
    asyncio.run(requests_bench(arguments.requests))
    chaining_bench(arguments.events)
