"""This node's local copies of object-store parts, so DuckDB keeps reading local files.

Part names are immutable (a version id is never reused), so a cached copy is never stale:
there is nothing to invalidate, only space to reclaim. Layout mirrors the store
(`<root>/<org>/<source>/<version>/part-NNNN.parquet`). A copy is downloaded under a temp
name, fsynced and renamed, so a reader never sees half a part (a kill -9 mid-download
leaves a temp file that the next eviction removes).

Bounded by bytes, least recently used first: a hit touches the file's mtime, eviction
(after each download, scanning the directory: processes of a node share it) removes the
oldest copies until the total fits. Parts just handed to a reader are never evicted by
that reader's own call, and parts touched within `grace_seconds` are spared (DuckDB opens
the files of a query after we return their paths), so the bound can be exceeded by what
reads of the last few seconds hold.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"
TMP_MAX_AGE = 300.0  # a temp file this old is a download that died


class PartCache:
    def __init__(self, root: Path, max_bytes: int, *, grace_seconds: float = 5.0):
        self.root = root
        self.max_bytes = max_bytes
        self.grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self.hits = self.downloads = self.evictions = 0

    def path(self, relative: str) -> Path:
        return self.root / relative

    def local(self, relatives: list[str], fetch: Callable[[str, BinaryIO], object]) -> list[Path]:
        """Local paths of these parts, downloading (via `fetch(relative, file)`) the missing."""
        paths = []
        fetched = False
        for relative in relatives:
            final = self.path(relative)
            try:
                os.utime(final)  # a hit: most recently used now
                self.hits += 1
            except FileNotFoundError:
                self._download(final, relative, fetch)
                fetched = True
            paths.append(final)
        if fetched:
            self.evict(keep=paths)
        return paths

    def _download(self, final: Path, relative: str, fetch: Callable[[str, BinaryIO], object]) -> None:
        tmp = final.with_name(f".{final.name}{TMP_MARK}{secrets.token_hex(6)}")
        try:
            with self._create(tmp) as handle:
                fetch(relative, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, final)  # another process may have won: same bytes either way
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.downloads += 1

    def _create(self, tmp: Path) -> BinaryIO:
        for attempt in (0, 1):
            tmp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:  # an eviction removed the empty directory just now
                if attempt:
                    raise
                continue
            return os.fdopen(fd, "wb")
        raise AssertionError("unreachable")

    def adopt(self, relative: str) -> Path:
        """Where a writer puts a part it just wrote (so this node never downloads it)."""
        final = self.path(relative)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return final

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._scan())

    def _scan(self) -> list[tuple[Path, int, float]]:
        found = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = Path(directory, name)
                try:
                    stat = path.lstat()
                except FileNotFoundError:
                    continue
                found.append((path, stat.st_size, stat.st_mtime))
        return found

    def evict(self, keep: Iterable[Path] = ()) -> int:
        """Remove least recently used copies until the total fits; bytes freed."""
        spared = set(keep)
        freed = 0
        with self._lock:
            entries = self._scan()
            now = time.time()
            total = 0
            candidates = []
            for path, size, mtime in entries:
                if TMP_MARK in path.name:
                    if mtime < now - TMP_MAX_AGE:
                        path.unlink(missing_ok=True)
                    else:
                        total += size
                    continue
                total += size
                if path not in spared and mtime < now - self.grace_seconds:
                    candidates.append((mtime, size, path))
            candidates.sort()
            for _, size, path in candidates:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                freed += size
                self.evictions += 1
                _remove_empty_parents(path.parent, self.root)
        return freed


def _remove_empty_parents(directory: Path, root: Path) -> None:
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
