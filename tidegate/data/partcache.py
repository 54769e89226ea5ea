"""This node's local copies of object-store parts, so DuckDB keeps reading local files.

Part names are immutable (a version id is never reused), so a cached copy is never stale:
there is nothing to invalidate, only space to reclaim. Layout mirrors the store
(`<root>/<org>/<source>/<version>/part-NNNN.parquet`). A copy is downloaded under a temp
name, fsynced and renamed, so a reader never sees half a part (a kill -9 mid-download
leaves a temp file that a later eviction removes).

Bounded by bytes, least recently used first: a use touches the file's mtime, and eviction
(after each download, scanning the directory, which the node's processes share) removes the
oldest copies until the total fits. A reader pins the parts it reads (a shared `flock` on
each, held until DuckDB is done with them) and eviction skips pinned parts (it needs an
exclusive lock to remove one), so the bound can only be exceeded by parts being read.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"
TMP_MAX_AGE = 300.0  # a temp file this old is a download that died
Fetch = Callable[[str, BinaryIO], object]


class PinnedParts:
    """Local paths of parts, each held open with a shared lock until `close()`."""

    def __init__(self, paths: list[Path], fds: list[int]):
        self.paths = paths
        self._fds = fds

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # releases its lock

    def __enter__(self) -> PinnedParts:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class PartCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        # Made now, not by the first download: /readyz writes a probe file in it from the start.
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.hits = self.downloads = self.evictions = 0

    def path(self, relative: str) -> Path:
        return self.root / relative

    def pin(self, relatives: list[str], fetch: Fetch) -> PinnedParts:
        """These parts, local and pinned, downloading the missing ones via `fetch(relative, file)`."""
        pinned = PinnedParts([], [])
        fetched = False
        try:
            for relative in relatives:
                final = self.path(relative)
                for _ in range(3):
                    fd = self._open_locked(final)
                    if fd is not None:
                        break
                    self._download(final, relative, fetch)
                    fetched = True
                else:
                    raise OSError(f"part {relative} was evicted as fast as it was fetched")
                pinned._fds.append(fd)
                pinned.paths.append(final)
                os.utime(fd)  # used now: the most recent for the LRU
            if fetched:
                self.evict()
            else:
                self.hits += 1
        except BaseException:
            pinned.close()
            raise
        return pinned

    @staticmethod
    def _open_locked(final: Path) -> int | None:
        """An fd of `final` holding a shared lock, or None if there is no such file (any more)."""
        try:
            fd = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # evicted between our open and our lock
            os.close(fd)
            return None
        return fd

    def _download(self, final: Path, relative: str, fetch: Fetch) -> None:
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

    def evict(self) -> int:
        """Remove least recently used, unpinned copies until the total fits; bytes freed."""
        freed = 0
        with self._lock:
            now = time.time()
            total = 0
            candidates = []
            for path, size, mtime in self._scan():
                if TMP_MARK in path.name and mtime < now - TMP_MAX_AGE:
                    path.unlink(missing_ok=True)
                    continue
                total += size
                if TMP_MARK not in path.name:
                    candidates.append((mtime, size, path))
            candidates.sort()
            for _, size, path in candidates:
                if total <= self.max_bytes:
                    break
                if _remove_unless_pinned(path):
                    total -= size
                    freed += size
                    self.evictions += 1
                    _remove_empty_parents(path.parent, self.root)
        return freed


def _remove_unless_pinned(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # being read
    try:
        path.unlink(missing_ok=True)  # under the lock: a reader that opened it sees st_nlink 0
    finally:
        os.close(fd)
    return True


def _remove_empty_parents(directory: Path, root: Path) -> None:
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
