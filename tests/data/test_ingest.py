"""Parsing files and rows into typed tables: inference, conformance, precise refusals."""

from __future__ import annotations

import datetime as dt
import io

import openpyxl
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidegate.data import ingest
from tidegate.errors import InvalidRequest


def csv_types(body: str) -> dict[str, str]:
    table = ingest.parse_file(body.encode(), filename="x.csv")
    return {c["name"]: c["type"] for c in ingest.columns_of(table)}


# ---------------------------------------------------------------------------------------
# Type inference table
# ---------------------------------------------------------------------------------------

CSV_INFERENCE = [
    (["1", "2", "-3", "+4"], "integer", [1, 2, -3, 4]),
    (["0", "10"], "integer", [0, 10]),
    (["007", "1"], "string", ["007", "1"]),  # leading zeros: an identifier, not a number
    (["1.5", "2", "-0.25", "1e3"], "float", [1.5, 2.0, -0.25, 1000.0]),
    (["true", "False", "TRUE"], "boolean", [True, False, True]),
    (["1", "0"], "integer", [1, 0]),  # not booleans
    (["2024-01-31", "1999-12-01"], "date", [dt.date(2024, 1, 31), dt.date(1999, 12, 1)]),
    (["2024-02-30"], "string", ["2024-02-30"]),  # not a real date
    (
        ["2024-01-01T10:00:00", "2024-01-02 11:30"],
        "timestamp",
        [dt.datetime(2024, 1, 1, 10), dt.datetime(2024, 1, 2, 11, 30)],
    ),
    (
        ["2024-01-01T10:00:00Z", "2024-01-01T12:00:00+02:00"],
        "timestamp",
        [dt.datetime(2024, 1, 1, 10), dt.datetime(2024, 1, 1, 10)],
    ),  # zones -> UTC
    (["2024-01-01", "2024-01-01 10:00:00"], "timestamp", [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 10)]),
    (["2024-01-01", "soon"], "string", ["2024-01-01", "soon"]),
    (["1", "x"], "string", ["1", "x"]),
    (["1", "2.5"], "float", [1.0, 2.5]),
    (["99999999999999999999"], "string", ["99999999999999999999"]),  # beyond int64: kept exactly
    (["nan", "inf"], "string", ["nan", "inf"]),
    (["", ""], "string", [None, None]),  # only empty cells
    (["5", ""], "integer", [5, None]),
]


@pytest.mark.parametrize("cells,expected_type,expected_values", CSV_INFERENCE)
def test_csv_inference(cells, expected_type, expected_values):
    body = "k,v\n" + "\n".join(f"x,{cell}" for cell in cells) + "\n"
    table = ingest.parse_file(body.encode(), filename="x.csv").drop_columns(["k"])
    assert ingest.columns_of(table) == [{"name": "v", "type": expected_type}]
    assert table.column("v").to_pylist() == expected_values


JSON_INFERENCE = [
    ([1, 2, None], "integer", [1, 2, None]),
    ([1, 2.5], "float", [1.0, 2.5]),
    ([True, False], "boolean", [True, False]),
    ([True, 1], "string", ["true", "1"]),
    (["1", "2"], "string", ["1", "2"]),  # JSON strings stay strings
    (["2024-01-01", None], "date", [dt.date(2024, 1, 1), None]),
    (["2024-01-01T08:00:00-02:00"], "timestamp", [dt.datetime(2024, 1, 1, 10)]),
    ([{"a": 1}, [1, 2]], "string", ['{"a":1}', "[1,2]"]),
    ([None, None], "string", [None, None]),
    ([2**70], "string", [str(2**70)]),
]


@pytest.mark.parametrize("values,expected_type,expected_values", JSON_INFERENCE)
def test_rows_inference(values, expected_type, expected_values):
    table = ingest.rows_to_table([{"v": v} for v in values])
    assert ingest.columns_of(table) == [{"name": "v", "type": expected_type}]
    assert table.column("v").to_pylist() == expected_values


