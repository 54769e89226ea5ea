"""Reads through the engine: row filters (bound parameters only), pages, streams, cache."""

from __future__ import annotations

import csv
import datetime as dt
import inspect
import io
import threading

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidegate import jsonfmt
from tidegate.catalog.models import Source
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import engine, ingest, storage
from tidegate.errors import InvalidRequest

from .conftest import ALLOW, current, readable, rf

N = 1000
REGIONS = ["EU", "US", "APAC", "LATAM"]


def sample_table(n: int = N) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "region": [REGIONS[i % 4] for i in range(n)],
            "amount": [i * 0.5 for i in range(n)],
            "active": [i % 3 == 0 for i in range(n)],
            "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 10) for i in range(n)], pa.date32()),
        }
    )


@pytest.fixture
def version(Session, make_source):
    engine.clear_cache()
    source = make_source(sample_table())
    return current(Session, source.id)


def ids(rows):
    return [r["id"] for r in rows]


def all_rows(version, row_filter):
    rows, total = engine.read_page(readable(version, row_filter), page=1, page_size=10_000)
    assert total == len(rows)
    return rows


# ---------------------------------------------------------------------------------------
# The contract: rows are read with a SourceAccess (version and filter together), nothing else
# ---------------------------------------------------------------------------------------

READERS = [
    engine.read_page,
    engine.page_json,
    engine.count,
    engine.stream_csv,
    engine.stream_parquet,
    engine.run_query,
    engine.distinct_values,
]


@pytest.mark.parametrize("fn", READERS)
def test_the_access_is_the_only_required_positional_parameter_about_rows(fn):
    parameters = list(inspect.signature(fn).parameters.values())
    assert parameters[0].name == "access"
    assert parameters[0].default is inspect.Parameter.empty
    assert "row_filter" not in [p.name for p in parameters] and "version" not in [p.name for p in parameters]


def _call(fn, first):
    extra = {"run_query": ("select 1",), "distinct_values": ("region", 10)}.get(fn.__name__, ())
    paging = {"page": 1, "page_size": 10} if fn.__name__ in ("read_page", "page_json", "run_query") else {}
    return fn(first, *extra, **paging)


@pytest.mark.parametrize("fn", READERS)
@pytest.mark.parametrize("not_an_access", ["version", "filter", None, "dict"])
def test_something_else_than_a_source_access_is_refused(version, fn, not_an_access):
    given = {"version": version, "filter": ALLOW, None: None, "dict": {"region": ["EU"]}}[not_an_access]
    with pytest.raises(TypeError):
        _call(fn, given)


@pytest.mark.parametrize("bad_filter", [None, {"region": ["EU"]}])
def test_an_access_narrows_only_with_a_row_filter(version, bad_filter):
    with pytest.raises(TypeError):
        readable(version, bad_filter)


def test_a_source_access_cannot_be_built_outside_access_sources(version):
    from tidegate.access.sources import SourceAccess

    with pytest.raises(TypeError, match="only access.sources builds one"):
        SourceAccess(source=None, version=version, permission="owner", row_filter=ALLOW)


def test_narrowing_never_adds_rows(version):
    eu = readable(version, rf(region={"EU"}))
    assert engine.count(eu.narrowed(ALLOW)) == engine.count(eu) == N // 4
    assert engine.count(eu.narrowed(rf(region={"US"}))) == 0


# ---------------------------------------------------------------------------------------
# Filter semantics
# ---------------------------------------------------------------------------------------


def test_unrestricted_reads_everything_in_order(version):
    rows, total = engine.read_page(readable(version, ALLOW), page=1, page_size=5)
    assert total == N and ids(rows) == [0, 1, 2, 3, 4]
    assert rows[0] == {"id": 0, "region": "EU", "amount": 0.0, "active": True, "day": dt.date(2024, 1, 1)}


def test_values_of_one_clause_are_ored_and_clauses_anded(version):
    assert engine.count(readable(version, rf(region={"EU", "US"}))) == N // 2
    both = RowFilter(clauses=(Clause("region", frozenset({"EU", "US"})), Clause("active", frozenset({"true"}))))
    rows = all_rows(version, both)
    assert rows and all(r["region"] in ("EU", "US") and r["active"] for r in rows)
    assert len(rows) == sum(1 for i in range(N) if i % 4 in (0, 1) and i % 3 == 0)
    # RowFilter.both: the same column restricted twice must satisfy both value sets
    narrowed = rf(region={"EU", "US"}).both(rf(region={"US", "APAC"}))
    assert {r["region"] for r in all_rows(version, narrowed)} == {"US"}


