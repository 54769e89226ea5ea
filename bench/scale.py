"""Benchmark: the scale-out configuration (PostgreSQL + Redis, two nodes behind HAProxy).

Same data, policies and keys as bench/data_page.py (a 1,000,000-row source, two policies,
one key per wrk thread), on one throwaway PostgreSQL database and the shared Redis, with
rate limiting and exact revocation on. Measured in one run, on one machine:
- bare: the yardstick, a bare FastAPI endpoint returning 100 rows from memory, with as many
  uvicorn workers as the tidegate runs below have in all (direct, and behind the same HAProxy);
- two nodes (one worker each, own TIDEGATE_HOME, one shared data directory) behind HAProxy:
  page 1 and page 5,000;
- one node with `--workers 2` (the issue's configuration), page 1;
- a big source (default 10,000,000 rows, `--big-rows`): the first page after a write (one
  row appended through the API: a new version), p50 of `--writes` writes, and later pages.
Target (issue 13 §3): two nodes' page rate >= 0.8 x the bare rate at the same worker count;
first page after a write on 10M rows < 1 s p50, later pages like page 1.
Needs `wrk` and `haproxy` (Debian packages). Loopback only.

    .venv/bin/python bench/scale.py [--rows 1000000] [--big-rows 10000000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.data_page import WRK_THREADS, build_source, free_port, wait_up, wrk  # noqa: E402

BIN = Path(sys.executable).parent
PG_URL = os.environ.get("TIDEGATE_BENCH_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDEGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def start(args: list[str], env: dict[str, str], **options) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, start_new_session=True, **options)


def haproxy(port: int, node_ports: list[int]) -> subprocess.Popen:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"),
        "TIDEGATE_LB_BIND": f"127.0.0.1:{port}",
        "TIDEGATE_NODE1": f"127.0.0.1:{node_ports[0]}",
        "TIDEGATE_NODE2": f"127.0.0.1:{node_ports[1]}",
    }
    return start([shutil.which("haproxy") or "haproxy", "-db", "-q", "-f", str(HAPROXY_CFG)], env)


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of `pid` and each of its descendants, in MB (from /proc)."""
    found: dict[str, float] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        found[f"{current} {cmdline}"] = round(rss / 1024, 1)
    return found