def test_rows_keep_first_seen_column_order_and_fill_missing_keys():
    table = ingest.rows_to_table([{"b": 1}, {"a": "x", "b": 2}, {"c": True}])
    assert table.column_names == ["b", "a", "c"]
    assert table.to_pylist() == [
        {"b": 1, "a": None, "c": None},
        {"b": 2, "a": "x", "c": None},
        {"b": None, "a": None, "c": True},
    ]


# ---------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------

EXPECTED = [
    {"id": 1, "name": "Ann", "score": 1.5, "joined": dt.date(2024, 1, 2)},
    {"id": 2, "name": "Bo, Jr.", "score": None, "joined": dt.date(2024, 3, 4)},
]


def xlsx_bytes(rows: list[list]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


FORMATS = {
    "x.csv": b'id,name,score,joined\n1,Ann,1.5,2024-01-02\n2,"Bo, Jr.",,2024-03-04\n',
    "x.tsv": b"id\tname\tscore\tjoined\n1\tAnn\t1.5\t2024-01-02\n2\tBo, Jr.\t\t2024-03-04\n",
    "x.json": orjson.dumps(
        [
            {"id": 1, "name": "Ann", "score": 1.5, "joined": "2024-01-02"},
            {"id": 2, "name": "Bo, Jr.", "score": None, "joined": "2024-03-04"},
        ]
    ),
    "x.ndjson": b'{"id": 1, "name": "Ann", "score": 1.5, "joined": "2024-01-02"}\n\n'
    b'{"id": 2, "name": "Bo, Jr.", "joined": "2024-03-04"}\n',
    "x.parquet": parquet_bytes(
        pa.table(
            {
                "id": pa.array([1, 2], pa.int32()),
                "name": ["Ann", "Bo, Jr."],
                "score": pa.array([1.5, None], pa.float32()),
                "joined": pa.array([dt.date(2024, 1, 2), dt.date(2024, 3, 4)]),
            }
        )
    ),
    "x.xlsx": xlsx_bytes(
        [
            ["id", "name", "score", "joined"],
            [1, "Ann", 1.5, dt.datetime(2024, 1, 2)],
            [2, "Bo, Jr.", None, dt.datetime(2024, 3, 4)],
            [None, None, None, None],
        ]
    ),
}


@pytest.mark.parametrize("filename", sorted(FORMATS))
def test_every_format_parses_to_the_same_table(filename):
    table = ingest.parse_file(FORMATS[filename], filename=filename)
    assert ingest.columns_of(table) == [
        {"name": "id", "type": "integer"},
        {"name": "name", "type": "string"},
        {"name": "score", "type": "float"},
        {"name": "joined", "type": "date"},
    ]
    assert table.to_pylist() == EXPECTED


@pytest.mark.parametrize("filename", ["x.json", "x.ndjson", "x.parquet", "x.xlsx"])
def test_format_detected_from_content(filename):
    assert ingest.parse_file(FORMATS[filename]).to_pylist() == EXPECTED


@pytest.mark.parametrize(
    "filename,content_type", [("x.csv", "text/csv; charset=utf-8"), ("x.tsv", "text/tab-separated-values")]
)
def test_text_format_detected_from_content_type(filename, content_type):
    assert ingest.parse_file(FORMATS[filename], content_type=content_type).to_pylist() == EXPECTED


def test_parse_from_path(tmp_path):
    path = tmp_path / "people.csv"
    path.write_bytes(FORMATS["x.csv"])
    assert ingest.parse_file(path).to_pylist() == EXPECTED


def test_csv_bom_windows_1252_and_multiline_cells():
    data = '\ufeffcity,note\nZürich,"two\nlines"\n'.encode("utf-8")
    assert ingest.parse_file(data, filename="a.csv").to_pylist() == [{"city": "Zürich", "note": "two\nlines"}]
    latin = "city\nMünchen\n".encode("cp1252")
    assert ingest.parse_file(latin, filename="a.csv").to_pylist() == [{"city": "München"}]


def test_header_only_csv_gives_zero_rows():
    table = ingest.parse_file(b"a,b\n", filename="a.csv")
    assert table.num_rows == 0 and table.column_names == ["a", "b"]


def test_xlsx_timestamps_stay_timestamps():
    data = xlsx_bytes([["at"], [dt.datetime(2024, 1, 1, 9, 30)], [dt.datetime(2024, 1, 2)]])
    table = ingest.parse_file(data, filename="t.xlsx")
    assert ingest.columns_of(table) == [{"name": "at", "type": "timestamp"}]


# ---------------------------------------------------------------------------------------
# Refusals with precise codes
# ---------------------------------------------------------------------------------------


def code_of(fn, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value.code, info.value.message


@pytest.mark.parametrize(
    "data,filename,code",
    [
        (b"a,,c\n1,2,3\n", "x.csv", "invalid_column_name"),
        (b"a, \n1,2\n", "x.csv", "invalid_column_name"),
        (b"a,A\n1,2\n", "x.csv", "duplicate_column"),
        (b"Name,name \n1,2\n", "x.csv", "duplicate_column"),
        (b"a,b\n1,2,3\n", "x.csv", "invalid_file"),
        (b"", "x.csv", "invalid_file"),
        (b"   \n", "x.csv", "invalid_file"),
        (b"[1, 2]", "x.json", "invalid_file"),
        (b'{"a": 1}', "x.json", "invalid_file"),  # .json holding one object per line: ndjson, ok? no: see below
        (b'[{"a": 1},', "x.json", "invalid_file"),
        (b'{"a": 1}\n[1]\n', "x.ndjson", "invalid_file"),
        (b'{"a": 1}\nnot json\n', "x.ndjson", "invalid_file"),
        (b"PAR1 not really parquet", "x.parquet", "invalid_file"),
        (b"PK\x03\x04 not a zip", "x.xlsx", "invalid_file"),
        (b"hello", "x.pdf", "unsupported_file_type"),
        (b"hello", "x.xls", "unsupported_file_type"),
        (b"hello", None, "unsupported_file_type"),
        (b'[{"": 1}]', "x.json", "invalid_column_name"),
        (b'[{"a": 1, "A": 2}]', "x.json", "duplicate_column"),
        (b'[{"a\\nb": 1}]', "x.json", "invalid_column_name"),
    ],
)
def test_bad_input_is_a_precise_400(data, filename, code):
    if data == b'{"a": 1}':
        # A .json file starting with "{" is read as NDJSON: one object is a valid file.
        assert ingest.parse_file(data, filename=filename).to_pylist() == [{"a": 1}]
        return
    assert code_of(ingest.parse_file, data, filename=filename)[0] == code


def test_too_many_columns():
    header = ",".join(f"c{i}" for i in range(ingest.MAX_COLUMNS + 1))
    code, message = code_of(ingest.parse_file, (header + "\n").encode(), filename="x.csv")
    assert code == "too_many_columns" and str(ingest.MAX_COLUMNS) in message


def test_overlong_column_name():
    assert code_of(ingest.rows_to_table, [{"x" * 300: 1}])[0] == "invalid_column_name"


def test_xlsx_values_without_header():
    data = xlsx_bytes([["a", None, None], [1, None, 5]])
    code, message = code_of(ingest.parse_file, data, filename="x.xlsx")
    assert code == "invalid_column_name" and "Column C" in message


@pytest.mark.parametrize(
    "rows,code",
    [
        ({"a": 1}, "invalid_rows"),
        ([1, 2], "invalid_rows"),
        ([{"a": 1}, "x"], "invalid_rows"),
        ([{}], "no_columns"),
    ],
)
def test_bad_rows(rows, code):
    assert code_of(ingest.rows_to_table, rows)[0] == code


def test_empty_rows_make_an_empty_table():
    assert ingest.rows_to_table([]).num_columns == 0


# ---------------------------------------------------------------------------------------
# Conformance (appends)
# ---------------------------------------------------------------------------------------

SCHEMA = [
    {"name": "id", "type": "integer"},
    {"name": "price", "type": "float"},
    {"name": "ok", "type": "boolean"},
    {"name": "day", "type": "date"},
    {"name": "at", "type": "timestamp"},
    {"name": "label", "type": "string"},
]


def test_conforming_rows_accepts_values_that_spell_the_type():
    table = ingest.rows_to_table(
        [
            {"id": "5", "price": 3, "ok": "TRUE", "day": "2024-01-01", "at": "2024-01-01", "label": 12},
            {"id": 6.0, "price": "2.5", "ok": False, "day": None, "at": "2024-01-01T10:00:00Z"},
            {"ID": 7},
        ],  # names match ignoring case
        columns=SCHEMA,
    )
    assert table.schema == ingest.schema_for(SCHEMA)
    assert table.to_pylist() == [
        {"id": 5, "price": 3.0, "ok": True, "day": dt.date(2024, 1, 1), "at": dt.datetime(2024, 1, 1), "label": "12"},
        {"id": 6, "price": 2.5, "ok": False, "day": None, "at": dt.datetime(2024, 1, 1, 10), "label": None},
        {"id": 7, "price": None, "ok": None, "day": None, "at": None, "label": None},
    ]


@pytest.mark.parametrize(
    "column,bad,row",
    [
        ("id", "abc", 3),
        ("id", 1.5, 2),
        ("id", True, 1),
        ("price", "cheap", 2),
        ("ok", 1, 3),
        ("ok", "yes", 1),
        ("day", "2024-13-01", 2),
        ("day", "2024-01-01T10:00:00", 3),
        ("at", "noon", 1),
    ],
)
def test_type_mismatch_names_column_and_row(column, bad, row):
    rows = [{column: None} for _ in range(3)]
    rows[row - 1][column] = bad
    code, message = code_of(ingest.rows_to_table, rows, columns=SCHEMA)
    assert code == "type_mismatch"
    assert f'Column "{column}"' in message and f"row {row} " in message


def test_csv_append_type_mismatch_names_data_row():
    body = b"id,price\n1,2.0\n2,3.0\nthree,4.0\n"
    code, message = code_of(ingest.parse_file, body, filename="x.csv", columns=SCHEMA)
    assert code == "type_mismatch" and 'Column "id"' in message and "row 3 " in message and '"three"' in message


def test_unknown_column_in_append():
    code, message = code_of(ingest.rows_to_table, [{"id": 1, "colour": "red"}], columns=SCHEMA)
    assert code == "unknown_column" and '"colour"' in message


def test_conform_table_vectorized_and_slow_paths_agree():
    table = ingest.parse_file(b"id,price,day\n1,2,2024-01-01\n2,3,2024-01-02\n", filename="x.csv")
    conformed = ingest.conform_table(table, SCHEMA)
    assert conformed.column("price").to_pylist() == [2.0, 3.0]
    assert conformed.column("at").to_pylist() == [None, None]
    floats = pa.table({"id": [1.0, 2.5]})
    code, message = code_of(ingest.conform_table, floats, SCHEMA)
    assert code == "type_mismatch" and "row 2 " in message


# ---------------------------------------------------------------------------------------
# Whatever the bytes, a table or a 400: never an unhandled exception
# ---------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _mutations(seed: bytes):
    return st.builds(
        lambda cut, junk, pos: seed[:pos] + junk + seed[pos + cut :],
        st.integers(0, 64),
        st.binary(max_size=64),
        st.integers(0, max(len(seed) - 1, 0)),
    )


@pytest.mark.parametrize("filename", sorted(FORMATS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_never_crash(filename, data):
    blob = data.draw(st.one_of(st.binary(max_size=300), _mutations(FORMATS[filename])))
    try:
        table = ingest.parse_file(blob, filename=filename)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.code
    else:
        assert all(c["type"] in ingest.COLUMN_TYPES for c in ingest.columns_of(table))
