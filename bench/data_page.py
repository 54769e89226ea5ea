"""Benchmark: 100-row pages of a 1,000,000-row source through an authenticated qk_ key.

Prints requests/s and p50/p99 latency for page 1 and page 5,000 of a source filtered by two
access policies, next to the same run's figures for a bare FastAPI endpoint returning 100
rows from memory. Targets (issue 3): key rate >= half the bare rate; page 5,000 p50 <= 2x
page 1 p50. Also, not a target, random pages of random sizes: pages not rendered before.
tidegate runs as `tidegate serve` (one worker, its audit shipper beside it), the yardstick
as one uvicorn worker; wrk sends one key per thread (a key is capped at 10,000/minute).
Needs `wrk` (Debian package `wrk`). Loopback only.

    .venv/bin/python bench/data_page.py [--rows 1000000] [--seconds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


WRK_THREADS = 8
VISIBLE_REGIONS = ["US", "EU", "APAC"]
VISIBLE_TIERS = ["gold", "silver", "bronze", "iron"]

# Each wrk thread sends its own key, so that no key passes its 10,000 requests/minute limit
# (a real deployment has many clients; one key is capped at ~167 requests/s).
PER_THREAD_KEY = """
local keys = {%s}
local next_key = 1
function setup(thread)
  thread:set("key", keys[next_key])
  next_key = next_key %% #keys + 1
end
function init(args)
  if key ~= nil then wrk.headers["Authorization"] = "Bearer " .. key end
end
"""

# Every request a page not asked for before (almost): a random page of a random size, so
# the rendered-page cache rarely helps and each page is cut from the filtered rows anew.
RANDOM_PAGES = """
function request()
  local size = math.random(50, 150)
  return wrk.format(nil, wrk.path .. "&page_size=" .. size .. "&page=" .. math.random(1, math.floor(%d / size)))
