"""The step engine: every step computed under the READER's access, never the author's."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from tidegate.analysis import engine
from tidegate.analysis.engine import ProjectPlan, StepCancelled, StepFailed, StepSpec
from tidegate.errors import InvalidRequest, NotFound

BY_REGION = "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region"


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


@pytest.fixture
def two_readers(world):
    """Readers us (sees US rows) and eu (sees EU rows) of one project of the admin's."""
    us, eu = world.user(), world.user()
    source = world.source(shared_with=[us, eu])
    world.policy("region", ["US"], users=[us])
    world.policy("region", ["EU"], users=[eu])
    project = world.project(
        {"sales": source},
        [
            ("by_region", BY_REGION),
            ("big", "SELECT * FROM by_region WHERE total > 6"),
            ("joined", "SELECT b.region, b.total, count(*) AS n FROM big b JOIN Sales s USING (region) GROUP BY ALL"),
        ],
        shared_with=[us, eu],
    )
    return world, project.id, source, us, eu


def test_two_readers_get_their_own_rows_from_the_same_step(two_readers):
    world, project_id, _, us, eu = two_readers
    as_us, as_eu = world.plan(world.reader(us), project_id), world.plan(world.reader(eu), project_id)
    step = world.step_id(as_us, "by_region")
    assert rows(engine.evaluate(as_us, step)) == [{"region": "US", "total": 30}]
    assert rows(engine.evaluate(as_eu, step)) == [{"region": "EU", "total": 12}]
    # The author (admin, no policy) sees every row: never what a reader gets.
    as_admin = world.plan(world.admin, project_id)
    assert [r["region"] for r in rows(engine.evaluate(as_admin, step))] == ["APAC", "EU", "US"]


def test_the_cache_never_crosses_readers(two_readers):
    world, project_id, _, us, eu = two_readers
    as_us, as_eu = world.plan(world.reader(us), project_id), world.plan(world.reader(eu), project_id)
    step = world.step_id(as_us, "joined")
    first = engine.evaluate(as_us, step)
    assert engine.evaluate(as_us, step) is first  # cached for this reader
    cached = len(engine._cache)
    assert rows(engine.evaluate(as_eu, step)) == [{"region": "EU", "total": 12, "n": 2}]
    assert len(engine._cache) == 2 * cached  # the other reader got entries of its own
    assert rows(engine.evaluate(as_us, step)) == [{"region": "US", "total": 30, "n": 2}]


def test_step_over_step_reads_earlier_steps_as_the_reader(two_readers):
    world, project_id, _, us, eu = two_readers
    as_us, as_eu = world.plan(world.reader(us), project_id), world.plan(world.reader(eu), project_id)
    big = world.step_id(as_us, "big")
    assert rows(engine.evaluate(as_us, big)) == [{"region": "US", "total": 30}]
    assert rows(engine.evaluate(as_eu, big)) == [{"region": "EU", "total": 12}]


def test_a_policy_edit_is_seen_by_the_next_evaluate(world):
    reader = world.user()
    source = world.source(shared_with=[reader])
    policy = world.policy("region", ["US"], users=[reader])
    project = world.project({"sales": source}, [("by_region", BY_REGION)], shared_with=[reader])
    before = world.plan(world.reader(reader), project.id)
    step = world.step_id(before, "by_region")
    assert rows(engine.evaluate(before, step)) == [{"region": "US", "total": 30}]
    world.edit_policy(policy, "region", ["APAC"])
    after = world.plan(world.reader(reader), project.id)
    assert rows(engine.evaluate(after, step)) == [{"region": "APAC", "total": 1}]


def test_a_new_source_version_is_seen_by_the_next_evaluate(world):
    source = world.source()
    project = world.project({"sales": source}, [("total", "SELECT sum(amount) AS s FROM sales")])
    plan = world.plan(world.admin, project.id)
    step = world.step_id(plan, "total")
    assert rows(engine.evaluate(plan, step)) == [{"s": 43}]
    world.replace_rows(source, [{"region": "US", "product": "z", "amount": 100}])
    assert rows(engine.evaluate(world.plan(world.admin, project.id), step)) == [{"s": 100}]


