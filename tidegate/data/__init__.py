"""The data layer: sources stored as versioned Parquet, read only through the engine.

- `models`: Source, SourceVersion, SourceShare, File (SQLAlchemy).
- `ingest`: files and inline rows -> typed Arrow tables (type inference, conformance).
- `storage`: crash-safe version writes, uploaded files, pruning and garbage collection
  (on local disk, or in an S3-compatible store: `objectstore`, read through `partcache`).
- `engine`: the ONLY readers of source rows; each takes the caller's RowFilter.
- `sandbox`: validation and locked-down execution of read-only user SQL over `data`.
- `connectors`: PostgreSQL / SQLite pulls, encrypted credentials.

Call `configure(data_dir=settings.data_dir)` once per process at startup.
"""

from __future__ import annotations

import os
from typing import Any


def configure(*, data_dir: str | os.PathLike[str] | None = None, **engine_options: Any) -> None:
    """Process-wide setup: the data directory and engine/sandbox options
    (cache_bytes, max_entry_fraction, threads, memory_limit, query_timeout,
    query_memory_limit, query_threads)."""
    from tidegate.data import engine

    engine.configure(data_dir=data_dir, **engine_options)
