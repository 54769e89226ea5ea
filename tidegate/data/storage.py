"""Source versions as Parquet files, written crash-safely; uploaded files; garbage collection.

Layout under the data directory (Settings.data_dir):

    <data_dir>/<org_id>/<source_id>/<version_id>/part-NNNN.parquet
    <data_dir>/<org_id>/files/<file_id>

A version lists its part files (relative to the source directory). Append = a NEW version
listing the previous version's parts plus one new part; replace = a new version with fresh
parts. Part files are never modified or renamed once written, so a reader holding any
version always finds exactly the rows that version had.

Crash safety: every file is written under a temporary name, fsynced, renamed to its final
name, and its directory fsynced, all BEFORE the database transaction that makes the version
current commits. A kill -9 at any instant therefore leaves either the old current version
(plus unreferenced files that `collect_garbage` deletes later) or the new one, never a mix.

Old versions stay readable until `prune_versions` deletes their rows (after a grace period
for readers in flight), and `collect_garbage` then deletes the files no version lists.

With an object store (TIDEGATE_DATA_URL=s3://bucket/prefix) the same names are objects
under the prefix: a part is written to this node's part cache, uploaded (an S3 PUT is
complete or absent), and only then is the version committed; readers get local paths
through the cache (`readable_parts`), so DuckDB still reads local files. Same guarantee:
a crash leaves unreferenced objects for `collect_garbage`, never a half-switched version.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tidegate.catalog.models import File, Source, SourceVersion
from tidegate.config import ObjectStoreSettings
from tidegate.data import ingest
from tidegate.data.objectstore import ObjectStore
from tidegate.data.partcache import PartCache
from tidegate.db.base import utcnow
from tidegate.errors import Conflict, InvalidRequest, ServiceUnavailable
from tidegate.ids import new_id

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
ROW_GROUP_SIZE = 128 * 1024
PART_RE = re.compile(r"^ver_[0-9a-z]+/part-[0-9]{4,}\.parquet$")
_ID_RE = re.compile(r"^[a-z]+_[0-9a-z]+$")
STORED_RE = re.compile(
    r"^[a-z]+_[0-9a-z]+/(?:src_[0-9a-z]+/ver_[0-9a-z]+/part-[0-9]{4,}\.parquet|files/file_[0-9a-z]+)$"
)

_data_dir: Path | None = None
_store: tuple[ObjectStore, PartCache] | None = None
_store_configured = False


def configure(
    data_dir: str | os.PathLike[str] | None,
    *,
    object_store: ObjectStoreSettings | None = None,
    part_cache_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Set the data directory for this process (None: Settings.data_dir, read lazily), and
    the object store with this node's part cache (when `object_store.url` is set)."""
    global _data_dir, _store, _store_configured
    _data_dir = Path(data_dir).resolve() if data_dir is not None else None
    _store, _store_configured = None, object_store is not None
    if object_store is not None and object_store.enabled:
        if part_cache_dir is None:
            raise ValueError("an object store needs a part cache directory")
        cache = PartCache(Path(part_cache_dir).resolve(), object_store.part_cache_bytes)
        _store = (ObjectStore(object_store), cache)


def object_store(data_dir: str | os.PathLike[str] | None = None) -> tuple[ObjectStore, PartCache] | None:
    """The object store and part cache in use, or None for local disk (always None when a
    caller names a local `data_dir`)."""
    if data_dir is not None:
        return None
    if not _store_configured and _data_dir is None:
        from tidegate.config import get_settings

        settings = get_settings()
        configure(settings.data_dir, object_store=settings.object_store, part_cache_dir=settings.part_cache_dir)
    return _store


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where this process reads part files: the data directory, or the part cache."""
    if data_dir is not None:
        return Path(data_dir).resolve()
    store = object_store()
    if store is not None:
        return store[1].root
    if _data_dir is not None:
        return _data_dir
    from tidegate.config import get_settings

    return get_settings().data_dir


def _safe_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"not an identifier: {value!r}")
    return value


def source_dir(org_id: str, source_id: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    return data_root(data_dir) / _safe_id(org_id) / _safe_id(source_id)


def part_paths(version: SourceVersion, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Absolute paths of a version's part files (validated: no way out of the source dir)."""
    base = source_dir(version.org_id, version.source_id, data_dir)
    paths = []
    for part in version.parts or []:
        if not isinstance(part, str) or not PART_RE.match(part):
            raise ValueError(f"corrupt part name in version {version.id}: {part!r}")
        paths.append(base / part)
    return paths