def test_names_are_case_insensitive(world):
    source = world.source()
    project = world.project(
        {"Sales": source}, [("First", "SELECT count(*) AS n FROM SALES"), ("second", "SELECT n FROM first")]
    )
    plan = world.plan(world.admin, project.id)
    assert rows(engine.evaluate(plan, world.step_id(plan, "second"))) == [{"n": 5}]


def test_a_deleted_source_fails_the_steps_that_read_it(world):
    source, other = world.source(), world.source(name="other")
    project = world.project(
        {"sales": source, "other": other},
        [("gone", "SELECT * FROM sales"), ("after", "SELECT * FROM gone"), ("fine", "SELECT count(*) AS n FROM other")],
    )
    world.delete_source(source)
    plan = world.plan(world.admin, project.id)
    assert plan.sources["sales"] == f"source {source} was deleted"
    with pytest.raises(StepFailed) as failed:
        engine.evaluate(plan, world.step_id(plan, "gone"))
    assert failed.value.code == "step_failed" and "was deleted" in failed.value.message
    with pytest.raises(StepFailed) as failed:
        engine.evaluate(plan, world.step_id(plan, "after"))
    assert "'gone'" in failed.value.message and "was deleted" in failed.value.message
    assert rows(engine.evaluate(plan, world.step_id(plan, "fine"))) == [{"n": 5}]


def test_a_source_the_reader_cannot_open_fails_the_step_not_the_plan(world):
    reader = world.user()
    mine, hidden = world.source(shared_with=[reader]), world.source(name="hidden")
    project = world.project(
        {"mine": mine, "hidden": hidden},
        [("a", "SELECT count(*) AS n FROM mine"), ("b", "SELECT count(*) AS n FROM hidden")],
        shared_with=[reader],
    )
    plan = world.plan(world.reader(reader), project.id)
    assert plan.sources["hidden"] == f"you cannot open source {hidden}"
    assert rows(engine.evaluate(plan, world.step_id(plan, "a"))) == [{"n": 5}]
    with pytest.raises(StepFailed, match="cannot open source"):
        engine.evaluate(plan, world.step_id(plan, "b"))


def test_a_project_the_reader_cannot_open_is_not_found(world):
    stranger = world.user()
    project = world.project({}, [])
    with pytest.raises(NotFound):
        world.plan(world.reader(stranger), project.id)


def test_bad_sql_names_where_the_parser_stopped():
    with pytest.raises(InvalidRequest) as bad:
        engine.validate_step_sql("SELECT region,\n  FROM sales WHERE", ["sales"])
    assert bad.value.code == "invalid_step_sql"
    assert "at line 2, column" in bad.value.message
    with pytest.raises(InvalidRequest) as bad:
        engine.validate_step_sql("\n\nSELECT a FROM sales WHERE (", ["sales"])
    assert bad.value.code == "invalid_step_sql"
    assert "line 3" in bad.value.message or "position" in bad.value.message


def test_unknown_table_is_named():
    with pytest.raises(InvalidRequest) as bad:
        engine.validate_step_sql("SELECT * FROM sales JOIN refunds USING (id)", ["sales", "earlier"])
    assert bad.value.code == "unknown_table"
    assert '"refunds"' in bad.value.message