@pytest.mark.parametrize(
    "column,value,expected",
    [
        ("id", "7", [7]),
        ("amount", "3.5", [7]),
        ("day", "2024-01-03", [i for i in range(N) if i % 10 == 2]),
        ("active", "false", [i for i in range(N) if i % 3]),
    ],
)
def test_values_compare_against_the_column_as_text(version, column, value, expected):
    assert ids(all_rows(version, rf(**{column: {value}}))) == expected


def test_deny_all_gives_zero_rows_everywhere(version):
    deny = RowFilter.deny("deny by default")
    assert engine.read_page(readable(version, deny), page=1, page_size=100) == ([], 0)
    assert engine.count(readable(version, deny)) == 0
    assert engine.distinct_values(readable(version, deny), "region", 10) == []
    assert b"".join(engine.stream_csv(readable(version, deny))).decode().splitlines() == [
        '"id","region","amount","active","day"'
    ]
    assert pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(readable(version, deny))))).num_rows == 0
    assert engine.run_query(readable(version, deny), "select count(*) as n from data", page=1, page_size=10)[0] == [
        {"n": 0}
    ]
    # deny wins over any clause
    assert engine.count(readable(version, rf(region={"EU"}).both(deny))) == 0


@pytest.mark.parametrize(
    "row_filter",
    [
        rf(Region={"EU"}),  # matching is exact: the policy layer resolves case before calling
        rf(nope={"EU"}),
        RowFilter(clauses=(Clause("region", frozenset()),)),
    ],
)
def test_clauses_that_cannot_match_fail_closed(version, row_filter):
    assert engine.count(readable(version, row_filter)) == 0
    assert engine.read_page(readable(version, row_filter), page=1, page_size=10) == ([], 0)


INJECTIONS = [
    "' OR 1=1 --",
    "EU' OR '1'='1",
    "EU'); DROP TABLE data; --",
    '" OR ""="',
    "EU\x00",
    "\\' OR 1=1",
    "ЕU",  # Cyrillic Е
    "EU\u200b",
    "😀' OR 'x'='x",
    "$1",
    "?",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_filter_values_are_bound_never_spliced(version, value):
    row_filter = rf(region={value})
    assert engine.count(readable(version, row_filter)) == 0
    assert engine.read_page(readable(version, row_filter), page=1, page_size=10) == ([], 0)
    assert engine.distinct_values(readable(version, row_filter), "region", 10) == []
    assert engine.run_query(readable(version, row_filter), "select count(*) as n from data", page=1, page_size=1)[
        0
    ] == [{"n": 0}]
    # next to a real value it changes nothing either
    assert engine.count(readable(version, rf(region={value, "EU"}))) == N // 4


WEIRD_NAMES = ['we"ird', "it's", "a b", "select", "x); DROP TABLE t; --", "Ünïcödé", "😀", '"', "region\\"]


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_column_names_are_quoted_identifiers(Session, make_source, name):
    engine.clear_cache()
    source = make_source(pa.table({name: ["a", "b", "a'"], "n": [1, 2, 3]}))
    version = current(Session, source.id)
    assert ids_n(all_rows(version, rf(**{name: {"a"}}))) == [1]
    assert ids_n(all_rows(version, rf(**{name: {"a'"}}))) == [3]
    assert engine.distinct_values(readable(version, ALLOW), name, 10) == ["a", "a'", "b"]
    quoted = '"' + name.replace('"', '""') + '"'
    rows, total, columns = engine.run_query(
        readable(version, rf(**{name: {"b"}})), f"select {quoted}, n from data", page=1, page_size=10
    )
    assert rows == [{name: "b", "n": 2}] and total == 1 and columns == [name, "n"]


def ids_n(rows):
    return [r["n"] for r in rows]


def test_filtered_rows_are_the_only_rows_anywhere(version):
    eu = rf(region={"EU"})
    expected = [i for i in range(N) if i % 4 == 0]
    assert ids(all_rows(version, eu)) == expected
    text = b"".join(engine.stream_csv(readable(version, eu))).decode()
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(text))] == expected
    table = pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(readable(version, eu)))))
    assert table.column("id").to_pylist() == expected
    assert engine.distinct_values(readable(version, eu), "region", 100) == ["EU"]
    rows, total, _ = engine.run_query(readable(version, eu), "select distinct region from data", page=1, page_size=10)
    assert rows == [{"region": "EU"}] and total == 1


