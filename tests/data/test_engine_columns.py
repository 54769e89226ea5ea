"""The engine's projection under column rules (issue 14 §1), on the cached path AND on the
SQL fallback (results too large for the cache): every read drops hidden columns and masks
masked ones before anything else sees them; the row filter still tests the real values."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.core.columnrules import ColumnRules
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import engine
from tidegate.errors import InvalidRequest

from .conftest import current, readable

N = 400


def people() -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(N), pa.int64()),
            "email": [f"{'ab'[i % 2]}{i}@example.com" for i in range(N)],
            "salary": pa.array([1000 + i for i in range(N)], pa.int64()),
            "score": [i / 2 for i in range(N)],
            "active": [i % 2 == 0 for i in range(N)],
            "hired": pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(N)], pa.date32()),
            "seen": pa.array([dt.datetime(2024, 1, 1, 0, 0, i % 60) for i in range(N)], pa.timestamp("us")),
            "region": ["EU" if i % 4 == 0 else "US" for i in range(N)],
        }
    )


RULES = RowFilter(
    clauses=(Clause("region", frozenset({"EU"})),),
    column_rules=ColumnRules(
        hidden=frozenset({"salary"}), masked=frozenset({"email", "score", "active", "hired", "seen", "region"})
    ),
)
VISIBLE = ["id", "email", "score", "active", "hired", "seen", "region"]
EU = [i for i in range(N) if i % 4 == 0]


@pytest.fixture
def version(Session, make_source):
    engine.clear_cache()
    return current(Session, make_source(people(), name="people").id)


@pytest.fixture(params=["cached", "sql"])
def path(request):
    """Reads from the cached filtered table, or (nothing fits the cache) through SQL."""
    engine.clear_cache()
    if request.param == "sql":
        engine.configure(cache_bytes=1024)
    yield request.param
    engine.configure(cache_bytes=engine.DEFAULT_CACHE_BYTES)
    engine.clear_cache()


def test_every_read_is_the_projection(version, path):
    access = readable(version, RULES)
    assert access.columns == VISIBLE
    rows, total = engine.read_page(access, page=2, page_size=10)
    assert total == len(EU) == engine.count(access)
    assert [r["id"] for r in rows] == EU[10:20]
    assert list(rows[0]) == VISIBLE
    assert {r["email"] for r in rows} == {"a***"}  # ids are multiples of 4: even, so "a..."
    assert {(r["score"], r["active"], r["hired"], r["seen"]) for r in rows} == {(None, None, None, None)}
    assert {r["region"] for r in rows} == {"E***"}  # filtered on the real value, shown masked

    page = engine.page_json(access, page=1, page_size=5)
    assert b"example.com" not in page.rows and b"salary" not in page.rows and page.total == len(EU)

    text = b"".join(engine.stream_csv(access, batch_rows=7)).decode()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == VISIBLE and len(parsed) == len(EU) and "example.com" not in text

    table = pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(access, batch_rows=9))))
    assert table.column_names == VISIBLE and table.num_rows == len(EU)
    assert set(table.column("email").to_pylist()) == {"a***"} and table.column("score").null_count == len(EU)
    assert table.schema.field("hired").type == pa.date32()  # a masked column keeps its type

    assert engine.distinct_values(access, "email", 10) == ["a***"]
    assert engine.distinct_values(access, "region", 10) == ["E***"]
    assert engine.distinct_values(access, "hired", 10) == []
    with pytest.raises(InvalidRequest) as unknown:
        engine.distinct_values(access, "salary", 10)
    assert unknown.value.code == "unknown_column"

    assert engine.filtered_table(access).column_names == VISIBLE
    rows, total, columns = engine.run_query(
        access, "SELECT count(*) AS n, max(score) AS s, count(DISTINCT email) AS e FROM data", page=1, page_size=1
    )
    assert rows == [{"n": len(EU), "s": None, "e": 1}] and columns == ["n", "s", "e"]
    with pytest.raises(InvalidRequest):
        engine.run_query(access, "SELECT max(salary) FROM data", page=1, page_size=1)


def test_every_column_hidden_keeps_the_count_and_shows_nothing(version, path):
    everything = RowFilter(clauses=(), column_rules=ColumnRules(hidden=frozenset(people().column_names)))
    access = readable(version, everything)
    assert access.columns == []
    rows, total = engine.read_page(access, page=1, page_size=3)
    assert total == N and rows == [{}, {}, {}]
    assert b"".join(engine.stream_csv(access)).strip() == b""
    assert pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(access)))).num_columns == 0


def test_rules_are_part_of_every_cache_key(version):
    engine.clear_cache()
    plain = readable(version, RowFilter(clauses=()))
    masked = readable(version, RowFilter(clauses=(), column_rules=ColumnRules(masked=frozenset({"email"}))))
    assert engine.page_json(plain, page=1, page_size=2).rows.count(b"@example.com") == 2
    assert engine.count(plain) == engine.count(masked) == N
    assert b"@example.com" not in engine.page_json(masked, page=1, page_size=2).rows
    assert "@example.com" not in str(engine.filtered_table(masked).column("email").to_pylist())
    assert engine.page_json(masked, page=1, page_size=2, cached_only=True) is not None  # its own entry


ACTIONS = st.sampled_from([None, "hide", "mask"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.fixed_dictionaries({name: ACTIONS for name in people().column_names}), eu_only=st.booleans())
def test_any_rules_any_path_never_a_real_hidden_or_masked_value(version, actions, eu_only):
    hidden = frozenset(c for c, a in actions.items() if a == "hide")
    masked = frozenset(c for c, a in actions.items() if a == "mask")
    clauses = (Clause("region", frozenset({"EU"})),) if eu_only else ()
    access = readable(version, RowFilter(clauses=clauses, column_rules=ColumnRules(hidden=hidden, masked=masked)))
    source = people().to_pylist()
    expected_rows = [r for r in source if not eu_only or r["region"] == "EU"]
    visible = [c for c in people().column_names if c not in hidden]
    assert access.columns == visible

    def check(columns, rows):
        assert list(columns) == visible
        assert len(rows) == len(expected_rows)
        for got, real in zip(rows, expected_rows, strict=True):
            for column in visible:
                value = got[column]
                if column not in masked:
                    assert value == real[column]
                elif isinstance(real[column], str):
                    assert value == real[column][0] + "***"
                else:
                    assert value is None

    rows, total = engine.read_page(access, page=1, page_size=N)
    assert total == len(expected_rows)
    check(visible if not rows else list(rows[0]), rows)
    table = pq.read_table(io.BytesIO(b"".join(engine.stream_parquet(access, batch_rows=64))))
    check(table.column_names, table.to_pylist())
    result, _, columns = engine.run_query(access, "SELECT * FROM data", page=1, page_size=N)
    check(columns, result)
    text = b"".join(engine.stream_csv(access)).decode()
    assert ("@example.com" in text) == ("email" not in hidden | masked and bool(expected_rows))
