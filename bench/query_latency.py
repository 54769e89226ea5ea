"""Latency of small SQL queries against a real `tidegate serve`: p50/p90 of N sequential ones.

PYTHONPATH=.:tests python bench/query_latency.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from server import running_server


def main(count: int = 200) -> None:
    rows = [{"region": ("US", "EU", "APAC")[i % 3], "amount": i} for i in range(2000)]
    with tempfile.TemporaryDirectory() as base, running_server(Path(base)) as server:
        _, key = server.new_admin_key()
        with server.client(key, timeout=60) as http:
            source_id = http.post("/sources", json={"name": "numbers", "rows": rows}).json()["id"]
            sql = {"sql": "SELECT region, sum(amount) AS total FROM data GROUP BY region ORDER BY region"}
            for _ in range(10):  # warm up: the pool, the filtered table, the caches
                assert http.post(f"/sources/{source_id}/query", json=sql).status_code == 200
            times = []
            for _ in range(count):
                started = time.perf_counter()
                resp = http.post(f"/sources/{source_id}/query", json=sql)
                times.append(time.perf_counter() - started)
                assert resp.status_code == 200, resp.text
    times.sort()
    print(
        f"{count} sequential small queries: p50 {statistics.median(times) * 1000:.2f} ms, "
        f"p90 {times[int(count * 0.9)] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
