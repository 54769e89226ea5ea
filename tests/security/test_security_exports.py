"""Issue 8 §6: exports safe to open.

CSV exports of data wrote `=cmd|' /C calc'!A0`, `+SUM(...)`, `@SUM`, `=HYPERLINK(...)`
verbatim. Text cells starting with =, +, -, @, tab or CR now get a leading quote by default
(the one rule in tidegate.spreadsheet, shared with the audit export); `raw=1` opts out;
numbers stay numbers.
"""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidegate import spreadsheet

ATTACKS = [
    "=cmd|' /C calc'!A0",
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "@SUM(1+1)",
    '=HYPERLINK("http://x","y")',
    "-2+3+cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
SAFE = ["hello", "a=b", " x", "42", "", "é=", "9+1"]
ROWS = [{"label": text, "amount": -5 if i == 0 else i} for i, text in enumerate(ATTACKS + SAFE)]


def _export(client, org, source, **params):
    response = client.get(f"/api/v1/sources/{source}/data", params={"format": "csv", **params}, headers=org.headers())
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))


@pytest.fixture
def source(client, org):
    created = client.post("/api/v1/sources", json={"name": "inj", "rows": ROWS}, headers=org.headers())
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_csv_export_neutralizes_every_formula_prefix(client, org, source):
    rows = _export(client, org, source)
    labels = [row["label"] for row in rows]
    assert labels == ["'" + text for text in ATTACKS] + SAFE
    assert rows[0]["amount"] == "-5"  # a number is never quoted
    assert [int(row["amount"]) for row in rows][1:4] == [1, 2, 3]


def test_raw_csv_is_verbatim_for_scripts(client, org, source):
    rows = _export(client, org, source, raw="1")
    assert [row["label"] for row in rows] == ATTACKS + SAFE
    assert _export(client, org, source, raw="0") == _export(client, org, source)


def test_raw_must_be_0_or_1(client, org, source):
    for value in ("yes", "2", "true", ""):
        response = client.get(
            f"/api/v1/sources/{source}/data", params={"format": "csv", "raw": value}, headers=org.headers()
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameters"


def test_parquet_and_json_keep_values_exact(client, org, source):
    """Typed formats are not opened as formulas: their values stay what was stored."""
    response = client.get(f"/api/v1/sources/{source}/data", params={"format": "parquet"}, headers=org.headers())
    assert pq.read_table(io.BytesIO(response.content)).column("label").to_pylist() == ATTACKS + SAFE
    page = client.get(f"/api/v1/sources/{source}/data", headers=org.headers()).json()
    assert [row["label"] for row in page["data"]] == ATTACKS + SAFE


CORPUS = (
    ATTACKS
    + SAFE
    + ["=", "+", "-", "@", "\t", "\r", "'=x", "A", "Z=", "~", "0", ":", None, "\u00a0=x", "\U0001f600=", "-5"]
)


def test_the_scalar_and_columnar_forms_are_one_rule():
    """What the audit export (one value at a time) and data exports (Arrow) write agrees."""
    expected = [spreadsheet.neutralize(value) for value in CORPUS]
    for kind in (pa.string(), pa.large_string()):
        assert spreadsheet.neutralize_array(pa.array(CORPUS, kind)).to_pylist() == expected
    assert all(value.startswith("'") for value in expected[: len(ATTACKS)])
    for start in spreadsheet.FORMULA_STARTS:
        assert spreadsheet.neutralize(start + "1") == "'" + start + "1"
        assert start < "A"  # neutralize_array's first cheap pass relies on it
    assert spreadsheet.neutralize(-5) == -5
    numbers = pa.array([-5, 3])
    assert spreadsheet.neutralize_array(numbers) is numbers


def test_column_names_are_cells_too():
    batch = pa.record_batch([pa.array(["=1"]), pa.array([-1])], names=["=evil", "n"])
    safe = spreadsheet.neutralize_batch(batch)
    assert safe.schema.names == ["'=evil", "n"] and safe.column(0).to_pylist() == ["'=1"]
    assert safe.column(1).to_pylist() == [-1]


def test_the_audit_export_uses_the_same_function():
    from tidegate.web import audit

    assert audit.neutralize is spreadsheet.neutralize
    assert not hasattr(audit, "FORMULA_STARTS")  # no second copy of the rule