end
"""


def wrk(
    url: str, seconds: int, connections: int, headers: dict[str, str], keys: list[str] = (), extra_lua: str = ""
) -> dict:
    args = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(PER_THREAD_KEY % ", ".join(f'"{k}"' for k in keys) + extra_lua)
        script.flush()
        out = subprocess.run(args + ["-s", script.name], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def build_source(home: Path, rows: int) -> dict:
    """Org, a member with two policies, a 1M-row source shared with them, and keys."""
    os.environ["TIDEGATE_HOME"] = str(home)
    from tidegate.access import policies
    from tidegate.config import get_settings
    from tidegate.core.principal import Principal
    from tidegate.credentials import service as keys
    from tidegate.data import engine, storage
    from tidegate.data import service as sources
    from tidegate.db.engine import migrate, session_scope
    from tidegate.orgs import service as orgs

    settings = get_settings()
    migrate(settings.database_url)
    engine.configure(data_dir=settings.data_dir)
    # The two policies let 3/4 x 4/5 = 60% of the rows through, so page 5,000 of 100 rows
    # (rows 499,901-500,000) exists on a 1,000,000-row source.
    regions = ["US", "EU", "APAC", "LATAM"]
    tiers = ["gold", "silver", "bronze", "iron", "tin"]
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "region": pa.array([regions[i % 4] for i in range(rows)]),
            "tier": pa.array([tiers[i % 5] for i in range(rows)]),
            "amount": pa.array([i * 1.5 for i in range(rows)]),
            "name": pa.array([f"row-{i}" for i in range(rows)]),
        }
    )
    with session_scope(settings.database_url) as session:
        made = orgs.create_organization(session, "bench", "admin@bench.test", None)
        admin = Principal.for_user(made.org.id, made.admin.id, "admin")
        member = orgs.create_user(session, None, made.org.id, email="m@bench.test", role="member")
        source = sources.create_source(session, admin, settings, name="big", rows=[{"id": 0}])
        storage.write_new_version(session, source, table, append=False)
        sources.share_source(session, admin, source.id, member.id, "view")
        p1 = policies.create_policy(
            session, admin, made.org.id, name="regions", row_filters=[{"column": "region", "values": VISIBLE_REGIONS}]
        )
        p2 = policies.create_policy(
            session, admin, made.org.id, name="tiers", row_filters=[{"column": "tier", "values": VISIBLE_TIERS}]
        )
        policies.assign_users(session, admin, p1, [member.id])
        policies.assign_users(session, admin, p2, [member.id])
        member_principal = Principal.for_user(made.org.id, member.id, "member")
        # One key per wrk thread per measured run: each stays under the 10,000/minute ceiling.
        secrets = [
            keys.create_key(
                session,
                member_principal,
                keys.KeyRequest(name=f"bench-{i}", scopes=["data:read"], rate_limit_per_minute=10_000),
                pepper=settings.pepper,
            ).secret
            for i in range(1 + 3 * WRK_THREADS)
        ]
    return {"org_id": made.org.id, "source_id": source.id, "keys": secrets}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    home = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    started = time.time()
    world = build_source(home, args.rows)
    print(f"built {args.rows:,}-row source in {time.time() - started:.1f}s")

    env = {**os.environ, "TIDEGATE_HOME": str(home), "TIDEGATE_ACCESS_LOG": "0", "TIDEGATE_LOG_LEVEL": "warning"}
    tg_port, bare_port = free_port(), free_port()
    procs = [
        subprocess.Popen([str(BIN / "tidegate"), "serve", "--port", str(tg_port)], env=env, start_new_session=True),
        subprocess.Popen(
            [
                str(BIN / "uvicorn"),
                "bench.bare_app:app",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ),
    ]
    try:
        wait_up(f"http://127.0.0.1:{tg_port}/healthz")
        wait_up(f"http://127.0.0.1:{bare_port}/rows")
        base = f"http://127.0.0.1:{tg_port}/api/v1/sources/{world['source_id']}/data?page_size=100"

        def headers(key):
            return {"Authorization": f"Bearer {key}", "X-Tenant-ID": world["org_id"]}

        run_keys = [world["keys"][1 + i * WRK_THREADS : 1 + (i + 1) * WRK_THREADS] for i in range(3)]
        tenant = {"X-Tenant-ID": world["org_id"]}
        check = httpx.get(base + "&page=1", headers=headers(world["keys"][0])).json()
        assert len(check["data"]) == 100 and all(
            r["region"] in VISIBLE_REGIONS and r["tier"] in VISIBLE_TIERS for r in check["data"]
        ), "filter not applied"
        print(f"filtered rows visible to the key: {check['total_count']:,} of {args.rows:,}")
        # Warm-up (first request materializes the filtered result for this version+filter).
        deep = httpx.get(base + "&page=5000", headers=headers(world["keys"][0]), timeout=60).json()
        assert len(deep["data"]) == 100, "page 5,000 must be a full page"

        results = {
            "bare": wrk(f"http://127.0.0.1:{bare_port}/rows", args.seconds, args.connections, {}),
            "key_page_1": wrk(base + "&page=1", args.seconds, args.connections, tenant, run_keys[0]),
            "key_page_5000": wrk(base + "&page=5000", args.seconds, args.connections, tenant, run_keys[1]),
            # Not a target: what a page costs when it has not been rendered before.
            "key_random_pages": wrk(
                base.replace("?page_size=100", "?format=json"),
                args.seconds,
                args.connections,
                tenant,
                run_keys[2],
                RANDOM_PAGES % check["total_count"],
            ),
        }
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)

    print(json.dumps(results, indent=2))
    bare, p1, p5k = results["bare"], results["key_page_1"], results["key_page_5000"]
    print(f"key rate / bare rate: {p1['rps'] / bare['rps']:.2f} (target >= 0.50)")
    print(f"page 5,000 p50 / page 1 p50: {p5k['p50_ms'] / p1['p50_ms']:.2f} (target <= 2.00)")


if __name__ == "__main__":
    main()
