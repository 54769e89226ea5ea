"""What one request or one connection may cost: body sizes, ingest sizes, connection timeouts.

Read from the environment with the other settings (`config.load_settings()`, through
`from_environment` here) and kept in their own frozen value, handed to this module once per
process (`configure`), so that the ASGI body limit, the ingest caps and the HTTP protocol
guard of `tidegate serve` all read the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

MiB = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    # Request bodies (413 request_too_large), checked before parsing and authentication.
    max_json_bytes: int = 16 * MiB  # every body that is not a form or an upload
    max_form_bytes: int = 1 * MiB  # web UI forms (urlencoded or multipart) other than uploads
    max_upload_bytes: int = 200 * MiB  # the file of an upload; its request may add MULTIPART_OVERHEAD
    # Ingest (400 too_many_rows / too_many_cells / file_too_large): what a file may expand to.
    max_ingest_rows: int = 10_000_000
    max_ingest_cells: int = 100_000_000
    max_xlsx_cells: int = 1_000_000  # openpyxl reads ~50k cells/s at best: ~20 s of one thread
    max_decompressed_bytes: int = 1024 * MiB  # xlsx entries / Parquet column data, uncompressed
    # Connections (per worker process), enforced by tidegate.api.connections.
    header_timeout_seconds: float = 10.0  # a request's line and headers must arrive within this
    body_timeout_seconds: float = 30.0  # longest silence while a request body is arriving
    keepalive_timeout_seconds: int = 5  # an idle keep-alive connection is closed after this
    max_connections: int = 1000
    max_header_bytes: int = 64 * 1024


# A multipart upload's request is its file plus boundaries and a few small text fields.
MULTIPART_OVERHEAD = 64 * 1024

LIMIT_VARIABLES = {
    "max_json_bytes": "TIDEGATE_MAX_JSON_BYTES",
    "max_form_bytes": "TIDEGATE_MAX_FORM_BYTES",
    "max_upload_bytes": "TIDEGATE_MAX_UPLOAD_BYTES",
    "max_ingest_rows": "TIDEGATE_MAX_INGEST_ROWS",
    "max_ingest_cells": "TIDEGATE_MAX_INGEST_CELLS",
    "max_xlsx_cells": "TIDEGATE_MAX_XLSX_CELLS",
    "max_decompressed_bytes": "TIDEGATE_MAX_DECOMPRESSED_BYTES",
    "header_timeout_seconds": "TIDEGATE_HEADER_TIMEOUT_SECONDS",
    "body_timeout_seconds": "TIDEGATE_BODY_TIMEOUT_SECONDS",
    "keepalive_timeout_seconds": "TIDEGATE_KEEPALIVE_TIMEOUT_SECONDS",
    "max_connections": "TIDEGATE_MAX_CONNECTIONS",
    "max_header_bytes": "TIDEGATE_MAX_HEADER_BYTES",
}


def load_limits(environ: Mapping[str, str]) -> Limits:
    """The defaults, overridden by any TIDEGATE_* variable set; ValueError names a bad one."""
    return from_environment(Limits, LIMIT_VARIABLES, environ)


def from_environment(cls: type[T], variables: Mapping[str, str], environ: Mapping[str, str]) -> T:
    """A frozen dataclass of positive numbers: its defaults, overridden by any of
    `variables` (field name -> env var) that is set. ValueError names a bad one."""
    values: dict[str, int | float] = {}
    for field_name, variable in variables.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        kind = type(getattr(cls, field_name))
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(
                f"{variable} must be a {'number' if kind is float else 'whole number'}, not {raw!r}"
            ) from None
        if value <= 0:
            raise ValueError(f"{variable} must be greater than 0, not {raw!r}")
        values[field_name] = value
    return cls(**values)


_current = Limits()


def configure(limits: Limits) -> None:
    """The limits of this process, from its Settings (create_app and `tidegate serve`)."""
    global _current
    _current = limits


def get_limits() -> Limits:
    return _current


def describe_bytes(size: int) -> str:
    """A limit as people read it: "16 MiB", "512 KiB", "100 bytes"."""
    for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size:,} bytes"
