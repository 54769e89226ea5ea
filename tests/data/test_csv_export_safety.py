"""CSV exports neutralize formula cells in every batch, cached or streamed from Parquet."""

from __future__ import annotations

import csv
import io

import pyarrow as pa

from tidegate.data import engine

from .conftest import ALLOW, current, readable, rf


def _rows(chunks) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b"".join(chunks).decode(), newline="")))


def test_every_batch_is_neutralized_and_numbers_stay(Session, make_source):
    engine.clear_cache()
    labels = [f"=1+{i}" if i % 3 == 0 else ("@x" if i % 3 == 1 else "ok") for i in range(50)]
    source = make_source(pa.table({"label": labels, "n": [-i for i in range(50)], "g": ["a", "b"] * 25}))
    version = current(Session, source.id)
    for row_filter in (ALLOW, rf(g={"a"})):
        for _ in range(2):  # uncached (streamed from Parquet), then from the cached table
            rows = _rows(engine.stream_csv(readable(version, row_filter), batch_rows=4))
            expected = [
                (("'" + label) if label[0] in "=@" else label, str(-i))
                for i, label in enumerate(labels)
                if row_filter is ALLOW or i % 2 == 0
            ]
            assert [(r["label"], r["n"]) for r in rows] == expected
            raw = _rows(engine.stream_csv(readable(version, row_filter), batch_rows=4, raw=True))
            assert [r["label"] for r in raw] == [
                label for i, label in enumerate(labels) if row_filter is ALLOW or i % 2 == 0
            ]


def test_an_oversized_result_streams_neutralized_too(Session, make_source):
    """The path for results too large to cache (SQL over the Parquet parts)."""
    engine.clear_cache()
    source = make_source(pa.table({"label": ["+1", "x"] * 10}))
    version = current(Session, source.id)
    engine._cache.mark_oversized((version.id, ALLOW.cache_key()))
    try:
        assert [r["label"] for r in _rows(engine.stream_csv(readable(version, ALLOW), batch_rows=3))] == [
            "'+1",
            "x",
        ] * 10
    finally:
        engine.clear_cache()
