"""CSV cells a spreadsheet would run as formulas, made inert (CSV injection).

Excel, LibreOffice and Google Sheets treat a cell that starts with `=`, `+`, `-` or `@`
(and, after a leading tab or carriage return, the same) as a formula: `=cmd|' /C calc'!A0`,
`=HYPERLINK(...)`. Every CSV tidegate writes (data exports, the audit export) puts a single
quote before such a TEXT cell, which spreadsheets show as text. Numbers are never touched:
-5 in an integer column stays -5. One rule, two forms: `neutralize` for one Python value,
`neutralize_batch` for Arrow data (vectorized: exports are on a benchmarked path).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_STARTS = pa.array(FORMULA_STARTS, pa.binary())
# Every formula start sorts below "A" (they are bytes 9, 13, 43, 45, 61, 64): one cheap
# comparison finds the only cells worth a closer look (most text starts with a letter).
_BELOW = "A"


def neutralize(value: object) -> object:
    """A text cell a spreadsheet would run as a formula gets a leading quote; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))
    )


def neutralize_array(array: pa.Array) -> pa.Array:
    """`neutralize` applied to every value of a text array (other arrays unchanged)."""
    if not _is_text(array.type):
        return array
    digit_first = pc.and_(pc.greater_equal(array, "0"), pc.less(array, ":"))  # numbers as text: common, safe
    maybe = pc.fill_null(pc.and_not(pc.less(array, _BELOW), digit_first), False)
    if not pc.any(maybe).as_py():  # the common case: no copy at all
        return array
    candidates = pc.filter(array, maybe)
    first_bytes = pc.binary_slice(candidates.cast(pa.binary()), 0, 1)
    risky = pc.fill_null(pc.is_in(first_bytes, value_set=_STARTS), False)
    if not pc.any(risky).as_py():
        return array
    formulas = pc.replace_with_mask(maybe, maybe, risky)  # `risky` at the candidates' positions
    quote, nothing = pa.scalar("'", array.type), pa.scalar("", array.type)
    quoted = pc.binary_join_element_wise(quote, pc.filter(candidates, risky), nothing)
    return pc.replace_with_mask(array, formulas, quoted)


def neutralize_schema(schema: pa.Schema) -> pa.Schema:
    """The header row is text cells too: column names get the same treatment."""
    names = [neutralize(name) for name in schema.names]
    if names == schema.names:
        return schema
    return pa.schema(
        [field.with_name(name) for field, name in zip(schema, names, strict=True)], metadata=schema.metadata
    )


def neutralize_batch(batch: pa.RecordBatch, schema: pa.Schema | None = None) -> pa.RecordBatch:
    """`batch` with every text cell neutralized, under `schema` (default: `neutralize_schema`)."""
    schema = schema or neutralize_schema(batch.schema)
    columns = [neutralize_array(column) for column in batch.columns]
    if schema == batch.schema and all(new is old for new, old in zip(columns, batch.columns, strict=True)):
        return batch
    return pa.RecordBatch.from_arrays(columns, schema=schema)
