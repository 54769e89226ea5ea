"""The sandbox over several named tables (a project's step), here and in a worker process."""

from __future__ import annotations

import asyncio
import threading
import time

import pyarrow as pa
import pytest

from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.data import querypool, queryworker, sandbox
from tidegate.errors import InvalidRequest

ORDERS = pa.table({"id": [1, 2, 3], "customer": ["a", "b", "a"], "amount": [10, 20, 30]})
CUSTOMERS = pa.table({"customer": ["a", "b"], "country": ["US", "EU"]})
JOIN = "SELECT c.country, sum(o.amount) AS total FROM Orders o JOIN customers c USING (customer) GROUP BY 1 ORDER BY 1"
SLOW = "SELECT count(*) AS n FROM big a, big b, big c WHERE a.v + b.v + c.v = -1"
BIG = pa.table({"v": list(range(3000))})


def validated(sql: str, *names: str) -> sandbox.ValidatedQuery:
    return sandbox.validate_query(sql, sandbox.Relations.of(names))


def test_several_named_tables_in_process():
    query = validated(JOIN, "orders", "customers")
    result = sandbox.run_tables(query, {"orders": ORDERS, "Customers": CUSTOMERS})
    assert result.to_pylist() == [{"country": "EU", "total": 20}, {"country": "US", "total": 40}]


def test_only_the_named_relations_are_readable():
    with pytest.raises(sandbox.UnknownTable) as unknown:
        validated("SELECT * FROM data", "orders")
    assert unknown.value.table == "data" and unknown.value.code == "invalid_query"
    with pytest.raises(sandbox.UnknownTable):
        validated("WITH x AS (SELECT * FROM x) SELECT * FROM x", "orders")  # a CTE does not see itself
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM orders, glob('/*')",
        "SELECT * FROM main.orders",
    ):
        with pytest.raises(InvalidRequest, match="not allowed"):
            validated(sql, "orders")


def test_a_table_given_but_not_named_is_not_registered():
    query = validated("SELECT count(*) AS n FROM orders", "orders")
    # `customers` was not a relation the query was accepted to read: never registered.
    assert sandbox.run_tables(query, {"orders": ORDERS, "customers": CUSTOMERS}).to_pylist() == [{"n": 3}]
    assert "customers" not in query.relations


def test_parse_errors_say_where():
    with pytest.raises(sandbox.QueryRefused) as refused:
        validated("\n  SELECT a,\n FROM orders WHERE", "orders")
    assert refused.value.where is not None and refused.value.where.startswith("at line 3")


def test_row_cap_and_cancel_in_process():
    query = validated("SELECT * FROM orders", "orders")
    with pytest.raises(InvalidRequest) as big:
        sandbox.run_tables(query, {"orders": ORDERS}, max_rows=2)
    assert big.value.code == "result_too_large"
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as stopped:
        sandbox.run_tables(validated(SLOW, "big"), {"big": BIG}, cancel=cancel)
    assert stopped.value.code == "run_cancelled" and time.monotonic() - started < 2.0


@pytest.fixture
def worker():
    worker = queryworker.Worker(256 * 1024 * 1024, 2)
    yield worker
    worker.close()


def test_several_tables_through_a_real_worker_process(worker):
    orders, customers = queryworker.SharedTable.of(ORDERS), queryworker.SharedTable.of(CUSTOMERS)
    budget = sandbox.Budget.starting_now(30.0)
    job = queryworker.TablesJob(
        validated(JOIN, "orders", "customers"), (("orders", orders.token), ("customers", customers.token)), budget, 100
    )
    assert worker.run_tables(job, [orders, customers]).to_pylist() == [
        {"country": "EU", "total": 20},
        {"country": "US", "total": 40},
    ]
    # The same worker then runs a job over one of them and a new table, and a /query page.
    other = queryworker.SharedTable.of(pa.table({"customer": ["b"]}))
    job = queryworker.TablesJob(
        validated("SELECT sum(amount) AS s FROM orders JOIN other USING (customer)", "orders", "other"),
        (("orders", orders.token), ("other", other.token)),
        budget,
        None,
    )
    assert worker.run_tables(job, [orders, other]).to_pylist() == [{"s": 20}]
    page = queryworker.Job(sandbox.validate_query("SELECT count(*) AS n FROM data"), 1, 10, budget, customers.token)
    result, total = worker.run(page, customers)
    assert result.to_pylist() == [{"n": 2}] and total == 1
    with pytest.raises(InvalidRequest) as big:
        worker.run_tables(
            queryworker.TablesJob(validated("SELECT * FROM orders", "orders"), (("orders", orders.token),), budget, 2),
            [orders],
        )
    assert big.value.code == "result_too_large" and worker.is_alive()


