"""Where uploaded files wait while a request is read: on disk, under TIDEGATE_HOME/tmp (0700).

Starlette keeps each multipart file part in a `SpooledTemporaryFile`: in memory up to 1 MiB,
then in a temporary file of the default temporary directory (often a shared /tmp, or a
small tmpfs). This process's uploads spool into the server's own private directory instead,
so an upload costs disk under the home, never memory by its size.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from starlette import formparsers

_spool_dir: str | None = None


def spool_uploads_under(directory: Path) -> Path:
    global _spool_dir
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    _spool_dir = str(directory)
    # Starlette looks the name up per file part; a factory stands in for the class.
    formparsers.SpooledTemporaryFile = _spooled_file  # type: ignore[misc,assignment]
    return directory


def _spooled_file(max_size: int = 0, *args, **kwargs) -> tempfile.SpooledTemporaryFile:
    if _spool_dir is not None and "dir" not in kwargs and os.path.isdir(_spool_dir):
        kwargs["dir"] = _spool_dir
    return tempfile.SpooledTemporaryFile(max_size, *args, **kwargs)