def test_validated_sql_is_what_to_store():
    assert engine.validate_step_sql("  SELECT * FROM Sales;  ", ["sales"]) == "SELECT * FROM Sales"
    sql = "WITH t AS (SELECT * FROM sales) SELECT * FROM t, earlier"
    assert engine.validate_step_sql(sql, ["sales", "earlier"]) == sql
    assert engine.referenced_names(sql) == frozenset({"sales", "earlier"})


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/srv/data/x.parquet')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM '/etc/passwd'",
        "ATTACH '/tmp/x.db' AS x",
        "COPY sales TO '/tmp/out.csv'",
        "SELECT * FROM sales; SELECT 1",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM main.sales",
        "SELECT getenv('HOME')",
        "CREATE TABLE t AS SELECT * FROM sales",
        "INSTALL httpfs",
        "SELECT * FROM pg_settings",
    ],
)
def test_files_catalogs_and_other_statements_are_refused(sql):
    with pytest.raises(InvalidRequest) as bad:
        engine.validate_step_sql(sql, ["sales"])
    assert bad.value.code in ("invalid_step_sql", "unknown_table")


def test_stored_sql_is_checked_again_when_it_runs(world):
    source = world.source()
    project = world.project({"sales": source}, [("evil", "SELECT * FROM read_csv('/etc/passwd')")])
    plan = world.plan(world.admin, project.id)
    with pytest.raises(StepFailed, match="not allowed"):
        engine.evaluate(plan, world.step_id(plan, "evil"))


def test_a_step_reads_only_earlier_steps(world):
    source = world.source()
    project = world.project({"sales": source}, [("a", "SELECT * FROM b"), ("b", "SELECT * FROM sales")])
    plan = world.plan(world.admin, project.id)
    with pytest.raises(StepFailed, match='Unknown table "b"'):
        engine.evaluate(plan, world.step_id(plan, "a"))
    assert engine.evaluate(plan, world.step_id(plan, "b")).num_rows == 5


def test_depends_on_a_later_step_is_refused():
    plan = ProjectPlan(
        "prj_x",
        1,
        (StepSpec("stp_a", "a", "SELECT 1 AS x", 0, ("stp_b",)), StepSpec("stp_b", "b", "SELECT 2 AS x", 1)),
        {},
    )
    with pytest.raises(StepFailed, match="does not come before"):
        engine.evaluate(plan, "stp_a")
    assert rows(engine.evaluate(plan, "stp_b")) == [{"x": 2}]
    with pytest.raises(NotFound):
        engine.evaluate(plan, "stp_missing")


def test_a_failing_step_fails_the_steps_that_read_it(world):
    source = world.source()
    project = world.project(
        {"sales": source},
        [("bad", "SELECT CAST(product AS INTEGER) AS n FROM sales"), ("reads_bad", "SELECT sum(n) FROM bad")],
    )
    plan = world.plan(world.admin, project.id)
    with pytest.raises(StepFailed) as failed:
        engine.evaluate(plan, world.step_id(plan, "reads_bad"))
    assert "'reads_bad' reads step 'bad', which failed" in failed.value.message
    assert "Conversion" in failed.value.message or "convert" in failed.value.message.lower()


def test_results_past_the_row_cap_are_refused(world):
    source = world.source()
    project = world.project({"sales": source}, [("all", "SELECT * FROM sales")])
    plan = world.plan(world.admin, project.id)
    with pytest.raises(InvalidRequest) as big:
        engine.evaluate(plan, world.step_id(plan, "all"), max_rows=4)
    assert big.value.code == "result_too_large" and "4 rows" in big.value.message
    assert engine.evaluate(plan, world.step_id(plan, "all"), max_rows=5).num_rows == 5


def test_cancel_interrupts_a_long_query(world):
    source = world.source(rows=[{"k": i % 7, "v": i} for i in range(3000)])
    slow = "SELECT count(*) AS n FROM t a, t b, t c WHERE a.v + b.v + c.v = -1"
    project = world.project({"t": source}, [("slow", slow)])
    plan = world.plan(world.admin, project.id)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(StepCancelled) as stopped:
        engine.evaluate(plan, world.step_id(plan, "slow"), cancel=cancel)
    assert stopped.value.code == "run_cancelled"
    assert time.monotonic() - started < 2.0