def test_cancel_stops_a_worker_query_within_a_second(worker):
    big = queryworker.SharedTable.of(BIG)
    job = queryworker.TablesJob(validated(SLOW, "big"), (("big", big.token),), sandbox.Budget.starting_now(30.0), None)
    worker.run_tables(
        queryworker.TablesJob(validated("SELECT 1 AS x FROM big LIMIT 1", "big"), job.tables, job.budget, None), [big]
    )  # started and warm: what follows measures the cancel only
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as stopped:
        worker.run_tables(job, [big], cancel)
    assert stopped.value.code == "run_cancelled"
    assert time.monotonic() - started < 2.0
    assert not worker.is_alive()  # killed: the pool replaces it


def test_the_pool_runs_tables_in_its_worker_processes(monkeypatch):
    pool = querypool.QueryPool(QueryLimits(timeout_seconds=30, workers=1, per_key=2, per_org=2))
    principal = Principal(org_id="org_1", user_id="usr_1", role="member", scopes=frozenset({"data:read"}))
    query = validated(JOIN, "orders", "customers")

    def not_here(*args, **kwargs):
        raise AssertionError("ran in the server process")

    def work(budget, execute):
        return execute(query, {"orders": ORDERS, "customers": CUSTOMERS}, budget=budget, max_rows=10)

    monkeypatch.setattr(sandbox, "run_tables", not_here)  # this process's copy only
    try:
        result = asyncio.run(pool.run_tables(principal, work))
        assert result.to_pylist() == [{"country": "EU", "total": 20}, {"country": "US", "total": 40}]
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()

        def slow(budget, execute):
            return execute(validated(SLOW, "big"), {"big": BIG}, budget=budget, cancel=cancel)

        with pytest.raises(InvalidRequest) as stopped:
            asyncio.run(pool.run_tables(principal, slow))
        assert stopped.value.code == "run_cancelled"
        # the cancelled worker was replaced: the next query runs
        assert asyncio.run(pool.run_tables(principal, work)).num_rows == 2
    finally:
        pool.shutdown()


def test_the_pool_starts_one_worker_and_grows_with_concurrent_queries():
    pool = querypool.QueryPool(QueryLimits(timeout_seconds=30, workers=2, warm_workers=1, per_key=4, per_org=4))
    principal = Principal(org_id="org_1", user_id="usr_1", role="member", scopes=frozenset({"data:read"}))
    cancel = threading.Event()

    def slow(budget, execute):
        return execute(validated(SLOW, "big"), {"big": BIG}, budget=budget, cancel=cancel)

    def alive() -> int:
        return sum(worker.is_alive() for worker in pool._workers)

    async def two_at_once():
        return await asyncio.gather(
            pool.run_tables(principal, slow), pool.run_tables(principal, slow), return_exceptions=True
        )

    try:
        deadline = time.monotonic() + 20
        while alive() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert alive() == 1  # the warm one only
        threading.Timer(3.0, cancel.set).start()
        results = asyncio.run(two_at_once())
        assert [getattr(r, "code", r) for r in results] == ["run_cancelled", "run_cancelled"]
        assert len(pool._workers) == 2  # a second one started for the second query, never a third
    finally:
        pool.shutdown()
