"""Refuse queries whose cost no running limit can stop: one function call that builds a huge value.

DuckDB's memory limit counts its buffers, not the strings a scalar function builds, and an
interrupt is only seen between chunks: `lpad('x', 2000000000, 'y')` allocated 2 GB per row
in one call, past both (measured: 100 s, 4.4 GB, with a 1 GB limit and a 10 s timeout).
So the functions whose output size is set by an argument rather than by their input are
bounded before anything runs, on DuckDB's own parse tree of the text that will run:

- `lpad` / `rpad`: the length must be an integer literal of at most MAX_PAD_LENGTH;
- `printf` / `format`: the format must be a string literal, widths and precisions at most
  MAX_FORMAT_WIDTH, and none taken from an argument (`%*d`, `{:{}}`).

Refusals are InvalidRequest `query_too_expensive`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from tidegate.errors import InvalidRequest

if TYPE_CHECKING:
    import duckdb

# A DuckDB chunk is 2,048 rows and an interrupt waits for the chunk: lpad of 10,000
# characters takes ~1 ms a value (2 s a chunk on a loaded 2-core machine), of 1,000 ~0.1 ms.
MAX_PAD_LENGTH = 1_000
MAX_FORMAT_WIDTH = 1_000
_PAD = frozenset({"lpad", "rpad"})
_FORMAT = frozenset({"printf", "format"})
_PRINTF_SPEC = re.compile(r"%[-+ #0']*[0-9*]*(?:\.[0-9*]*)?")
_FMT_FIELD = re.compile(r"\{[^}]*")
_NUMBER = re.compile(r"\d+")


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest("query_too_expensive", message)


def check(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise `query_too_expensive` if `sql` calls a size-amplifying function unboundedly.
    `cursor`: any DuckDB cursor (the text is only parsed, never run)."""
    tree = json.loads(cursor.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchall()[0][0])
    _walk(tree)


def _arguments(node: dict[str, Any]) -> list[dict[str, Any]]:
    items = node.get("arguments") or node.get("children") or []
    return [item.get("expression", item) if isinstance(item, dict) else {} for item in items]


def _literal(node: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, text) of a constant, e.g. ("INTEGER", "12"); None for anything computed."""
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal")
    if isinstance(literal, dict):
        return str(literal.get("kind")), str(literal.get("text"))
    value = node.get("value")  # the older serialization
    if isinstance(value, dict) and isinstance(value.get("type"), dict):
        return str(value["type"].get("id")), str(value.get("value"))
    return None


def _check_pad(name: str, args: list[dict[str, Any]]) -> None:
    if len(args) < 2:
        return  # DuckDB refuses the call itself
    literal = _literal(args[1])
    if literal is None or literal[0] not in ("INTEGER", "BIGINT", "HUGEINT") or not re.fullmatch(r"-?\d+", literal[1]):
        raise _refuse(f"The length of {name}() must be an integer literal (at most {MAX_PAD_LENGTH:,}).")
    if int(literal[1]) > MAX_PAD_LENGTH:
        raise _refuse(f"{name}() can pad to at most {MAX_PAD_LENGTH:,} characters, not {int(literal[1]):,}.")


def _check_format(name: str, args: list[dict[str, Any]]) -> None:
    if not args:
        return
    literal = _literal(args[0])
    if literal is None or literal[0] != "STRING":
        raise _refuse(f"The format of {name}() must be a string literal.")
    if name == "printf":
        specs = _PRINTF_SPEC.findall(literal[1].replace("%%", ""))
        dynamic = any("*" in spec for spec in specs)
    else:
        specs = _FMT_FIELD.findall(literal[1].replace("{{", "").replace("}}", ""))
        dynamic = any("{" in spec[1:] for spec in specs)
    if dynamic:
        raise _refuse(f"{name}() widths and precisions must be written in the format, not taken from an argument.")
    if any(int(n) > MAX_FORMAT_WIDTH for spec in specs for n in _NUMBER.findall(spec)):
        raise _refuse(f"{name}() widths and precisions can be at most {MAX_FORMAT_WIDTH:,}.")


def _walk(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    name = str(node.get("function_name") or "").lower()
    if name in _PAD:
        _check_pad(name, _arguments(node))
    elif name in _FORMAT:
        _check_format(name, _arguments(node))
    for value in node.values():
        if isinstance(value, (dict, list)):
            _walk(value)