# ---------------------------------------------------------------------------------------
# Paging and validation
# ---------------------------------------------------------------------------------------


def test_pages_partition_the_rows(version):
    eu = rf(region={"EU"})
    seen = []
    for page in range(1, 10):
        rows, total = engine.read_page(readable(version, eu), page=page, page_size=30)
        assert total == N // 4
        seen += ids(rows)
    assert seen == [i for i in range(N) if i % 4 == 0]
    assert engine.read_page(readable(version, eu), page=1000, page_size=30) == ([], N // 4)


@pytest.mark.parametrize(
    "page,page_size,code",
    [
        (0, 10, "invalid_page"),
        (-1, 10, "invalid_page"),
        (1, 0, "invalid_page_size"),
        (1, 10_001, "invalid_page_size"),
        ("1", 10, "invalid_page"),
        (1, 2.5, "invalid_page_size"),
        (True, 10, "invalid_page"),
    ],
)
def test_page_bounds(version, page, page_size, code):
    for call in (
        lambda: engine.read_page(readable(version, ALLOW), page=page, page_size=page_size),
        lambda: engine.run_query(readable(version, ALLOW), "select * from data", page=page, page_size=page_size),
    ):
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.code == code


def test_max_page_size_is_allowed(version):
    rows, total = engine.read_page(readable(version, ALLOW), page=1, page_size=10_000)
    assert len(rows) == N == total


def test_distinct_values_validation_and_limit(version):
    assert engine.distinct_values(readable(version, ALLOW), "region", 2) == ["APAC", "EU"]
    assert engine.distinct_values(readable(version, ALLOW), "active", 10) == ["false", "true"]
    for column, limit, code in [
        ("Region", 5, "unknown_column"),
        ("region", 0, "invalid_limit"),
        ("region", 10_001, "invalid_limit"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            engine.distinct_values(readable(version, ALLOW), column, limit)
        assert info.value.code == code


# ---------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------


def test_streams_yield_several_chunks_and_round_trip(version):
    engine.clear_cache()  # not materialized: streamed from the Parquet parts
    us = rf(region={"US"})
    chunks = list(engine.stream_csv(readable(version, us), batch_rows=100))
    assert len(chunks) > 2 and all(isinstance(c, bytes) for c in chunks)
    parsed = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert [int(r["id"]) for r in parsed] == [i for i in range(N) if i % 4 == 1]
    assert parsed[0] == {"id": "1", "region": "US", "amount": "0.5", "active": "false", "day": "2024-01-02"}
    pchunks = list(engine.stream_parquet(readable(version, us), batch_rows=100))
    assert len(pchunks) > 2
    table = pq.read_table(io.BytesIO(b"".join(pchunks)))
    assert table.schema == ingest.schema_for(version.columns)
    assert table.column("id").to_pylist() == [i for i in range(N) if i % 4 == 1]
    assert engine.cache_stats()["entries"] == 0  # a stream never fills the cache
    engine.count(readable(version, us))  # now cached: the stream is served from memory, same bytes
    assert b"".join(engine.stream_csv(readable(version, us), batch_rows=100)) == b"".join(chunks)


def test_stream_is_lazy_and_can_be_abandoned(version):
    stream = engine.stream_csv(readable(version, ALLOW), batch_rows=10)
    first = next(stream)
    assert first.startswith(b'"id","region"')
    stream.close()  # a client that disconnects: the cursor is released


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------


def test_cache_hits_and_invalidation_by_new_version(Session, make_source):
    engine.clear_cache()
    source = make_source(sample_table(100))
    v1 = current(Session, source.id)
    eu = rf(region={"EU"})
    assert engine.count(readable(v1, eu)) == 25
    before = engine.cache_stats()
    engine.read_page(readable(v1, eu), page=2, page_size=10)
    engine.read_page(readable(v1, eu), page=1, page_size=10)
    after = engine.cache_stats()
    assert after["hits"] == before["hits"] + 2 and after["entries"] == 1
    assert engine.cache_stats()["misses"] == before["misses"]

    with Session.begin() as session:
        storage.write_new_version(
            session,
            session.get(Source, source.id),
            pa.table(
                {
                    "id": [1000, 1001],
                    "region": ["EU", "US"],
                    "amount": [1.0, 2.0],
                    "active": [True, False],
                    "day": [dt.date(2025, 1, 1)] * 2,
                }
            ),
            append=True,
        )
    v2 = current(Session, source.id)
    assert engine.count(readable(v2, eu)) == 26  # the new version id misses the cache: fresh rows
    assert ids(engine.read_page(readable(v2, eu), page=3, page_size=10)[0]) == [80, 84, 88, 92, 96, 1000]
    assert engine.count(readable(v1, eu)) == 25  # the old version is still what it was
    assert engine.cache_stats()["entries"] == 2
    engine.drop_version(v1.id)
    assert engine.cache_stats()["entries"] == 1


def test_cache_is_per_filter(version):
    engine.clear_cache()
    engine.count(readable(version, rf(region={"EU"})))
    engine.count(readable(version, rf(region={"US"})))
    engine.count(
        readable(version, rf(region={"US"}).both(RowFilter(clauses=(), policy_ids=("pol_x",))))
    )  # same effective filter
    assert engine.cache_stats()["entries"] == 2


def test_lru_is_bounded_by_bytes(version):
    engine.clear_cache()
    engine.count(readable(version, ALLOW))
    one = engine.cache_stats()["bytes"]
    engine.configure(cache_bytes=int(one * 2.5))
    try:
        for region in REGIONS:
            engine.count(readable(version, rf(region={region})))  # each about a quarter of ALLOW
        engine.count(readable(version, ALLOW))
        stats = engine.cache_stats()
        assert stats["bytes"] <= int(one * 2.5) and stats["evictions"] == 0
        engine.configure(cache_bytes=one)  # shrink: evicts the least recently used first
        stats = engine.cache_stats()
        assert stats["bytes"] <= one and stats["evictions"] >= 1
        keys = engine._cache.keys()
        assert keys and keys[-1] == (version.id, ALLOW.cache_key())
    finally:
        engine.configure(cache_bytes=engine.DEFAULT_CACHE_BYTES)


def test_results_too_big_for_the_cache_fall_back_to_sql(version):
    engine.clear_cache()
    engine.configure(cache_bytes=1024)  # nothing fits
    try:
        eu = rf(region={"EU"})
        expected = [i for i in range(N) if i % 4 == 0]
        rows, total = engine.read_page(readable(version, eu), page=3, page_size=10)
        assert total == N // 4 and ids(rows) == expected[20:30]
        assert engine.count(readable(version, eu)) == N // 4
        assert ids(all_rows(version, eu)) == expected
        assert engine.distinct_values(readable(version, eu), "region", 5) == ["EU"]
        assert pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(readable(version, eu))))).num_rows == N // 4
        assert engine.run_query(readable(version, eu), "select count(*) n from data", page=1, page_size=1)[0] == [
            {"n": N // 4}
        ]
        assert engine.cache_stats()["entries"] == 0
    finally:
        engine.configure(cache_bytes=engine.DEFAULT_CACHE_BYTES)


def test_concurrent_readers_share_one_materialization(version):
    engine.clear_cache()
    eu = rf(region={"EU"})
    errors, results = [], []

    def reader(page):
        try:
            results.append(engine.read_page(readable(version, eu), page=page, page_size=10))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(1 + i % 20,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(total == N // 4 for _, total in results)
    stats = engine.cache_stats()
    assert stats["entries"] == 1


@pytest.mark.parametrize(
    "values,arrow_type",
    [
        ([dt.date(2024, 2, 29), None, dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31)], pa.date32()),
        (
            [
                dt.datetime(2024, 1, 1, 10, 0, 0, 5),
                None,
                dt.datetime(1, 1, 1),
                dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
                dt.datetime(1969, 12, 31, 23, 59, 59, 123000),
                dt.datetime(2024, 1, 1),
            ],
            pa.timestamp("us"),
        ),
        ([1, None, -5], pa.int64()),
        (["a", None, "é"], pa.string()),
    ],
)
def test_fast_row_conversion_matches_pyarrow(values, arrow_type):
    table = pa.table({"v": pa.array(values, arrow_type), "k": list(range(len(values)))})
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])  # several chunks
    for candidate in (table, chunked, chunked.slice(1, 3)):
        assert engine.rows_of(candidate) == candidate.to_pylist()