def big_source(world: dict, rows: int, settings_env: dict[str, str]) -> tuple[str, str]:
    """A `rows`-row source (vectorized build) shared with the bench member, and an admin key
    that may write it: (source id, admin secret)."""
    from tidegate.config import get_settings
    from tidegate.core.principal import Principal
    from tidegate.core.scopes import preset_scopes
    from tidegate.credentials import service as keys
    from tidegate.data import service as sources
    from tidegate.data import storage
    from tidegate.db.engine import session_scope
    from tidegate.orgs.models import Organization, User

    settings = get_settings()
    # Built from one 100,000-row block (a multiple of 20: the region/tier pattern repeats),
    # its ids shifted per copy: seconds, not minutes, for 10M rows.
    block_rows = min(rows, 100_000)
    regions, tiers = ["US", "EU", "APAC", "LATAM"], ["gold", "silver", "bronze", "iron", "tin"]
    block_ids = pa.array(range(block_rows), pa.int64())
    block = {
        "region": pa.array([regions[i % 4] for i in range(block_rows)]),
        "tier": pa.array([tiers[i % 5] for i in range(block_rows)]),
    }
    batches = []
    for offset in range(0, rows, block_rows):
        ids = pc.add(block_ids, offset)
        amount = pc.multiply(pc.cast(ids, pa.float64()), 1.5)
        batches.append(
            pa.record_batch([ids, block["region"], block["tier"], amount], ["id", "region", "tier", "amount"])
        )
    table = pa.Table.from_batches(batches).slice(0, rows)
    with session_scope(settings.database_url) as session:
        org = session.get(Organization, world["org_id"])
        admin = session.query(User).filter(User.org_id == org.id, User.role == "admin").first()
        member = session.query(User).filter(User.org_id == org.id, User.role == "member").first()
        principal = Principal.for_user(org.id, admin.id, "admin")
        source = sources.create_source(session, principal, settings, name="huge", rows=[{"id": 0}])
        storage.write_new_version(session, source, table, append=False)
        sources.share_source(session, principal, source.id, member.id, "view")
        secret = keys.create_key(
            session,
            principal,
            keys.KeyRequest(name="writer", scopes=preset_scopes("full_access", "admin"), rate_limit_per_minute=10_000),
            pepper=settings.pepper,
        ).secret
        return source.id, secret


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y {tool}")
    base = Path(tempfile.mkdtemp(prefix="tidegate-scale-bench-"))
    db_name = f"tidegate_bench_{uuid.uuid4().hex[:10]}"
    admin_db = psycopg.connect(PG_URL, autocommit=True)
    admin_db.execute(f'CREATE DATABASE "{db_name}"')
    database_url = PG_URL.rsplit("/", 1)[0] + "/" + db_name
    homes = [base / "node1", base / "node2"]
    for home in homes:
        home.mkdir()
    (homes[0] / "data").mkdir(mode=0o700)
    (homes[1] / "data").symlink_to(homes[0] / "data")  # one shared data directory
    common = {
        "TIDEGATE_DATABASE_URL": database_url,
        "TIDEGATE_REDIS_URL": REDIS_URL,
        "TIDEGATE_PEPPER": secrets.token_hex(32),
        "TIDEGATE_SESSION_KEY": secrets.token_hex(32),
        "TIDEGATE_TRUSTED_PROXIES": "127.0.0.1",
        "TIDEGATE_ACCESS_LOG": "0",
        "TIDEGATE_LOG_LEVEL": "warning",
        "TIDEGATE_QUERY_WORKERS": "1",
    }
    os.environ.update(common)
    procs: list[subprocess.Popen] = []
    try:
        started = time.time()
        world = build_source(homes[0], args.rows)
        with psycopg.connect(database_url, autocommit=True) as conn:  # many keys of one member: no shared ceiling
            # Limits still counted in Redis on every request, but high enough never to refuse
            # in a bench of many rounds.
            conn.execute("UPDATE organizations SET user_rate_limit_per_minute = 100000000")
            conn.execute("UPDATE api_keys SET rate_limit_per_minute = 10000000")
        big_id, writer = big_source(world, args.big_rows, common)
        print(f"built {args.rows:,}- and {args.big_rows:,}-row sources in {time.time() - started:.1f}s")

        node_ports = [free_port(), free_port()]
        single_port, bare_port, lb_port, bare_lb_port = (free_port() for _ in range(4))
        for home, port in zip(homes, node_ports, strict=True):
            env = {**os.environ, **common, "TIDEGATE_HOME": str(home)}
            procs.append(start([str(BIN / "tidegate"), "serve", "--port", str(port)], env))
        bare = [str(BIN / "uvicorn"), "bench.bare_app:app", "--log-level", "warning", "--no-access-log"]
        procs.append(start([*bare, "--port", str(bare_port), "--workers", "2"], dict(os.environ), cwd=ROOT))
        procs.append(haproxy(lb_port, node_ports))
        for port in node_ports:
            wait_up(f"http://127.0.0.1:{port}/healthz")
        wait_up(f"http://127.0.0.1:{bare_port}/rows")
        wait_up(f"http://127.0.0.1:{lb_port}/healthz")
        time.sleep(2.5)  # HAProxy marks both nodes up after two checks ("rise 2", 1 s apart)

        lb = f"http://127.0.0.1:{lb_port}/api/v1/sources/{world['source_id']}/data?page_size=100"
        tenant = {"X-Tenant-ID": world["org_id"]}
        run_keys = [world["keys"][1 + i * WRK_THREADS : 1 + (i + 1) * WRK_THREADS] for i in range(3)]
        warm = {"Authorization": f"Bearer {world['keys'][0]}", **tenant}
        for page in (1, 5000):
            for _ in range(4):  # both nodes, each worker
                assert httpx.get(lb + f"&page={page}", headers=warm, timeout=60).status_code == 200

        # The machine is shared: each round runs the yardstick and tidegate back to back, and
        # the ratios are taken per round (the median is printed).
        bare_url = f"http://127.0.0.1:{bare_port}/rows"
        procs.append(haproxy(bare_lb_port, [bare_port, bare_port]))  # the bare app behind the same hop
        wait_up(f"http://127.0.0.1:{bare_lb_port}/rows")
        rounds: list[dict[str, dict]] = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    "bare": wrk(bare_url, args.seconds, args.connections, {}),
                    "two_nodes_page_1": wrk(lb + "&page=1", args.seconds, args.connections, tenant, run_keys[0]),
                    "bare_behind_haproxy": wrk(
                        f"http://127.0.0.1:{bare_lb_port}/rows", args.seconds, args.connections, {}
                    ),
                    "two_nodes_page_5000": wrk(lb + "&page=5000", args.seconds, args.connections, tenant, run_keys[1]),
                }
            )

        results: dict[str, dict] = {"node1_rss_mb": rss_mb(procs[0].pid)}

        # One node, two workers (the configuration), once the two nodes are gone.
        for proc in procs[:2]:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        env = {**os.environ, **common, "TIDEGATE_HOME": str(homes[0])}
        procs[0] = start([str(BIN / "tidegate"), "serve", "--port", str(single_port), "--workers", "2"], env)
        procs.pop(1)
        wait_up(f"http://127.0.0.1:{single_port}/healthz")
        one = f"http://127.0.0.1:{single_port}/api/v1/sources/{world['source_id']}/data?page_size=100"
        for _ in range(4):
            httpx.get(one + "&page=1", headers=warm, timeout=60)
        for r in rounds:
            r["bare_again"] = wrk(bare_url, args.seconds, args.connections, {})
            r["one_node_2_workers_page_1"] = wrk(one + "&page=1", args.seconds, args.connections, tenant, run_keys[2])

        # First page after a write on the big source, then later pages (read as the member).
        big = f"http://127.0.0.1:{single_port}/api/v1/sources/{big_id}"
        write_headers = {"Authorization": f"Bearer {writer}", **tenant}
        first, later = [], []
        with httpx.Client(timeout=120) as http:
            for i in range(args.writes):
                written = http.post(big + "/rows", json={"rows": [{"id": -i, "region": "US"}]}, headers=write_headers)
                assert written.status_code == 200, written.text
                t0 = time.perf_counter()
                page = http.get(big + "/data?page_size=100&page=1", headers=warm)
                first.append(time.perf_counter() - t0)
                assert page.status_code == 200 and len(page.json()["data"]) == 100, page.text[:300]
                for n in (2, 3, 1000, 50_000):
                    t0 = time.perf_counter()
                    assert http.get(big + f"/data?page_size=100&page={n}", headers=warm).status_code == 200
                    later.append(time.perf_counter() - t0)
        results["big_first_page_after_write"] = {"p50_ms": statistics.median(first) * 1000, "max_ms": max(first) * 1000}
        results["big_later_pages"] = {"p50_ms": statistics.median(later) * 1000, "max_ms": max(later) * 1000}
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait(timeout=30)
        from tidegate.db.engine import get_engine

        get_engine(os.environ["TIDEGATE_DATABASE_URL"]).dispose()
        admin_db.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        shutil.rmtree(base, ignore_errors=True)

    print(json.dumps({"rounds": rounds, **results}, indent=2))

    def median(name: str, key: str = "rps") -> float:
        return statistics.median(r[name][key] for r in rounds)

    def ratio(name: str, yardstick: str = "bare") -> float:
        return statistics.median(r[name]["rps"] / r[yardstick]["rps"] for r in rounds)

    rows = [
        ("bare FastAPI, 2 workers (yardstick)", "bare", "bare"),
        ("bare FastAPI, 2 workers, behind HAProxy", "bare_behind_haproxy", "bare"),
        ("2 nodes x 1 worker behind HAProxy, page 1", "two_nodes_page_1", "bare"),
        ("2 nodes x 1 worker behind HAProxy, page 5,000", "two_nodes_page_5000", "bare"),
        ("1 node, `--workers 2`, page 1", "one_node_2_workers_page_1", "bare_again"),
    ]
    print(
        f"\n{args.rounds} rounds of {args.seconds} s, {args.connections} connections; medians; vs bare: median of per-round ratios"
    )
    print(f"| run (PostgreSQL + Redis, {os.cpu_count()} cores) | req/s | p50 ms | p99 ms | vs bare |")
    print("|---|---:|---:|---:|---:|")
    for label, name, yardstick in rows:
        print(
            f"| {label} | {median(name):,.0f} | {median(name, 'p50_ms'):.2f} | {median(name, 'p99_ms'):.2f} | "
            f"{ratio(name, yardstick):.2f} |"
        )
    non_2xx = sum(r[name]["non_2xx"] for r in rounds for _, name, _ in rows)
    f, later = results["big_first_page_after_write"], results["big_later_pages"]
    print(f"| {args.big_rows:,}-row source: first page after a write | | {f['p50_ms']:.0f} | max {f['max_ms']:.0f} | |")
    print(
        f"| {args.big_rows:,}-row source: later pages (2, 3, 1,000, 50,000) | | {later['p50_ms']:.1f} | max {later['max_ms']:.1f} | |"
    )
    print(
        f"\ntwo nodes / bare: {ratio('two_nodes_page_1'):.2f} (target >= 0.80); behind the same HAProxy: "
        f"{ratio('two_nodes_page_1', 'bare_behind_haproxy'):.2f}; non-2xx answers: {non_2xx}"
    )


if __name__ == "__main__":
    main()