@contextmanager
def readable_parts(version: SourceVersion) -> Iterator[list[Path]]:
    """Readable local paths of a version's parts, for the block's duration: on local disk
    `part_paths`; with an object store, this node's cached copies (downloaded once; 503 if
    the store is unreachable), pinned so that no eviction removes them meanwhile."""
    store = object_store()
    if store is None:
        yield part_paths(version)
        return
    backend, cache = store
    root = cache.root
    relatives = [str(path.relative_to(root)) for path in part_paths(version, root)]
    try:
        pinned = cache.pin(relatives, backend.download)
    except FileNotFoundError:
        # Not the caller's fault and not transient: said plainly (and logged), never a 500.
        log.error("version %s lists a part the object store does not have", version.id)
        raise ServiceUnavailable(
            "source_data_missing",
            "Part of this source's data is missing from the object store; an administrator must "
            "restore it or replace the source.",
            retry_after=60,
        ) from None
    with pinned:
        yield pinned.paths


# ---------------------------------------------------------------------------------------
# Durable file primitives
# ---------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path, root: Path) -> None:
    """Create `path` (under `root`) and fsync each parent whose entry list changed.

    Directories are 0700: data files are the server's alone.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    missing = []
    current = path
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        _fsync_dir(directory.parent)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{secrets.token_hex(6)}")


def _publish(tmp: Path, final: Path) -> None:
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def write_bytes_durable(final: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory. `final` must not exist yet."""
    tmp = _tmp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    _publish(tmp, final)


def write_parquet_durable(final: Path, table: pa.Table) -> None:
    tmp = _tmp_name(final)
    _write_parquet(tmp, table)
    _publish(tmp, final)


