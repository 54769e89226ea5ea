"""Live source reads (data/live.py) against the bare driver, in the same run.

A 100,000-row table in a scratch database of the local PostgreSQL; each line times a live
read (pool, READ ONLY transaction, statement timeout, row filter and paging as bound
parameters, typed rows; a page also counts its total) and the same statements sent with
psycopg on one open connection (the yardstick), and prints their ratio.

PYTHONPATH=.:tests python bench/live_pages.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from urllib.parse import urlparse

import psycopg
from server import scratch_postgres_database

from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import egress, live

ROWS = 100_000


def timed(fn, count: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(count: int = 200) -> None:
    with scratch_postgres_database("tidegate_live_bench") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE sales (id int, region text, amount float8)")
            conn.execute(
                "INSERT INTO sales SELECT i, (ARRAY['US','EU','APAC'])[1 + i % 3], i * 1.5 "
                f"FROM generate_series(1, {ROWS}) AS i"
            )
            conn.execute("CREATE INDEX ON sales (region)")
            conn.execute("ANALYZE sales")
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
        egress.configure(f"{host}:{port}")
        config = {
            "host": host,
            "port": port,
            "database": parsed.path.lstrip("/"),
            "user": parsed.username or "root",
            "table": "sales",
        }
        probe = live.target_for_config("postgresql", config, {})
        columns = tuple((c["name"], c["type"]) for c in live.read_columns(probe))
        target = live.Target("src_bench", probe.dialect, config, {}, None, columns)
        us = RowFilter(clauses=(Clause("region", frozenset({"US"})),))
        bare = psycopg.connect(url, autocommit=True)
        page_sql = "SELECT id, region, amount FROM sales WHERE region = %s LIMIT 100 OFFSET %s"
        count_sql = "SELECT count(*) FROM sales WHERE region = %s"

        def bare_page(offset: int) -> None:  # what an API page answers: its rows and the total
            bare.execute(page_sql, ["US", offset]).fetchall()
            bare.execute(count_sql, ["US"]).fetchall()

        cases = [
            (
                "page 1 (100 rows, filtered)",
                lambda: live.read_page(target, us, page=1, page_size=100),
                lambda: bare_page(0),
            ),
            (
                "page 300 (100 rows, filtered)",
                lambda: live.read_page(target, us, page=300, page_size=100),
                lambda: bare_page(29_900),
            ),
            (
                "count (filtered)",
                lambda: live.count(target, us),
                lambda: bare.execute(count_sql, ["US"]).fetchall(),
            ),
            (
                "query (group by)",
                lambda: live.run_query(
                    target, us, "SELECT region, sum(amount) AS s FROM data GROUP BY region", page=1, page_size=100
                ),
                lambda: bare.execute(
                    "SELECT region, sum(amount) FROM sales WHERE region = %s GROUP BY region", ["US"]
                ).fetchall(),
            ),
        ]
        print(f"{ROWS:,} rows; median of {count} sequential reads")
        print(f"{'read':32} {'live ms':>9} {'bare ms':>9} {'ratio':>7}")
        for name, ours, yardstick in cases:
            a, b = timed(ours, count), timed(yardstick, count)
            print(f"{name:32} {a * 1000:9.2f} {b * 1000:9.2f} {a / b:7.2f}")
        bare.close()
        live.close_pools()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
