"""Column rules on a live PostgreSQL source (issue 14 §1), at the data layer: every canonical
type masked by the SQL sent to the source (text: first character + ***, others: a typed NULL),
hidden columns never selected, and the statements themselves checked."""

from __future__ import annotations

import psycopg
import pytest

from tests.data.test_live import allowed, sent, source_db, target  # noqa: F401  (module fixtures)
from tidegate.core.columnrules import ColumnRules
from tidegate.core.rowfilter import Clause, RowFilter
from tidegate.data import live

TYPED_SQL = """
DROP TABLE IF EXISTS typed;
CREATE TABLE typed (label text, n bigint, x double precision, ok boolean, d date, t timestamp, secret text);
INSERT INTO typed VALUES
  ('alpha', 7, 1.5, true, '2024-01-02', '2024-01-02 03:04:05', 'top-secret-1'),
  ('beta', 8, 2.5, false, '2024-02-03', '2024-02-03 04:05:06', 'top-secret-2');
"""


@pytest.fixture
def typed(source_db, allowed):  # noqa: F811
    with psycopg.connect(source_db["url"], autocommit=True) as conn:
        conn.execute(TYPED_SQL)
    return target(source_db, table="typed")


def rules(hidden=(), masked=(), **clauses) -> RowFilter:
    return RowFilter(
        clauses=tuple(Clause(c, frozenset(v)) for c, v in clauses.items()),
        column_rules=ColumnRules(hidden=frozenset(hidden), masked=frozenset(masked)),
    )


def test_every_type_is_masked_on_the_source_and_hidden_columns_are_not_selected(typed):
    reader = rules(hidden={"secret"}, masked={"label", "n", "x", "ok", "d", "t"}, label={"alpha"})
    table, total = live.read_page(typed, reader, page=1, page_size=10)
    assert total == 1 and table.column_names == ["label", "n", "x", "ok", "d", "t"]
    assert table.to_pylist() == [{"label": "a***", "n": None, "x": None, "ok": None, "d": None, "t": None}]
    batches = list(live.batches(typed, reader, 10))
    assert sum(b.num_rows for b in batches) == 1 and "secret" not in batches[0].schema.names
    assert live.distinct_values(typed, reader, "label", 10) == ["a***"]
    rows, count, columns = live.run_query(typed, reader, "SELECT * FROM data", page=1, page_size=10)
    assert columns == ["label", "n", "x", "ok", "d", "t"] and rows[0]["label"] == "a***" and count == 1
    rows, _, _ = live.run_query(typed, reader, "SELECT count(*) AS c FROM data WHERE n = 7", page=1, page_size=1)
    assert rows == [{"c": 0}]
    with pytest.raises(Exception) as refused:
        live.run_query(typed, reader, "SELECT secret FROM data", page=1, page_size=1)
    assert "top-secret" not in str(refused.value)


def test_the_statements_sent_never_name_a_hidden_column(typed, sent):  # noqa: F811
    reader = rules(hidden={"secret"}, masked={"label"})
    live.read_page(typed, reader, page=1, page_size=10)
    live.count(typed, reader)
    list(live.batches(typed, reader, 10))
    live.run_query(typed, reader, "SELECT * FROM data", page=1, page_size=10)
    assert sent and all('"secret"' not in sql for sql, _ in sent)


def test_a_reader_who_sees_no_column_gets_rows_without_columns(typed):
    """Every column hidden: the count stays true, and the projection's placeholder (SQL needs a
    column) is never shown as one, on a page or in a project step's table."""
    reader = rules(hidden={"label", "n", "x", "ok", "d", "t", "secret"})
    table, total = live.read_page(typed, reader, page=1, page_size=10)
    assert total == 2 and table.num_rows == 2 and table.column_names == []
    assert live.table(typed, reader).column_names == []