def _write_parquet(path: Path, table: pa.Table) -> None:
    """Write the new file `path` (0600) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        pq.write_table(table, handle, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------


def current_version(session: Session, source: Source) -> SourceVersion | None:
    if source.current_version_id is None:
        return None
    return session.get(SourceVersion, source.current_version_id)


def write_new_version(
    session: Session, source: Source, table: pa.Table, *, append: bool, data_dir: str | os.PathLike[str] | None = None
) -> SourceVersion:
    """Write `table` as a new version of `source` and make it current, WITHOUT committing.

    - append=True: `table` is conformed to the current version's schema (`type_mismatch`,
      `unknown_column` otherwise) and the new version lists the current parts plus one new
      part. With no current version (or one without any column), it behaves as a replace.
    - append=False: the new version holds exactly `table` (its schema becomes the source's).

    The part file is durable on disk when this returns. The switch of
    `source.current_version_id` is a compare-and-set inside the caller's transaction: if a
    concurrent writer switched it first, this raises Conflict(`concurrent_write`) (on
    PostgreSQL the source row is locked first, so concurrent writers wait instead). The
    caller commits; if it rolls back or the process dies, the files written here are
    orphans for `collect_garbage`, and the old version stays current and intact.
    """
    if not isinstance(table, pa.Table):
        raise TypeError("table must be a pyarrow.Table")
    root = data_root(data_dir)
    state = inspect(source)
    if state.transient:
        session.add(source)
    expected: str | None = None
    if state.persistent:
        # The latest committed pointer (not the instance's possibly stale copy); on
        # PostgreSQL FOR UPDATE also makes concurrent writers of this source wait.
        expected = session.execute(
            select(Source.current_version_id).where(Source.id == source.id).with_for_update()
        ).scalar_one()
    previous = session.get(SourceVersion, expected) if expected is not None else None

    if append and previous is not None and (previous.columns or previous.row_count):
        table = ingest.conform_table(table, previous.columns)
        columns = previous.columns
        parts = list(previous.parts)
        row_count = previous.row_count + table.num_rows
    else:
        ingest.validate_column_names(table.column_names)
        try:
            columns = ingest.columns_of(table)
        except ValueError:
            table = ingest.infer_table(table)
            columns = ingest.columns_of(table)
        if columns:
            table = table.cast(ingest.schema_for(columns))
        parts = []
        row_count = table.num_rows

    version_id = new_id("ver")
    if table.num_rows > 0:
        relative = f"{version_id}/part-{len(parts):04d}.parquet"
        store = object_store(data_dir)
        if store is None:
            base = source_dir(source.org_id, source.id, root)
            _makedirs_durable(base / version_id, root)
            write_parquet_durable(base / relative, table)
        else:
            _upload_part(store, f"{_safe_id(source.org_id)}/{_safe_id(source.id)}/{relative}", table)
        parts.append(relative)

    now = utcnow()
    version = SourceVersion(
        id=version_id,
        source_id=source.id,
        org_id=source.org_id,
        created_at=now,
        row_count=row_count,
        columns=columns,
        parts=parts,
    )
    session.add(version)
    if state.persistent:
        session.flush()
        condition = (
            (Source.current_version_id == expected) if expected is not None else Source.current_version_id.is_(None)
        )
        result = session.execute(
            update(Source)
            .where(Source.id == source.id, condition)
            .values(current_version_id=version_id, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        # Session.execute is typed as returning a Result; for an UPDATE it is a CursorResult.
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("concurrent_write", "The source was changed by another write at the same time; retry.")
        # Reflect the switch on the instance without scheduling a second UPDATE.
        set_committed_value(source, "current_version_id", version_id)
        set_committed_value(source, "updated_at", now)
    else:
        source.current_version_id = version_id
        source.updated_at = now
    return version


def _upload_part(store: tuple[ObjectStore, PartCache], relative: str, table: pa.Table) -> None:
    """Write the part under a temp name in this node's cache (never evicted while young),
    upload it (before any commit), then give it its cached name: this node never fetches it."""
    backend, cache = store
    final = cache.adopt(relative)
    tmp = _tmp_name(final)
    try:
        _write_parquet(tmp, table)
        backend.put_file(relative, tmp)
        try:
            os.rename(tmp, final)
        except FileNotFoundError:  # an upload so slow its temp file was swept: fetched on first read
            pass
    finally:
        tmp.unlink(missing_ok=True)


def prune_versions(session: Session, *, keep_seconds: float = 3600.0) -> list[str]:
    """Delete version rows nobody should still be reading (caller commits, then GC), and
    return their ids (for the caller to drop their cached results: see maintenance).

    A non-current version is kept for `keep_seconds` after the version that superseded it
    was created (long CSV/Parquet exports hold a version while they stream). All versions of
    a source deleted more than `keep_seconds` ago go too.
    """
    cutoff = utcnow() - timedelta(seconds=keep_seconds)
    doomed: list[str] = []
    sources = {s.id: s for s in session.scalars(select(Source))}
    by_source: dict[str, list[SourceVersion]] = {}
    for version in session.scalars(select(SourceVersion).order_by(SourceVersion.source_id, SourceVersion.id)):
        by_source.setdefault(version.source_id, []).append(version)
    for source_id, versions in by_source.items():
        source = sources.get(source_id)
        if source is None:
            continue
        if source.deleted_at is not None:
            if source.deleted_at <= cutoff:
                doomed.extend(v.id for v in versions)
            continue
        for older, newer in zip(versions, versions[1:], strict=False):
            if older.id != source.current_version_id and newer.created_at <= cutoff:
                doomed.append(older.id)
    for chunk_start in range(0, len(doomed), 500):
        chunk = doomed[chunk_start : chunk_start + 500]
        session.execute(delete(SourceVersion).where(SourceVersion.id.in_(chunk)))
    return doomed


# ---------------------------------------------------------------------------------------
# Uploaded files
# ---------------------------------------------------------------------------------------


def _clean_file_name(name: str) -> str:
    name = (name or "").replace("\\", "/").split("/")[-1].strip()
    if not name or name in (".", ".."):
        raise InvalidRequest("invalid_file_name", "The file needs a name.")
    if len(name) > 255:
        raise InvalidRequest("invalid_file_name", "The file name is longer than 255 characters.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidRequest("invalid_file_name", "The file name contains a control character.")
    return name


def store_file(
    session: Session,
    *,
    org_id: str,
    created_by: str,
    name: str,
    content: bytes | BinaryIO,
    content_type: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_bytes: int | None = None,
) -> File:
    """Store an uploaded file durably and add its row (caller commits).

    `content` is bytes or a binary file (an upload's spooled file): a file is copied in
    chunks, never held in memory whole, and refused past `max_bytes` (file_too_large).
    Tabular files (csv, tsv, json, ndjson, parquet, xlsx) are parsed, from the stored copy,
    to fill `columns` and `row_count`; a tabular file that does not parse is refused
    (`invalid_file`, ...) and its copy removed. Other files are stored as they are.
    """
    name = _clean_file_name(name)
    root = data_root(data_dir)
    store = object_store(data_dir)
    file_id = new_id("file")
    relative = f"{_safe_id(org_id)}/files/{file_id}"
    final = root / relative
    _makedirs_durable(root / org_id / "files", root)
    tmp = _tmp_name(final)
    try:
        size = _write_stream(
            tmp, io.BytesIO(content) if isinstance(content, (bytes, bytearray)) else content, max_bytes
        )
        if size == 0:
            raise InvalidRequest("invalid_file", "The file is empty.")
        columns = row_count = None
        with open(tmp, "rb") as handle:
            head = handle.read(64)
        try:
            kind = ingest.detect_file_type(name, content_type, head)
        except InvalidRequest:
            kind = None
        if kind is not None:
            table = ingest.parse_file(tmp, filename=name, content_type=content_type, file_type=kind)
            columns, row_count = ingest.columns_of(table), table.num_rows
            del table
        if store is None:
            _publish(tmp, final)
        else:
            store[0].put_file(relative, tmp)
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = File(
        id=file_id,
        org_id=org_id,
        name=name,
        size=size,
        content_type=content_type,
        created_by=created_by,
        created_at=utcnow(),
        storage_path=relative,
        columns=columns,
        row_count=row_count,
    )
    session.add(record)
    return record


COPY_CHUNK = 1024 * 1024


def _write_stream(tmp: Path, source: BinaryIO, max_bytes: int | None) -> int:
    """Copy `source` into the new file `tmp` (0600) chunk by chunk and fsync it; its size."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        while chunk := source.read(COPY_CHUNK):
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise InvalidRequest(
                    "file_too_large", f"Files may be at most {max_bytes // (1024 * 1024)} MB ({max_bytes:,} bytes)."
                )
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def file_path(file: File, data_dir: str | os.PathLike[str] | None = None) -> Path:
    root = data_root(data_dir)
    path = (root / file.storage_path).resolve()
    if root not in path.parents:
        raise ValueError(f"corrupt storage path for {file.id}")
    return path


def read_file_table(
    file: File, *, columns: list[dict[str, Any]] | None = None, data_dir: str | os.PathLike[str] | None = None
) -> pa.Table:
    """Parse a stored file (e.g. to create or append to a source from it)."""
    store = object_store(data_dir)
    try:
        if store is None:
            content = file_path(file, data_dir).read_bytes()
        elif file.storage_path == f"{_safe_id(file.org_id)}/files/{_safe_id(file.id)}":  # what store_file names
            content = store[0].read_bytes(file.storage_path)
        else:
            raise ValueError(f"corrupt storage path for {file.id}")
    except FileNotFoundError:
        raise InvalidRequest("invalid_file", "The file's contents are no longer stored.") from None
    return ingest.parse_file(content, filename=file.name, content_type=file.content_type, columns=columns)


# ---------------------------------------------------------------------------------------
# Garbage collection
# ---------------------------------------------------------------------------------------


@dataclass
class GcReport:
    deleted_files: list[str] = field(default_factory=list)  # relative to data_dir
    deleted_dirs: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def collect_garbage(
    session: Session,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    min_age_seconds: float = 60.0,
    temp_min_age_seconds: float = 60.0,
) -> GcReport:
    """Delete files no version (or File row) references, and leftover temp files.

    Only files whose modification time is at least `min_age_seconds` old are touched: a
    writer publishes a part file a moment before committing the version that lists it, and
    that part must not look like garbage in between. Pass 0 when no writer can be running
    (tests, maintenance). Temp files (a write cut short) go once `temp_min_age_seconds` old.

    With an object store, the same rule applies to the objects under the prefix (their
    LastModified is the age), and this node's part cache drops copies of deleted parts.
    """
    store = object_store(data_dir)
    if store is not None:
        report = _collect_objects(session, store[0], min_age_seconds)
        collect_garbage(
            session, store[1].root, min_age_seconds=min_age_seconds, temp_min_age_seconds=temp_min_age_seconds
        )
        return report
    root = data_root(data_dir)
    report = GcReport()
    if not root.exists():
        return report
    referenced: set[Path] = set()
    for version in session.scalars(select(SourceVersion)):
        try:
            referenced.update(part_paths(version, root))
        except ValueError:
            continue
    for storage_path in session.scalars(select(File.storage_path)):
        referenced.add(root / storage_path)
    live_sources = set(session.scalars(select(SourceVersion.source_id).distinct()))

    def old_enough(path: Path) -> bool:
        age = temp_min_age_seconds if TMP_MARK in path.name else min_age_seconds
        try:
            # time.time() now, not at the start: removing a file touches its directory.
            return path.lstat().st_mtime <= time.time() - age
        except FileNotFoundError:
            return False

    def remove_file(path: Path) -> None:
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        report.deleted_files.append(str(path.relative_to(root)))
        report.freed_bytes += size

    def remove_dir_if_empty(path: Path) -> None:
        try:
            if not any(path.iterdir()) and old_enough(path):
                path.rmdir()
                report.deleted_dirs.append(str(path.relative_to(root)))
        except OSError:
            pass

    for org in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for child in sorted(org.iterdir()):
            if child.is_symlink() or not child.is_dir():
                continue
            if child.name == "files":
                for blob in child.iterdir():
                    if blob.is_file() and blob not in referenced and old_enough(blob):
                        remove_file(blob)
                remove_dir_if_empty(child)
                continue
            if not child.name.startswith("src_"):
                continue
            for version_dir in sorted(child.iterdir()):
                if version_dir.is_symlink() or not version_dir.is_dir():
                    continue
                for part in version_dir.iterdir():
                    if part.is_file() and part not in referenced and old_enough(part):
                        remove_file(part)
                remove_dir_if_empty(version_dir)
            if child.name not in live_sources:
                remove_dir_if_empty(child)
        remove_dir_if_empty(org)
    return report


def _collect_objects(session: Session, store: ObjectStore, min_age_seconds: float) -> GcReport:
    """Delete the objects under the prefix that no version or File row references. Only
    names of our own layout are considered: anything else under the prefix is left alone."""
    referenced = set(session.scalars(select(File.storage_path)))
    for version in session.scalars(select(SourceVersion)):
        base = f"{version.org_id}/{version.source_id}/"
        referenced.update(base + part for part in version.parts or [] if isinstance(part, str))
    report = GcReport()
    for stored in store.list():
        if stored.relative in referenced or not STORED_RE.match(stored.relative):
            continue
        if stored.mtime > time.time() - min_age_seconds:
            continue  # maybe a part whose version is about to be committed
        store.delete(stored.relative)
        report.deleted_files.append(stored.relative)
        report.freed_bytes += stored.size
    return report
