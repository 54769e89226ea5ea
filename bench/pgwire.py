"""The PostgreSQL endpoint against REST, same server, same run.

1. A filtered 100-row SELECT: p50/p90 over the wire (psycopg, extended protocol) and the same
   SQL through `POST /sources/{id}/query`.
2. A 1,000,000-row fetch through a server-side cursor (DECLARE/FETCH 10,000 at a time) and
   the same rows as one plain SELECT: rows/s at the client, and the peak resident memory
   (VmHWM) of the endpoint's process, of its query workers, and of the largest server process
   (the HTTP worker that took the 1,000,000 rows in is usually that one).

PYTHONPATH=.:tests python bench/pgwire.py [N] [ROWS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from server import free_port, running_server

CHUNK = 100_000  # the most rows one request may add


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split()
            out += [int(c) for c in children]
            todo += [int(c) for c in children]
    return out


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _listener(port: int) -> int:
    """The process listening on 127.0.0.1:`port` (the endpoint's)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [str(fd.readlink()) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            return int(proc.name)
    raise RuntimeError(f"nothing listens on port {port}")


def _pcts(times: list[float]) -> str:
    times = sorted(times)
    return f"p50 {statistics.median(times) * 1000:.2f} ms, p90 {times[int(len(times) * 0.9)] * 1000:.2f} ms"


def main(count: int = 200, rows: int = 1_000_000) -> None:
    pg_port = free_port()
    with (
        tempfile.TemporaryDirectory() as base,
        running_server(Path(base), extra_env={"TIDEGATE_PG_PORT": str(pg_port)}) as server,
    ):
        _, key = server.new_admin_key(rate_limit_per_minute=10_000)
        with server.client(key, timeout=300) as http:
            small = [{"region": ("US", "EU", "APAC")[i % 3], "amount": i} for i in range(3000)]
            source_id = http.post("/sources", json={"name": "numbers", "rows": small}).json()["id"]
            first = [{"n": i, "label": f"row {i}"} for i in range(min(CHUNK, rows))]
            big_id = http.post("/sources", json={"name": "big", "rows": first}).json()["id"]
            for start in range(CHUNK, rows, CHUNK):
                chunk = [{"n": i, "label": f"row {i}"} for i in range(start, min(start + CHUNK, rows))]
                assert http.post(f"/sources/{big_id}/rows", json={"rows": chunk}).status_code == 200
            sql = "SELECT region, amount FROM {t} WHERE region = 'US' ORDER BY amount LIMIT 100"
            body = {"sql": sql.format(t="data"), "page_size": 100}
            rest = []
            for i in range(count + 10):
                started = time.perf_counter()
                resp = http.post(f"/sources/{source_id}/query", json=body)
                assert resp.status_code == 200 and len(resp.json()["data"]) == 100, resp.text
                if i >= 10:  # warmed up
                    rest.append(time.perf_counter() - started)
        dsn = dict(host="127.0.0.1", port=pg_port, user="bench", password=key, dbname=server.org_id, sslmode="require")
        with psycopg.connect(**dsn, autocommit=True) as conn:
            wire = []
            for i in range(count + 10):
                started = time.perf_counter()
                got = conn.execute(sql.format(t="numbers")).fetchall()
                assert len(got) == 100
                if i >= 10:
                    wire.append(time.perf_counter() - started)
        print(f"filtered 100-row SELECT, {count} sequential: REST {_pcts(rest)}; wire {_pcts(wire)}")
        with psycopg.connect(**dsn, autocommit=False) as conn, conn.cursor(name="bench") as cursor:
            cursor.itersize = 10_000
            started = time.perf_counter()
            cursor.execute("SELECT n, label FROM big")
            fetched = sum(1 for _ in cursor)
            seconds = time.perf_counter() - started
        assert fetched == rows
        print(f"{rows:,}-row fetch, server-side cursor: {fetched / seconds:,.0f} rows/s ({seconds:.1f} s)")
        with psycopg.connect(**dsn, autocommit=True) as conn:
            started = time.perf_counter()
            fetched = sum(1 for _ in conn.execute("SELECT n, label FROM big"))
            seconds = time.perf_counter() - started
        assert fetched == rows
        print(f"{rows:,}-row fetch, one SELECT: {fetched / seconds:,.0f} rows/s ({seconds:.1f} s)")
        endpoint = _listener(pg_port)
        workers = [pid for pid in _descendants(endpoint)]
        peak = max(_peak_kib(pid) for pid in _descendants(server.proc.pid))
        print(
            f"peak RSS: endpoint process {_peak_kib(endpoint) / 1024:.0f} MiB, its largest query worker "
            f"{max((_peak_kib(p) for p in workers), default=0) / 1024:.0f} MiB; largest server process {peak / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