def test_page_of():
    table = pa.table({"a": list(range(25)), "b": [f"x{i}" for i in range(25)]})
    page, total, headers = engine.page_of(table, 3, 10)
    assert total == 25 and headers == ["a", "b"] and [r["a"] for r in page] == list(range(20, 25))
    assert engine.page_of(table, 4, 10)[0] == []
    with pytest.raises(InvalidRequest):
        engine.page_of(table, 0, 10)


def test_names_must_be_identifiers():
    assert engine.check_name("sales_2024") == "sales_2024"
    for bad in ("2024", "a-b", "", "x" * 64, "a b"):
        with pytest.raises(InvalidRequest):
            engine.check_name(bad)


def test_run_step_goes_through_the_query_pool(two_readers):
    import asyncio

    from tidegate.config import QueryLimits
    from tidegate.data import querypool

    world, project_id, _, us, eu = two_readers
    limits = QueryLimits(timeout_seconds=20, workers=1, per_key=2, per_org=4)
    as_us, as_eu = world.plan(world.reader(us), project_id), world.plan(world.reader(eu), project_id)
    step = world.step_id(as_us, "joined")
    pool = querypool.pool_for(limits)
    try:
        got_us = asyncio.run(engine.run_step(limits, world.reader(us), as_us, step))
        got_eu = asyncio.run(engine.run_step(limits, world.reader(eu), as_eu, step))
        assert rows(got_us) == [{"region": "US", "total": 30, "n": 2}]
        assert rows(got_eu) == [{"region": "EU", "total": 12, "n": 2}]
        assert pool.admitted()["total"] == 0
    finally:
        pool.shutdown()
        querypool._pools.clear()


def test_one_computation_per_key_at_a_time(world):
    from tidegate.data import sandbox

    source = world.source()
    project = world.project({"sales": source}, [("by_region", BY_REGION), ("top", "SELECT * FROM by_region LIMIT 1")])
    plan = world.plan(world.admin, project.id)
    calls: list[str] = []

    def slow_execute(query, tables, **kwargs):
        calls.append(query.sql)
        time.sleep(0.3)
        return sandbox.run_tables(query, tables, **kwargs)

    results: list[pa.Table] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(engine.evaluate(plan, world.step_id(plan, "top"), execute=slow_execute))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(r is results[0] for r in results)
    assert len(calls) == 2  # by_region once, top once


def test_the_step_cache_is_bounded_by_bytes_and_takes_only_immutable_values():
    from tidegate.caching import ByteLRUCache

    cache: ByteLRUCache = ByteLRUCache(100, name="test", max_entry_fraction=0.5)
    small = pa.table({"a": [1]})
    assert cache.put("a", small, 40) and cache.put("b", small, 40)
    assert cache.get("a") is small  # now the most recently used
    assert cache.put("c", small, 40)  # 120 > 100: the least recently used ("b") goes
    assert cache.get("b") is None and cache.get("a") is small and len(cache) == 2 and cache.size_bytes == 80
    assert not cache.put("big", small, 51) and cache.get("big") is None  # over half: not kept
    with pytest.raises(TypeError):
        cache.put("rows", [{"a": 1}], 10)  # a list another thread could change


def test_a_key_reads_steps_within_its_own_policies_and_its_creators(world):
    reader = world.user()
    source = world.source(shared_with=[reader])
    world.policy("region", ["US", "EU"], users=[reader])
    narrower = world.policy("product", ["a"])
    project = world.project({"sales": source}, [("by_region", BY_REGION)], shared_with=[reader])
    step_plan = world.plan(world.reader(reader), project.id)
    step = world.step_id(step_plan, "by_region")
    assert rows(engine.evaluate(step_plan, step)) == [{"region": "EU", "total": 12}, {"region": "US", "total": 30}]
    key = world.key_reader(reader, [narrower])
    as_key = world.plan(key, project.id)
    assert rows(engine.evaluate(as_key, step)) == [{"region": "EU", "total": 5}, {"region": "US", "total": 10}]