def test_engine_connection_reads_only_the_data_directory(version, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n1\n")
    cursor = engine._connection().cursor()
    try:
        for statement in (
            f"SELECT * FROM read_csv('{outside}')",
            "SELECT * FROM read_text('/etc/passwd')",
            "SET enable_external_access = true",
            "INSTALL httpfs",
        ):
            with pytest.raises(Exception):  # noqa: B017 - DuckDB's own refusal
                cursor.sql(statement).fetchall()
    finally:
        cursor.close()


# ---------------------------------------------------------------------------------------
# Rendered pages (page_json)
# ---------------------------------------------------------------------------------------


def rendered(version, row_filter, page, page_size):
    """What page_json must hold: read_page's rows, rendered."""
    rows, total = engine.read_page(readable(version, row_filter), page=page, page_size=page_size)
    return jsonfmt.dumps(rows), len(rows), total


@pytest.mark.parametrize(
    "row_filter",
    [ALLOW, rf(region={"EU"}), rf(region={"US", "APAC"}, active={"True"}), RowFilter.deny("no"), rf(nope={"x"})],
)
def test_page_json_is_read_page_rendered(version, row_filter):
    engine.clear_cache()
    for page, page_size in [(1, 7), (2, 7), (1, 10_000), (40, 7), (1000, 10)]:
        first = engine.page_json(readable(version, row_filter), page=page, page_size=page_size)
        again = engine.page_json(readable(version, row_filter), page=page, page_size=page_size)  # from the page cache
        expected = rendered(version, row_filter, page, page_size)
        assert (first.rows, first.count, first.total) == expected, (page, page_size)
        assert (again.rows, again.count, again.total) == expected
        assert [r["id"] for r in orjson.loads(first.rows)] == ids(
            engine.read_page(readable(version, row_filter), page=page, page_size=page_size)[0]
        )


def test_page_json_cached_only_answers_from_memory_or_not_at_all(version):
    engine.clear_cache()
    eu, us = rf(region={"EU"}), rf(region={"US"})
    assert engine.page_json(readable(version, eu), page=2, page_size=7, cached_only=True) is None
    assert engine.page_json(readable(version, eu), page=2, page_size=7, cached_only=True) is None  # and cached nothing
    assert engine.cache_stats()["entries"] == 0
    uncached = engine.page_json(readable(version, eu), page=2, page_size=7)
    assert (uncached.rows, uncached.count, uncached.total) == rendered(version, eu, 2, 7)

    engine.clear_cache()
    engine.count(readable(version, eu))  # the filtered table is in memory, no page rendered yet
    assert engine.page_json(readable(version, us), page=2, page_size=7, cached_only=True) is None  # per filter
    hit = engine.page_json(readable(version, eu), page=2, page_size=7, cached_only=True)
    assert hit is not None and (hit.rows, hit.count, hit.total) == (uncached.rows, uncached.count, uncached.total)
    # No I/O: with the version's files gone, pages of the cached table are still answered.
    for path in storage.part_paths(version):
        path.unlink()
    other = engine.page_json(readable(version, eu), page=3, page_size=5, cached_only=True)
    assert [r["id"] for r in orjson.loads(other.rows)] == [i for i in range(N) if i % 4 == 0][10:15]
    assert other.total == N // 4
    # Zero rows need no table at all.
    empty = engine.page_json(readable(version, RowFilter.deny("no")), page=1, page_size=7, cached_only=True)
    assert (empty.rows, empty.count, empty.total) == (b"[]", 0, 0)
    # Paging is still validated.
    with pytest.raises(InvalidRequest):
        engine.page_json(readable(version, eu), page=0, page_size=7, cached_only=True)
    with pytest.raises(TypeError):
        engine.page_json(readable(version, None), page=1, page_size=7, cached_only=True)


def test_page_json_of_a_result_too_big_to_cache(version):
    engine.clear_cache()
    engine.configure(cache_bytes=1024)  # no filtered table fits
    try:
        eu = rf(region={"EU"})
        assert engine.page_json(readable(version, eu), page=3, page_size=10, cached_only=True) is None
        page = engine.page_json(readable(version, eu), page=3, page_size=10)  # through SQL
        assert [r["id"] for r in orjson.loads(page.rows)] == [i for i in range(N) if i % 4 == 0][20:30]
        assert page.total == N // 4
        again = engine.page_json(readable(version, eu), page=3, page_size=10, cached_only=True)
        assert again is not None and again.rows == page.rows  # the rendered page itself is kept
        assert engine.page_json(readable(version, eu), page=4, page_size=10, cached_only=True) is None
    finally:
        engine.configure(cache_bytes=engine.DEFAULT_CACHE_BYTES)
